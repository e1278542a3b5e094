"""The official ``float.pth``: safe loading, a per-part key report, its motion auto-encoder, and the
official names of our model's weights (export).

Only ``torch.load(..., weights_only=True)`` is used: a pickle that would run
code is refused by the unpickler and never executed. The official loader skips
the wav2vec2 weights (they come from the Hugging Face folders); so do we.
CheckpointError is the float package's one error class for unusable weight files.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

# Parts of the official model, by key prefix. wav2vec2 weights are skipped.
MOTION_AUTOENCODER = "motion_autoencoder."
PARTS = ("fmt.", "audio_encoder.audio_projection.", MOTION_AUTOENCODER)
# The parts our FloatMotionModel trains, under the same names as in float.pth.
OFFICIAL_PREFIXES = PARTS[:2]
SKIPPED_MARKER = "wav2vec2"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the file and the reason in the message."""


def safe_torch_load(path: str | Path, label: str = "", mmap: bool = False):
    """torch.load restricted to tensors and plain containers; CheckpointError (``label`` + path + why) otherwise.

    The one torch.load of the project for files a user hands in: official float.pth,
    training checkpoints (label "checkpoint "), Hugging Face pytorch_model.bin. ``mmap`` maps the
    tensors instead of reading them (zip-format files only): cheap for a look at the keys of a large file.
    """
    path = Path(path)
    where = f"{label}{path}"
    if not path.is_file():
        raise CheckpointError(f"{where}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise CheckpointError(
                f"{where}: refused: it holds pickled objects other than tensors and plain containers "
                f"(weights_only loading; a pickle could run code on load, nothing in it was executed). "
                f"Detail: {detail}") from None
        raise CheckpointError(f"{where}: unreadable pickle (truncated or corrupt): {detail}") from None
    # KeyError / IndexError / TypeError: what the weights-only unpickler raises on bytes that are not a
    # pickle at all (a text file named .pt).
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{where}: unreadable checkpoint, the file is truncated or corrupt, or not a torch "
                              f"file ({type(e).__name__}: {detail})") from None


def load_official_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The flat tensor state dict of an official-format checkpoint."""
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: not a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: not a tensor state dict; non-tensor entries: {bad[:5]}")
    return obj


@dataclass
class PartReport:
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[str] = field(default_factory=list)  # same name, other shape


@dataclass
class LoadReport:
    parts: dict[str, PartReport] = field(default_factory=dict)
    skipped: int = 0  # wav2vec2 keys, loaded from the Hugging Face folders instead
    other: list[str] = field(default_factory=list)  # keys outside every known part

    @property
    def ok(self) -> bool:
        return all(not (r.missing or r.mismatched) for r in self.parts.values())

    def __str__(self) -> str:
        lines = []
        for prefix, r in self.parts.items():
            lines.append(f"{prefix.rstrip('.')}: {r.loaded} loaded, {len(r.missing)} missing, "
                         f"{len(r.unexpected)} unexpected, {len(r.mismatched)} shape mismatches")
            for label, keys in (("missing", r.missing), ("unexpected", r.unexpected), ("mismatched", r.mismatched)):
                for k in keys[:10]:
                    lines.append(f"  {label}: {k}")
                if len(keys) > 10:
                    lines.append(f"  ... {len(keys) - 10} more {label}")
        if self.skipped:
            lines.append(f"skipped {self.skipped} wav2vec2 keys (loaded from the Hugging Face folders)")
        if self.other:
            lines.append(f"ignored {len(self.other)} keys outside the known parts, e.g. {self.other[:3]}")
        return "\n".join(lines)


@torch.no_grad()
def load_parts(state_dict: dict[str, Tensor], parts: dict[str, nn.Module]) -> LoadReport:
    """Copy ``state_dict`` into modules keyed by official prefix, e.g. {"fmt.": model.fmt}.

    Never raises on missing keys: the report says what happened per part and
    the caller decides (``report.ok``).
    """
    report = LoadReport()
    claimed = set()
    for prefix, module in parts.items():
        r = report.parts.setdefault(prefix, PartReport())
        own = dict(module.state_dict())
        for name, target in own.items():
            key = prefix + name
            if key not in state_dict:
                r.missing.append(key)
            elif state_dict[key].shape != target.shape:
                r.mismatched.append(f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(target.shape)}")
            else:
                target.copy_(state_dict[key])
                r.loaded += 1
            claimed.add(key)
        r.unexpected = sorted(k for k in state_dict if k.startswith(prefix) and k not in claimed and SKIPPED_MARKER not in k)
        claimed.update(r.unexpected)
    for k in state_dict:
        if SKIPPED_MARKER in k:
            report.skipped += 1
        elif k not in claimed:
            report.other.append(k)
    return report


# ---------------------------------------------------------------- the motion auto-encoder part
def motion_autoencoder_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``motion_autoencoder.*`` tensors of an official state dict, prefix removed ({} when none)."""
    return {k[len(MOTION_AUTOENCODER):]: v for k, v in state.items() if k.startswith(MOTION_AUTOENCODER)}


def official_motion_autoencoder(state: dict[str, Tensor], size: int, source: str | Path = "float.pth"):
    """A frozen full-width MotionAutoEncoder at ``size`` px holding the official weights of ``state``.

    CheckpointError when the file has no motion auto-encoder or its weights do not fit ``size``.
    """
    from float.motion_autoencoder import MotionAutoEncoder

    own = motion_autoencoder_state(state)
    if not own:
        raise CheckpointError(f"{source}: no '{MOTION_AUTOENCODER}*' keys; not an official FLOAT checkpoint")
    model = MotionAutoEncoder(size)
    load_exactly(model, own, f"{source}: motion auto-encoder weights do not fit a {size}px encoder")
    return model.eval().requires_grad_(False)


def load_exactly(module: nn.Module, state: dict[str, Tensor], refusal: str) -> None:
    """load_state_dict(strict=True); CheckpointError "``refusal`` (first line of torch's reason)" otherwise."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{refusal} ({str(e).splitlines()[0]})") from None


def official_motion_fingerprint(state: dict[str, Tensor], size: int, source: str | Path = "float.pth") -> str | None:
    """Fingerprint of the motion auto-encoder in an official state dict, computed as the shard stage
    computes it (so it compares with a manifest's); None when the file has none."""
    from float.hf_checkpoint import state_fingerprint

    if not motion_autoencoder_state(state):
        return None
    return state_fingerprint(official_motion_autoencoder(state, size, source))


# ---------------------------------------------------------------- export under the official names
def official_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A FloatMotionModel's weights under the official float.pth names (fmt.*, audio_encoder.audio_projection.*),
    cloned on the model's device (a meta-device model gives the names and shapes only).

    Buffers of our own outside those prefixes (the motion normalisation statistics)
    have no official counterpart and are left out; a parameter outside them is an error.
    """
    params = {name for name, _ in model.named_parameters()}
    out = {}
    for k, v in model.state_dict().items():
        if not k.startswith(OFFICIAL_PREFIXES):
            if k in params:
                raise CheckpointError(f"parameter {k!r} has no official name (expected {OFFICIAL_PREFIXES})")
            continue
        out[k] = v.detach().contiguous().clone()
    return out
