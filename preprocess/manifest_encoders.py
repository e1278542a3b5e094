"""The encoders a shard folder was made with, rebuilt from its manifest (for sampling and rendering).

A user never matches encoders by hand: the shard manifest records how the
audio features (wav2vec2 folder, seeded random wav2vec2, or log-mel), the
motion latents (``float.pth`` or seeded random weights at ``input_size``) and
the emotion probabilities were made; the encoders are rebuilt from that record
with this package's own functions (preprocess/encode.py) and their fingerprints
checked against the manifest, so new audio gets exactly the features the model
was trained on and rendering decodes latents with the encoder that made them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from float.audio_encoder import Wav2Vec2Features
from float.emotion_encoder import EmotionEncoder
from float.motion_autoencoder import MotionAutoEncoder
from preprocess.encode import SPEECH_VARIANT, ClipEncoder, EncoderSetupError, LogMel, load_motion_encoder

_RANDOM_SOURCE = re.compile(r"^random-seed-(\d+)$")


def _seed_of(source: str | None, what: str) -> int:
    m = _RANDOM_SOURCE.match(source or "")
    if not m:
        raise EncoderSetupError(f"manifest: the {what} encoder is marked random but its source {source!r} "
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
    info = (manifest.get("encoders") or {}).get("motion") or {}
    size = int(manifest.get("input_size") or 0)
    source = info.get("source")
    if float_ckpt is None and info.get("kind") == "motion_autoencoder":  # float/motion_checkpoint.py
        return _stage1_decoder(info, size, dim_w, device)
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
        raise EncoderSetupError(f"--float-ckpt {path}: no such file")
    # Seeded random encoders may be thinned (manifest "width" < 1, CPU presets); float.pth is full width.
    width = float(info.get("width") or 1.0) if path is None else 1.0
    model, made = load_motion_encoder(size, path, seed, width=width)
    if dim_w is not None and model.style_dim != dim_w:
        return MotionDecoder(None, label, made["random"],
                             f"the motion decoder's latent width {model.style_dim} differs from the model's "
                             f"dim_w {dim_w}")
    note = ""
    if info.get("fingerprint") and made["fingerprint"] != info["fingerprint"]:
        note = (f"warning: these motion auto-encoder weights (fingerprint {made['fingerprint']}) are not the ones "
                f"the shards were encoded with ({info['fingerprint']}): the rendered motion may not match")
    return MotionDecoder(model.to(device), label, made["random"], note)


def _stage1_decoder(info: dict, size: int, dim_w: int | None, device) -> MotionDecoder:
    """The stage-1 checkpoint the manifest names, refused unless it is the very encoder of the shards."""
    source = str(info.get("source"))
    if not Path(source).is_file():
        return MotionDecoder(None, source, False, f"the shards' stage-1 motion auto-encoder checkpoint "
                                                  f"({source}) is not available here")
    model, made = load_motion_encoder(size, None, 0, motion_ckpt=Path(source))
    if made["fingerprint"] != info.get("fingerprint"):
        raise EncoderSetupError(
            f"{source}: its motion auto-encoder (fingerprint {made['fingerprint']}) is not the one the shards "
            f"were encoded with ({info.get('fingerprint')}): the checkpoint changed since (trained on?). "
            f"Re-encode the shards (floatctl shards --from-crops ... --motion-ckpt {source}) or restore it")
    if dim_w is not None and model.style_dim != dim_w:
        return MotionDecoder(None, source, False, f"the motion decoder's latent width {model.style_dim} differs "
                                                  f"from the model's dim_w {dim_w}")
    return MotionDecoder(model.to(device), source, False)


def build_audio_encoder(manifest: dict, wav2vec2: str | Path | None = None, ser: str | Path | None = None,
                        device: str | torch.device = "cpu", need_audio: bool = True):
    """A ClipEncoder holding the shards' audio featuriser (and SER model when available).

    Its ``encode_audio(wave, n_frames)`` and ``emotion_probs(wave)`` are the very
    functions the shard stage ran. Refuses weights whose fingerprint differs from
    the manifest's: features from another encoder mean nothing to the model.
    """
    features = manifest["features"]["audio"]
    info = (manifest.get("encoders") or {}).get("audio") or {}
    kind = features.get("kind") or info.get("kind") or "wav2vec2"
    audio = None
    if need_audio:
        if kind == "mel":
            if features.get("variant") not in (None, SPEECH_VARIANT):
                raise EncoderSetupError(f"manifest: unknown log-mel variant {features.get('variant')!r} (this version "
                                        f"knows plain log-mel and {SPEECH_VARIANT!r})")
            audio = LogMel(speech=features.get("variant") == SPEECH_VARIANT)
        elif kind == "wav2vec2":
            audio = _wav2vec2_from_manifest(info, wav2vec2)
            if features.get("layers", "all") not in ("all", None):
                raise EncoderSetupError(f"manifest: audio features use layers={features.get('layers')!r}; "
                                  "only all-layer wav2vec2 features are produced by the shard stage")
        else:
            raise EncoderSetupError(f"manifest: unknown audio feature kind {kind!r} (expected wav2vec2 or mel)")
        if info.get("fingerprint") and audio.fingerprint != info["fingerprint"]:
            raise EncoderSetupError(f"the {kind} audio encoder rebuilt here has fingerprint {audio.fingerprint}, the "
                              f"shards were made with {info['fingerprint']} ({info.get('source')}): its features "
                              "would not be the ones the model was trained on"
                              + ("; pass the same --wav2vec2 folder" if kind == "wav2vec2" else ""))
        dim = audio.dim if kind == "mel" else audio.feature_dim(all_layers=True)
        if dim != features.get("dim"):
            raise EncoderSetupError(f"the {kind} audio encoder gives {dim} features per frame, the shards have "
                              f"{features.get('dim')}")
        if kind != "mel":
            audio = audio.to(device)
    emotion = build_emotion_encoder(manifest, ser, device)
    return ClipEncoder(motion=None, audio=audio, emotion=emotion, device=torch.device(device), half=False,
                       batch_size=1, audio_kind=kind)


def _wav2vec2_from_manifest(info: dict, folder: str | Path | None):
    source = info.get("source")
    try:
        if folder is not None:
            return Wav2Vec2Features.from_pretrained(folder)
        if info.get("random"):
            return Wav2Vec2Features.random(seed=_seed_of(source, "audio"), size="base")
        if source and Path(source).is_dir():
            return Wav2Vec2Features.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise EncoderSetupError(f"wav2vec2 {folder or source}: {e}") from None
    raise EncoderSetupError(f"the shards' wav2vec2 folder ({source}) is not available here; pass --wav2vec2 DIR "
                      "(the same model the shards were made with)")


def build_emotion_encoder(manifest: dict, ser: str | Path | None, device: str | torch.device = "cpu"):
    """The speech-emotion model: --ser, else the folder recorded in the manifest if it exists, else None."""
    info = (manifest.get("encoders") or {}).get("emotion") or {}
    folder = ser or (info.get("source") if info.get("source") and Path(info["source"]).is_dir() else None)
    if folder is None:
        return None
    try:
        return EmotionEncoder.from_pretrained(folder).to(device)
    except (OSError, ValueError) as e:
        raise EncoderSetupError(f"speech-emotion model {folder}: {e}") from None
