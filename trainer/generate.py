"""Library side of `floatctl sample`: a training checkpoint and the encoders its shards were made with.

A user never matches encoders by hand: the shard manifest records how the
audio features (wav2vec2 folder, seeded random wav2vec2, or log-mel), the
motion latents (``float.pth`` or seeded random weights at ``input_size``) and
the emotion probabilities were made; the encoders are rebuilt from that record
(with preprocess/encode.py's own functions) and their fingerprints checked
against the manifest, so new audio gets exactly the features the model was
trained on and rendering decodes latents with the encoder that made them.
"""
from __future__ import annotations

import io
import json
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch import Tensor

from float.config import FloatConfig
from float.model import FloatMotionModel
from float.motion_autoencoder import MotionAutoEncoder
from float.sampler import generate_motion
from shards.dataset import KNOWN_MEMBERS, ShardError, iter_tar_samples
from shards.format import EMOTIONS, META, REFERENCE, SPLITS
from shards.windows import CorruptSample, decode_clip
from trainer import checkpoints as ckpt

EMOTION_CHOICES = (*EMOTIONS, "auto", "none")
_RANDOM_SOURCE = re.compile(r"^random-seed-(\d+)$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


class SampleError(ValueError):
    """Sampling cannot go on; the message names the file or option and the reason."""


Log = Callable[[str], None]


# ---------------------------------------------------------------- checkpoint
@dataclass
class SamplingModel:
    model: FloatMotionModel
    cfg: FloatConfig
    weights: str  # "ema" or "raw"
    step: int
    checkpoint: Path
    settings: dict  # the training settings recorded in the checkpoint
    manifest_fingerprint: str | None


def strip_wrappers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove DDP / torch.compile prefixes from state-dict keys."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def checkpoint_weights(state: dict, path: Path, use_ema: bool = True, log: Log = print) -> tuple[dict, str]:
    """(state dict of FloatMotionModel, "ema" | "raw") from a training checkpoint."""
    if use_ema:
        if isinstance(state.get("ema"), dict) and state["ema"]:
            return strip_wrappers(state["ema"]), "ema"
        log(f"note: {path} holds no EMA weights; using the raw weights")
    if not isinstance(state.get("model"), dict):
        raise SampleError(f"checkpoint {path}: no model weights (key 'model')")
    return strip_wrappers(state["model"]), "raw"


def load_sampling_model(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu",
                        log: Log = print) -> SamplingModel:
    """The FloatMotionModel of a training checkpoint (EMA weights by default), in eval mode on ``device``."""
    path = Path(path)
    try:
        state = ckpt.load_checkpoint(path)
    except ckpt.CheckpointError as e:
        raise SampleError(str(e)) from None
    try:
        cfg = FloatConfig.from_dict(state["config"])
    except (TypeError, ValueError) as e:
        raise SampleError(f"checkpoint {path}: unusable model config ({e})") from None
    weights, which = checkpoint_weights(state, path, use_ema, log)
    model = FloatMotionModel(cfg)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise SampleError(f"checkpoint {path}: the {which} weights do not fit its own config "
                          f"({str(e).splitlines()[0]})") from None
    model.to(device).eval().requires_grad_(False)
    settings = state.get("settings") if isinstance(state.get("settings"), dict) else {}
    return SamplingModel(model, cfg, which, int(state.get("step", 0)), path, settings,
                         state.get("manifest_fingerprint"))


def run_dir_of(checkpoint: Path) -> Path:
    """runs/NAME for runs/NAME/checkpoints/x.pt; the checkpoint's folder otherwise."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def default_output_dir(checkpoint: Path) -> Path:
    """runs/NAME/samples/<checkpoint stem>/."""
    return run_dir_of(checkpoint) / "samples" / Path(checkpoint).stem


# ---------------------------------------------------------------- shards and manifest
def recorded_data_root(sm: SamplingModel) -> Path | None:
    """The shard folder the checkpoint was trained on (its settings, else the run's config.json)."""
    root = sm.settings.get("data_root")
    if not root:
        config = run_dir_of(sm.checkpoint) / "config.json"
        try:
            root = json.loads(config.read_text()).get("data_root")
        except (OSError, ValueError, AttributeError):
            root = None
    return Path(root) if root else None


def load_manifest(sm: SamplingModel, data_root: str | Path | None, log: Log = print) -> tuple[dict, Path]:
    """(manifest, shard folder): ``data_root`` if given, else the folder recorded in the checkpoint."""
    from shards.dataset import check_compatible
    from shards.manifest import read_manifest

    folder = Path(data_root) if data_root else recorded_data_root(sm)
    if folder is None:
        raise SampleError(f"checkpoint {sm.checkpoint} records no shard folder; pass --data-root "
                          "(the shards it was trained on: their manifest says how to encode audio and images)")
    try:
        manifest = read_manifest(folder)
    except ValueError as e:
        hint = "" if data_root else " (the folder recorded in the checkpoint; pass --data-root if it moved)"
        raise SampleError(f"{e}{hint}") from None
    if sm.manifest_fingerprint and manifest.get("fingerprint") != sm.manifest_fingerprint:
        log(f"warning: {folder / 'manifest.json'} has settings fingerprint {str(manifest.get('fingerprint'))[:12]}, "
            f"the checkpoint was trained on {sm.manifest_fingerprint[:12]}: encoders may differ from training")
    try:
        check_compatible(manifest, sm.cfg)
    except ValueError as e:
        raise SampleError(f"{folder / 'manifest.json'}: {e}") from None
    return manifest, folder


@dataclass
class HeldoutClip:
    key: str
    motion: np.ndarray  # (T, dim_w) float32 ground truth
    audio: np.ndarray  # (T, D) float32 features
    emotion: np.ndarray  # (7,) probabilities when the shard has them, else the one-hot label
    reference: np.ndarray | None  # ref.jpg as (S, S, 3) uint8 RGB
    meta: dict = field(default_factory=dict)


def decode_image(data: bytes | None) -> np.ndarray | None:
    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def pick_split(manifest: dict, split: str = "auto") -> str:
    """"auto": test when it has clips (never seen in training or validation), else val."""
    splits = manifest.get("splits", {})
    if split == "auto":
        for name in ("test", "val"):
            if splits.get(name, {}).get("clips"):
                return name
        raise SampleError("the shards have no val or test clips to sample from; give --audio and --image")
    if split not in SPLITS:
        raise SampleError(f"--split {split!r}: choose one of auto, {', '.join(SPLITS)}")
    if not splits.get(split, {}).get("clips"):
        raise SampleError(f"the shards have no {split!r} clips (splits: "
                          f"{ {k: v.get('clips') for k, v in splits.items()} })")
    return split


def read_heldout_clips(folder: Path, manifest: dict, split: str, count: int, min_frames: int = 2,
                       log: Log = print) -> list[HeldoutClip]:
    """The first ``count`` usable clips of ``split``, in manifest shard order."""
    clips: list[HeldoutClip] = []
    for shard in manifest["splits"][split]["shards"]:
        path = Path(folder) / shard["name"]
        try:
            for key, members in iter_tar_samples(str(path), read=KNOWN_MEMBERS):
                try:
                    clip = decode_clip(key, members, pad=0, emotion="auto")
                except CorruptSample as e:
                    log(f"warning: {path}: skipping sample {key}: {e}")
                    continue
                if clip.num_frames < min_frames:
                    continue
                try:
                    meta = json.loads(members.get(META) or b"{}")
                except ValueError:
                    meta = {}
                clips.append(HeldoutClip(key, clip.motion, clip.audio, clip.emotion,
                                         decode_image(members.get(REFERENCE)), meta if isinstance(meta, dict) else {}))
                if len(clips) >= count:
                    return clips
        except (OSError, tarfile.TarError, ShardError) as e:
            raise SampleError(f"shard {path}: unreadable ({e})") from None
    if not clips:
        raise SampleError(f"{folder}: no usable {split!r} clip in the shards")
    return clips


def source_waveform(meta: dict, n_frames: int, samples_per_frame: int = 640) -> np.ndarray | None:
    """The clip's 16 kHz waveform re-decoded from the source file named in meta.json, if it still exists.

    The shard stage cuts audio to n_frames * 640 samples from the start, so the
    first samples of the decoded source line up with the shard's frames.
    """
    from preprocess.media import ClipError, decode_audio

    # The shard stage writes "source": {"video": ..., "audio": ...} (audio: a paired wav, or None
    # when the video's own track was used); plain strings are accepted too.
    source = meta.get("source")
    candidates = [source.get("audio"), source.get("video")] if isinstance(source, dict) else [source]
    for src in candidates:
        if not isinstance(src, str) or not src:
            continue
        if not (src.startswith("zip:") or Path(src).is_file()):
            continue
        try:
            audio = decode_audio(src)
        except ClipError:
            continue
        if len(audio) < (n_frames - 1) * samples_per_frame:
            continue  # not this clip's audio (or a different cut)
        return audio[: n_frames * samples_per_frame]
    return None


# ---------------------------------------------------------------- encoders from the manifest
def _seed_of(source: str | None, what: str) -> int:
    m = _RANDOM_SOURCE.match(source or "")
    if not m:
        raise SampleError(f"manifest: the {what} encoder is marked random but its source {source!r} "
                          "is not 'random-seed-N'")
    return int(m.group(1))


@dataclass
class MotionDecoder:
    autoencoder: MotionAutoEncoder | None
    source: str
    random: bool
    note: str = ""  # why there is none, or a warning about it


def build_motion_autoencoder(manifest: dict, float_ckpt: str | Path | None = None, dim_w: int | None = None,
                             device: str | torch.device = "cpu") -> MotionDecoder:
    """The motion auto-encoder the shards were encoded with, or none (with the reason in ``note``)."""
    from preprocess.encode import EncoderSetupError, load_motion_encoder

    info = (manifest.get("encoders") or {}).get("motion") or {}
    size = int(manifest.get("input_size") or 0)
    source = info.get("source")
    if float_ckpt is not None:
        path, seed, label = Path(float_ckpt), 0, str(float_ckpt)
    elif info.get("random"):
        path, seed, label = None, _seed_of(source, "motion"), str(source)
    elif source and Path(source).is_file():
        path, seed, label = Path(source), 0, str(source)
    else:
        return MotionDecoder(None, str(source), False,
                             f"the shards' motion auto-encoder weights ({source}) are not available here "
                             "and no --float-ckpt was given")
    if path is not None and not path.is_file():
        raise SampleError(f"--float-ckpt {path}: no such file")
    # Seeded random encoders may be thinned (manifest "width" < 1, CPU presets); float.pth is full width.
    width = float(info.get("width") or 1.0) if path is None else 1.0
    try:
        model, made = load_motion_encoder(size, path, seed, width=width)
    except EncoderSetupError as e:
        raise SampleError(str(e)) from None
    if dim_w is not None and model.style_dim != dim_w:
        return MotionDecoder(None, label, made["random"],
                             f"the motion decoder's latent width {model.style_dim} differs from the model's "
                             f"dim_w {dim_w}")
    note = ""
    if info.get("fingerprint") and made["fingerprint"] != info["fingerprint"]:
        note = (f"warning: these motion auto-encoder weights (fingerprint {made['fingerprint']}) are not the ones "
                f"the shards were encoded with ({info['fingerprint']}): the rendered motion may not match")
    return MotionDecoder(model.to(device), label, made["random"], note)


def build_audio_encoder(manifest: dict, wav2vec2: str | Path | None = None, ser: str | Path | None = None,
                        device: str | torch.device = "cpu", need_audio: bool = True):
    """A preprocess.encode.ClipEncoder holding the shards' audio featuriser (and SER model when available).

    Its ``encode_audio(wave, n_frames)`` and ``emotion_probs(wave)`` are the very
    functions the shard stage ran. Refuses weights whose fingerprint differs from
    the manifest's: features from another encoder mean nothing to the model.
    """
    from preprocess.encode import ClipEncoder, LogMel

    features = manifest["features"]["audio"]
    info = (manifest.get("encoders") or {}).get("audio") or {}
    kind = features.get("kind") or info.get("kind") or "wav2vec2"
    audio = None
    if need_audio:
        if kind == "mel":
            audio = LogMel()
        elif kind == "wav2vec2":
            audio = _wav2vec2_from_manifest(info, wav2vec2)
            if features.get("layers", "all") not in ("all", None):
                raise SampleError(f"manifest: audio features use layers={features.get('layers')!r}; "
                                  "only all-layer wav2vec2 features are produced by the shard stage")
        else:
            raise SampleError(f"manifest: unknown audio feature kind {kind!r} (expected wav2vec2 or mel)")
        if info.get("fingerprint") and audio.fingerprint != info["fingerprint"]:
            raise SampleError(f"the {kind} audio encoder rebuilt here has fingerprint {audio.fingerprint}, the "
                              f"shards were made with {info['fingerprint']} ({info.get('source')}): its features "
                              "would not be the ones the model was trained on"
                              + ("; pass the same --wav2vec2 folder" if kind == "wav2vec2" else ""))
        dim = audio.dim if kind == "mel" else audio.feature_dim(all_layers=True)
        if dim != features.get("dim"):
            raise SampleError(f"the {kind} audio encoder gives {dim} features per frame, the shards have "
                              f"{features.get('dim')}")
        if kind != "mel":
            audio = audio.to(device)
    emotion = build_emotion_encoder(manifest, ser, device)
    return ClipEncoder(motion=None, audio=audio, emotion=emotion, device=torch.device(device), half=False,
                       batch_size=1, audio_kind=kind)


def _wav2vec2_from_manifest(info: dict, folder: str | Path | None):
    from float.audio_encoder import Wav2Vec2Features

    source = info.get("source")
    try:
        if folder is not None:
            return Wav2Vec2Features.from_pretrained(folder)
        if info.get("random"):
            return Wav2Vec2Features.random(seed=_seed_of(source, "audio"), size="base")
        if source and Path(source).is_dir():
            return Wav2Vec2Features.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise SampleError(f"wav2vec2 {folder or source}: {e}") from None
    raise SampleError(f"the shards' wav2vec2 folder ({source}) is not available here; pass --wav2vec2 DIR "
                      "(the same model the shards were made with)")


def build_emotion_encoder(manifest: dict, ser: str | Path | None, device: str | torch.device = "cpu"):
    """The speech-emotion model: --ser, else the folder recorded in the manifest if it exists, else None."""
    from float.emotion_encoder import EmotionEncoder

    info = (manifest.get("encoders") or {}).get("emotion") or {}
    folder = ser or (info.get("source") if info.get("source") and Path(info["source"]).is_dir() else None)
    if folder is None:
        return None
    try:
        return EmotionEncoder.from_pretrained(folder).to(device)
    except (OSError, ValueError) as e:
        raise SampleError(f"speech-emotion model {folder}: {e}") from None


def parse_emotion(name: str | None) -> str | None:
    """Validate --emotion: a label, "auto", "none" or None (each mode's default)."""
    if name is None:
        return None
    choice = name.strip().lower()
    if choice not in EMOTION_CHOICES:
        raise SampleError(f"unknown emotion {name!r}; valid: {', '.join(EMOTIONS)}, auto (speech-emotion model) "
                          "or none")
    return choice


def emotion_vector(choice: str, waveform: np.ndarray | None = None, encoder=None) -> np.ndarray:
    """(7,) float32 for a label (one-hot), "none" (zeros) or "auto" (the SER probabilities)."""
    if choice == "none":
        return np.zeros(len(EMOTIONS), np.float32)
    if choice == "auto":
        if encoder is None or encoder.emotion is None:
            raise SampleError("--emotion auto needs the speech-emotion model: pass --ser DIR (none is recorded in "
                              "the shard manifest)")
        if waveform is None:
            raise SampleError("--emotion auto needs the waveform")
        return encoder.emotion_probs(waveform)
    out = np.zeros(len(EMOTIONS), np.float32)
    out[EMOTIONS.index(choice)] = 1.0
    return out


# ---------------------------------------------------------------- generation
@dataclass
class Generated:
    motion: Tensor  # (T, dim_w) float32 on the CPU
    seconds: float


def generate(model: FloatMotionModel, audio: np.ndarray | Tensor, wr: np.ndarray | Tensor, we: np.ndarray | Tensor,
             nfe: int = 10, solver: str = "euler", a_cfg_scale: float = 2.0, e_cfg_scale: float = 1.0,
             seed: int = 0, drop_audio: bool = False) -> Generated:
    """Motion latents for one clip: audio features (T, A), reference motion (dim_w,), emotion (7,)."""
    param = next(model.parameters())

    def tensor(x) -> Tensor:
        return torch.as_tensor(np.asarray(x, np.float32) if not isinstance(x, Tensor) else x).to(
            device=param.device, dtype=param.dtype)

    a, r, e = tensor(audio), tensor(wr).reshape(1, -1), tensor(we).reshape(1, -1)
    if a.ndim != 2 or a.shape[1] != model.cfg.audio_input_dim:
        raise SampleError(f"audio features must be (frames, {model.cfg.audio_input_dim}), got {tuple(a.shape)}")
    start = time.perf_counter()
    try:
        motion = generate_motion(model, a[None], r, e, nfe=nfe, solver=solver, a_cfg_scale=a_cfg_scale,
                                 e_cfg_scale=e_cfg_scale, seed=seed, drop_audio=drop_audio)
    except ValueError as err:  # bad solver / nfe combination
        raise SampleError(str(err)) from None
    if param.device.type == "cuda":
        torch.cuda.synchronize(param.device)
    return Generated(motion[0].float().cpu(), time.perf_counter() - start)


def motion_errors(pred: Tensor, target: np.ndarray | Tensor) -> dict[str, float]:
    """L1 and MSE of generated vs ground-truth latents over their common frames."""
    t = torch.as_tensor(np.asarray(target, np.float32) if not isinstance(target, Tensor) else target).float()
    n = min(len(pred), len(t))
    diff = pred[:n].float() - t[:n]
    return {"l1": float(diff.abs().mean()), "mse": float(diff.pow(2).mean())}


def save_latents(path: Path, record: dict) -> Path:
    """torch.save a dict of tensors and plain values (loads with weights_only=True), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(record, buf)
    ckpt.atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
    return path


# ---------------------------------------------------------------- export
OFFICIAL_PREFIXES = ("fmt.", "audio_encoder.audio_projection.")


def official_state_dict(model: FloatMotionModel) -> dict[str, Tensor]:
    """The model's weights under the official float.pth names (fmt.*, audio_encoder.audio_projection.*),
    cloned on the model's device (a meta-device model gives the names and shapes only).

    Buffers of our own outside those prefixes (the motion normalisation statistics)
    have no official counterpart and are left out; a parameter outside them is an error.
    """
    params = {name for name, _ in model.named_parameters()}
    out = {}
    for k, v in model.state_dict().items():
        if not k.startswith(OFFICIAL_PREFIXES):
            if k in params:
                raise SampleError(f"parameter {k!r} has no official name (expected {OFFICIAL_PREFIXES})")
            continue
        out[k] = v.detach().contiguous().clone()
    return out


@dataclass
class ExportReport:
    path: Path
    weights: str  # "ema" or "raw"
    step: int
    keys: int  # fmt + audio projection tensors written
    motion_autoencoder_keys: int  # copied from --float-ckpt (0 when none)
    load_report: str  # float.checkpoint.load_parts on a fresh model, read back from the file


def export_official(checkpoint: str | Path, out: str | Path, use_ema: bool = True,
                    float_ckpt: str | Path | None = None, log: Log = print) -> ExportReport:
    """Write an official-format state dict of a training checkpoint and verify it loads.

    ``float_ckpt``: also copy ``motion_autoencoder.*`` from an official float.pth,
    so the official inference code (which warns about every parameter it does
    not find) gets a complete file.
    """
    from float.checkpoint import CheckpointError, load_official_state_dict, load_parts

    sm = load_sampling_model(checkpoint, use_ema=use_ema, log=log)
    if getattr(sm.model, "normalizes_motion", False):
        # The flow was learned on standardised latents; the official sampler integrates raw latents
        # from N(0, I), which no change of the weights can make equivalent.
        log("WARNING: this model was trained on standardised motion latents (motion_mean / motion_std, used "
            "for seeded random encoders); the official code has no such step, so it will not reproduce this "
            "model's motion. The export is exact for models trained on raw latents (official float.pth encoder).")
    state = official_state_dict(sm.model)
    keys = len(state)
    copied = 0
    if float_ckpt is not None:
        try:
            official = load_official_state_dict(float_ckpt)
        except CheckpointError as e:
            raise SampleError(f"--float-ckpt: {e}") from None
        motion = {k: v for k, v in official.items() if k.startswith("motion_autoencoder.")}
        if not motion:
            raise SampleError(f"--float-ckpt {float_ckpt}: no motion_autoencoder.* keys; not an official float.pth")
        state.update(motion)
        copied = len(motion)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_bytes(out, lambda f: torch.save(state, f))
    # Read the file back the way a user of it would, into a fresh model: nothing may be missing.
    fresh = FloatMotionModel(sm.cfg)
    report = load_parts(load_official_state_dict(out),
                        {"fmt.": fresh.fmt, "audio_encoder.audio_projection.": fresh.audio_encoder.audio_projection})
    if not report.ok:
        raise SampleError(f"{out}: the exported file does not load back into a fresh model:\n{report}")
    return ExportReport(out, sm.weights, sm.step, keys, copied, str(report))
