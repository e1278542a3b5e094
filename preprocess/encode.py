"""Per-clip feature encoding, run in the main process on one device.

- Motion: the frozen motion auto-encoder turns each cropped frame (uint8 RGB,
  converted to [-1, 1] like the official ``Normalize(0.5, 0.5)``) into its 512-d
  motion latent and 20 coefficients. Frames go through in chunks of
  ``batch_size`` taken *within one clip*, so a clip's latents never depend on
  which other clips were processed with it (byte-identical reruns). On CUDA the
  encoder runs in half precision; latents are stored as float32.
- Audio: ``wav2vec2`` = every transformer layer of frozen wav2vec2 at 25 fps
  (official semantics, see float/audio_encoder.py), or ``mel`` = log-mel
  spectrogram at 25 fps (below). Stored as float16.
- Emotion: one-hot of the label from the file name (zeros when unknown), plus the
  speech-emotion model's 7 probabilities when its folder is given.

Weights: the motion encoder from ``float.pth`` (keys ``motion_autoencoder.*``),
wav2vec2 / SER from Hugging Face folders; without them, seeded random weights
that are labelled ``random: true`` in the manifest and announced on the console.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from float.device import resolve_device
from preprocess.errors import EncoderSetupError
from shards.sample import REFERENCE_QUALITY

from float.config import EMOTIONS, SAMPLES_PER_FRAME, SAMPLING_RATE

# Log-mel at the video frame rate: one 80 ms Hann window (n_fft 1280) centred on
# the middle of each 40 ms video frame (hop 640 samples at 16 kHz = 25 fps),
# 80 Slaney mel bands 0-8 kHz on the power spectrum, natural log with a 1e-6 floor.
MEL_N_MELS = 80
MEL_N_FFT = 1280
MEL_HOP = SAMPLES_PER_FRAME
MEL_SAMPLE_RATE = SAMPLING_RATE
MEL_LOG_FLOOR = 1e-6


# --audio-features choices: mel-speech is the mel kind's "speech" variant (LogMel, speech=True).
AUDIO_KINDS = ("wav2vec2", "mel", "mel-speech")
SPEECH_VARIANT = "clip-norm+delta"
DELTA_REACH = 2  # frames each side of the regression delta (HTK/librosa's default width 5)
NORM_STD_FLOOR = 0.1  # a band that never changes within a clip stays near 0 instead of blowing up


class LogMel:
    """Log-mel features with exactly one row per video frame (see the constants above).

    ``speech=True`` (``--audio-features mel-speech``, manifest variant "clip-norm+delta"): each band is
    standardised over the clip (mean 0, std 1: the microphone, room and loudness of one recording are
    taken out, what changes with the speech stays) and its regression delta over +-2 frames is
    appended (onsets and closures of the mouth are changes of the spectrum), 160 features a frame.
    Measured on real held-out people (README, real data) against plain log-mel.
    """

    kind = "mel"

    def __init__(self, speech: bool = False):
        import torchaudio

        self.speech = speech
        self.variant = SPEECH_VARIANT if speech else None
        self.dim = MEL_N_MELS * (2 if speech else 1)

        self._window = torch.hann_window(MEL_N_FFT)
        self._fbank = torchaudio.functional.melscale_fbanks(
            MEL_N_FFT // 2 + 1, f_min=0.0, f_max=MEL_SAMPLE_RATE / 2, n_mels=MEL_N_MELS,
            sample_rate=MEL_SAMPLE_RATE, norm="slaney", mel_scale="slaney")  # (freqs, mels)
        desc = (f"logmel-v1 sr={MEL_SAMPLE_RATE} n_fft={MEL_N_FFT} hop={MEL_HOP} n_mels={MEL_N_MELS} "
                f"slaney fmax={MEL_SAMPLE_RATE // 2} hann centred-on-frame log(x+{MEL_LOG_FLOOR})")
        if speech:
            desc += f" clip-standardised(std floor {NORM_STD_FLOOR}) + delta(+-{DELTA_REACH})"
        self.fingerprint = hashlib.sha256(desc.encode()).hexdigest()[:16]
        self.description = desc

    def __call__(self, audio: np.ndarray, n_frames: int) -> np.ndarray:
        x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        need = n_frames * MEL_HOP
        x = F.pad(x, (0, max(0, need - x.numel())))[:need]
        # Pad (n_fft - hop) / 2 on each side so that, with no centring, frame t's
        # window spans [t*hop - 320, t*hop + 960): centred on the video frame.
        pad = (MEL_N_FFT - MEL_HOP) // 2
        x = F.pad(x[None, None], (pad, pad), mode="reflect")[0, 0]
        spec = torch.stft(x, MEL_N_FFT, MEL_HOP, window=self._window, center=False,
                          return_complex=True).abs().pow(2)  # (freqs, T)
        mel = self._fbank.T @ spec
        out = torch.log(mel + MEL_LOG_FLOOR).T.contiguous()
        if out.shape[0] != n_frames:
            raise AssertionError(f"log-mel produced {out.shape[0]} frames for {n_frames}")
        return speech_features(out).numpy() if self.speech else out.numpy()


def speech_features(logmel: torch.Tensor) -> torch.Tensor:
    """(T, B) log-mel -> (T, 2B): the bands standardised over the clip, then their regression deltas."""
    z = (logmel - logmel.mean(dim=0)) / logmel.std(dim=0, unbiased=False).clamp_min(NORM_STD_FLOOR)
    padded = F.pad(z.T[None], (DELTA_REACH, DELTA_REACH), mode="replicate")[0].T  # edges repeated
    n = z.shape[0]
    delta = sum(k * (padded[DELTA_REACH + k:DELTA_REACH + k + n] - padded[DELTA_REACH - k:DELTA_REACH - k + n])
                for k in range(1, DELTA_REACH + 1)) / (2 * sum(k * k for k in range(1, DELTA_REACH + 1)))
    return torch.cat([z, delta], dim=1)


@dataclass
class EncodedClip:
    motion: np.ndarray  # (T, dim_w) float32
    lambdas: np.ndarray  # (T, dim_m) float32
    audio: np.ndarray  # (T, D) float16
    emotion_probs: np.ndarray | None  # (7,) float32


@dataclass
class ClipEncoder:
    """The frozen encoders on one device, plus what the manifest says about them."""

    motion: torch.nn.Module
    audio: Callable  # Wav2Vec2Features or LogMel
    emotion: torch.nn.Module | None
    device: torch.device
    half: bool
    batch_size: int
    encoders_info: dict = field(default_factory=dict)  # manifest "encoders"
    audio_kind: str = "mel"

    @property
    def motion_precision(self) -> str:
        return "float16" if self.half else "float32"

    @property
    def audio_dim(self) -> int:
        return self.audio.dim if isinstance(self.audio, LogMel) else self.audio.feature_dim(all_layers=True)

    def features_info(self) -> dict:
        """The manifest's ``features`` entry."""
        audio = {"dim": self.audio_dim, "dtype": "float16", "kind": self.audio_kind}
        if self.audio_kind == "wav2vec2":
            audio["layers"] = "all"
        else:
            audio.update(layers=None, n_mels=MEL_N_MELS, n_fft=MEL_N_FFT, hop=MEL_HOP, log_floor=MEL_LOG_FLOOR)
            if self.audio.variant:
                audio["variant"] = self.audio.variant
        return {
            "motion": {"dim": int(self.motion.style_dim), "dtype": "float32"},
            "lambdas": {"dim": int(self.motion.motion_dim), "dtype": "float32"},
            "audio": audio,
            "emotion": {"dim": len(EMOTIONS), "dtype": "float32", "probs": self.emotion is not None},
            "reference": {"format": "jpeg", "size": int(self.motion.size), "quality": REFERENCE_QUALITY},  # the crop size
        }

    def fingerprints(self) -> dict:
        return {k: (v or {}).get("fingerprint") for k, v in self.encoders_info.items()}

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T,S,S,3) uint8 RGB -> motion (T,dim_w) float32, lambdas (T,dim_m) float32."""
        size = self.motion.size
        if frames.ndim != 4 or frames.shape[1:] != (size, size, 3) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (T,{size},{size},3) uint8 for the {size}px motion encoder, "
                             f"got {frames.shape} {frames.dtype}")
        dtype = torch.float16 if self.half else torch.float32
        motions, lambdas = [], []
        for start in range(0, len(frames), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(frames[start:start + self.batch_size]))
            x = chunk.to(self.device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).to(dtype)
            m, lam = self.motion.encode_motion(x)
            motions.append(m.float().cpu())
            lambdas.append(lam.float().cpu())
        return torch.cat(motions).numpy(), torch.cat(lambdas).numpy()

    @torch.no_grad()
    def encode_audio(self, audio: np.ndarray, n_frames: int) -> np.ndarray:
        """(N,) 16 kHz mono float32 -> (n_frames, D) float16."""
        if isinstance(self.audio, LogMel):
            feats = self.audio(audio, n_frames)
        else:
            wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].to(self.device)
            feats = self.audio(self.audio.normalize(wave), seq_len=n_frames, all_layers=True)[0].float().cpu().numpy()
        return feats.astype(np.float16)

    @torch.no_grad()
    def emotion_probs(self, audio: np.ndarray) -> np.ndarray | None:
        if self.emotion is None:
            return None
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].to(self.device)
        return self.emotion(wave)[0].float().cpu().numpy().astype(np.float32)

    def encode(self, frames: np.ndarray, audio: np.ndarray) -> EncodedClip:
        motion, lambdas = self.encode_frames(frames)
        return EncodedClip(motion, lambdas, self.encode_audio(audio, len(frames)), self.emotion_probs(audio))


def check_weight_paths(float_ckpt: Path | None, wav2vec2: Path | None, ser: Path | None) -> None:
    """Fail fast, before any decoding, when a given weights path does not exist."""
    for option, path, want_dir in (("--float-ckpt", float_ckpt, False), ("--wav2vec2", wav2vec2, True),
                                   ("--ser", ser, True)):
        if path is None:
            continue
        p = Path(path)
        if not p.exists():
            raise EncoderSetupError(f"{option} {p}: no such {'folder' if want_dir else 'file'}")
        if want_dir and not p.is_dir():
            raise EncoderSetupError(f"{option} {p}: expected a Hugging Face model folder, found a file")
        if not want_dir and not p.is_file():
            raise EncoderSetupError(f"{option} {p}: expected the float.pth file, found a folder")


def resolve_audio_kind(audio_features: str, wav2vec2: Path | None) -> str:
    """"auto" -> wav2vec2 when a folder is given, else mel (random wav2vec2-base features carry no
    speech information and take ~4 s per 3 s clip on 2 CPU cores)."""
    if audio_features == "auto":
        return "wav2vec2" if wav2vec2 is not None else "mel"
    if audio_features not in AUDIO_KINDS:
        raise EncoderSetupError(f"--audio-features must be auto, wav2vec2, mel or mel-speech, got {audio_features!r}")
    if audio_features.startswith("mel") and wav2vec2 is not None:
        raise EncoderSetupError("--audio-features mel and --wav2vec2 together: the wav2vec2 folder would be unused")
    return audio_features


FLOAT_CKPT_TAKES = "--float-ckpt takes the official float.pth (a stage-1 checkpoint goes to --motion-ckpt)"


def load_motion_encoder(size: int, float_ckpt: Path | None, seed: int, width: float = 1.0,
                        motion_ckpt: Path | None = None) -> tuple[torch.nn.Module, dict]:
    """The frozen motion encoder: official weights (full width), a stage-1 checkpoint of
    ``floatctl train-motion`` (its own width), or seeded random ones at ``width``."""
    from float.motion_autoencoder import MotionAutoEncoder
    from float.hf_checkpoint import state_fingerprint

    if motion_ckpt is not None:
        return _stage1_encoder(size, motion_ckpt, float_ckpt)
    if float_ckpt is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MotionAutoEncoder(size, width=width)
        source, random = f"random-seed-{seed}", True
    else:
        from float.checkpoint import CheckpointError, load_official_state_dict, official_motion_autoencoder

        try:
            state = load_official_state_dict(float_ckpt, "--float-ckpt ", FLOAT_CKPT_TAKES)
        except CheckpointError as e:
            raise EncoderSetupError(str(e)) from None
        width = 1.0  # the official checkpoint is full width
        try:
            model = official_motion_autoencoder(state, size, f"--float-ckpt {float_ckpt}")
        except CheckpointError as e:
            hint = " (the official checkpoint is 512px: use --preset paper or --input-size 512)" \
                if "do not fit" in str(e) else ""
            raise EncoderSetupError(f"{e}{hint}") from e
        source, random = str(float_ckpt), False
    model.eval().requires_grad_(False)
    info = {"fingerprint": state_fingerprint(model), "source": source, "random": random, "size": size,
            "width": width}
    return model, info


def _stage1_encoder(size: int, motion_ckpt: Path, float_ckpt: Path | None) -> tuple[torch.nn.Module, dict]:
    from float.checkpoint import CheckpointError
    from float.motion_checkpoint import load_motion_checkpoint

    if float_ckpt is not None:
        raise EncoderSetupError("--motion-ckpt and --float-ckpt both give the motion encoder: pass one")
    try:
        model, info, _ = load_motion_checkpoint(motion_ckpt)
    except CheckpointError as e:
        raise EncoderSetupError(f"--motion-ckpt {e}") from None
    if model.size != size:
        raise EncoderSetupError(f"--motion-ckpt {motion_ckpt}: a {model.size}px motion auto-encoder, but the "
                                f"crops are {size}px (use the preset / --input-size it was trained at)")
    return model, info


def build_encoder(input_size: int, audio_features: str = "auto", wav2vec2: Path | None = None,
                  ser: Path | None = None, float_ckpt: Path | None = None, device: str = "auto",
                  seed: int = 0, batch_size: int = 64,
                  log: Callable[[str], None] = print, ae_width: float = 1.0,
                  motion_ckpt: Path | None = None) -> ClipEncoder:
    """Load (or seed) every encoder once; announce random weights loudly through ``log``."""
    if batch_size < 1:
        raise EncoderSetupError(f"--batch-size must be at least 1, got {batch_size}")
    check_weight_paths(float_ckpt, wav2vec2, ser)
    kind = resolve_audio_kind(audio_features, wav2vec2)
    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise EncoderSetupError(str(e)) from None
    half = dev.type == "cuda"

    motion, motion_info = load_motion_encoder(input_size, float_ckpt, seed, ae_width, motion_ckpt)
    motion_info["precision"] = "float16" if half else "float32"
    motion = motion.to(dev)
    if half:
        motion = motion.half()
    if motion_info["random"]:
        log(f"WARNING: motion encoder has RANDOM weights (seed {seed}); no --float-ckpt / --motion-ckpt given. "
            "The latents exercise the pipeline but mean nothing; the manifest records random: true.")

    if kind.startswith("mel"):
        audio = LogMel(speech=kind == "mel-speech")
        kind = "mel"
        audio_info = {"fingerprint": audio.fingerprint, "source": audio.description, "random": False, "kind": "mel"}
    else:
        from float.audio_encoder import Wav2Vec2Features

        if wav2vec2 is not None:
            try:
                audio = Wav2Vec2Features.from_pretrained(wav2vec2)
            except Exception as e:  # the loader's errors name the folder and the reason
                raise EncoderSetupError(f"--wav2vec2 {wav2vec2}: {e}") from e
            audio_info = {"source": str(wav2vec2), "random": False}
        else:
            audio = Wav2Vec2Features.random(seed=seed, size="base")
            audio_info = {"source": f"random-seed-{seed}", "random": True}
            log(f"WARNING: wav2vec2 has RANDOM base-size weights (seed {seed}); no --wav2vec2 folder given. "
                "Features carry no speech content; the manifest records random: true.")
        audio = audio.to(dev)
        audio_info.update(fingerprint=audio.fingerprint, kind="wav2vec2", layers="all")

    emotion, emotion_info = None, None
    if ser is not None:
        from float.emotion_encoder import EmotionEncoder

        try:
            emotion = EmotionEncoder.from_pretrained(ser).to(dev)
        except Exception as e:
            raise EncoderSetupError(f"--ser {ser}: {e}") from e
        emotion_info = {"fingerprint": emotion.fingerprint, "source": str(ser), "random": False}

    return ClipEncoder(motion=motion, audio=audio, emotion=emotion, device=dev, half=half,
                       batch_size=batch_size, audio_kind=kind,
                       encoders_info={"motion": motion_info, "audio": audio_info, "emotion": emotion_info})
