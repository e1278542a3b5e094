"""Loading the official ``float.pth`` safely, with a per-part key report.

Only ``torch.load(..., weights_only=True)`` is used: a pickle that would run
code is refused by the unpickler and never executed. The official loader skips
the wav2vec2 weights (they come from the Hugging Face folders); so do we.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

# Parts of the official model, by key prefix. wav2vec2 weights are skipped.
PARTS = ("fmt.", "audio_encoder.audio_projection.", "motion_autoencoder.")
SKIPPED_MARKER = "wav2vec2"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the file and the reason in the message."""


def safe_torch_load(path: str | Path):
    """torch.load restricted to tensors and plain containers; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused: it holds pickled objects other than tensors and plain containers "
            f"(weights_only loading; nothing in it was executed). Detail: {first}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or not a torch file): {e}") from None


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
