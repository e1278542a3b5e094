"""The one ``torch.load`` of the project for files a user hands in, and the one-line refusals it gives.

Every weight file an option names (``--perceptual-weights``, ``--init``, ``--motion-ckpt``, a
sampling or export checkpoint, ``float.pth``, a Hugging Face ``pytorch_model.bin``, a training
checkpoint to resume) is read here with ``weights_only=True``: a pickle that would run code is
refused by PyTorch's restricted unpickler before anything executes. A refusal is one line: the
file, what kind of file it is, and (``takes``) what the option accepts, never PyTorch's
multi-line advice to load with ``weights_only=False``.

This module imports nothing of ours, so ``float/checkpoint.py`` and ``float/hf_checkpoint.py`` can
both use it without importing each other (tests/test_faults.py keeps ``torch.load`` calls here).
"""
from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor

# Checkpoint kinds our trainers record (trainer/run.py FMT_KIND, float/motion_checkpoint.py MOTION_CKPT_KIND).
FMT_CHECKPOINT_KIND = "fmt"
MOTION_CHECKPOINT_KIND = "motion_autoencoder"
_TRAINING_KEYS = ("version", "step", "model", "config")
_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointError(ValueError):
    """A weight file that cannot be used, with the file and the reason in the message (one line)."""


def describe_weights(obj) -> str:
    """What a loaded weight file is, in words: "an FMT training checkpoint (floatctl train)", ..."""
    if isinstance(obj, dict):
        kind = obj.get("kind")
        looks_trained = "model" in obj and ("step" in obj or "config" in obj)  # older or hand-made ones
        if all(k in obj for k in _TRAINING_KEYS) or looks_trained or kind in (FMT_CHECKPOINT_KIND,
                                                                              MOTION_CHECKPOINT_KIND):
            if kind == MOTION_CHECKPOINT_KIND:
                return "a stage-1 motion auto-encoder checkpoint (floatctl train-motion)"
            return "an FMT training checkpoint (floatctl train)"
        flat = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
        keys = [k for k in flat if isinstance(k, str)]
        if not keys or not all(isinstance(v, Tensor) for v in flat.values()):
            return f"a dict with keys {[str(k) for k in list(obj)[:4]]} (not all tensors)"
        if any(k.startswith(("fmt.", "motion_autoencoder.", "audio_encoder.")) for k in keys):
            return "an official FLOAT state dict (float.pth layout)"
        if any(k.startswith("features.") for k in keys):
            return "a torchvision VGG-style state dict"
        return f"a state dict of {len(keys)} tensors (keys like {keys[:2]})"
    if isinstance(obj, Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


def wrong_kind(path: str | Path, obj, label: str = "", takes: str = "") -> CheckpointError:
    """The refusal for a readable file of the wrong kind: "LABEL PATH is <kind>; TAKES"."""
    return CheckpointError(f"{label}{path} is {describe_weights(obj)}" + (f"; {takes}" if takes else ""))


def safe_torch_load(path: str | Path, label: str = "", mmap: bool = False, takes: str = ""):
    """torch.load restricted to tensors and plain containers; CheckpointError (one line) otherwise.

    ``label`` prefixes the path (e.g. "--init ", "checkpoint "); ``takes`` ends a refusal with what the
    option accepts. ``mmap`` maps the tensors instead of reading them (zip-format files only): cheap
    for a look at the keys of a large file.
    """
    path = Path(path)
    where = f"{label}{path}"
    tail = f"; {takes}" if takes else ""
    if path.is_dir():
        raise CheckpointError(f"{where}: a folder, not a weight file{tail}")
    if not path.is_file():
        raise CheckpointError(f"{where}: no such file{tail}")
    try:
        with warnings.catch_warnings():  # the restricted unpickler's protocol notes are not the user's business
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "weights only" in text.lower() or "weights_only" in text.lower():
            blocked = _BLOCKED_GLOBAL.search(text)
            what = f"it would call {blocked.group(1)}" if blocked else "it holds objects other than tensors"
            raise CheckpointError(f"{where}: refused: a pickle that is not plain weights ({what}; weights_only "
                                  f"loading ran nothing in it){tail}") from None
        raise CheckpointError(f"{where}: unreadable pickle (truncated or corrupt){tail}") from None
    # KeyError / IndexError / TypeError: what the weights-only unpickler raises on bytes that are not a pickle
    # at all (a text file named .pt).
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, KeyError, IndexError,
            TypeError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{where}: unreadable checkpoint: the file is truncated or corrupt, or not a torch "
                              f"file ({detail}){tail}") from None
