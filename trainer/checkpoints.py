"""Training checkpoints: atomic writes, a `latest` pointer, rotation, safe loading, and the model of a
checkpoint (with the shards it was trained on) for sampling and export.

Layout inside ``runs/NAME/checkpoints/`` and how a run folder names a checkpoint: float/checkpoint_names.py.
Every file is written through shards/files.py: a full disk or a read-only folder is a StorageError, and
the previous checkpoint and ``latest`` stay as they were.

A checkpoint is a dict of tensors and plain Python values only (config and
settings as dicts, RNG states as tensors/lists), so it loads with
``torch.load(weights_only=True)``: a file holding a pickle that would run code
is refused by the restricted unpickler before anything executes.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

# CheckpointError: the one class for unusable weight files (float.pth, training checkpoints).
from float.checkpoint import CheckpointError, load_exactly, safe_torch_load, wrong_kind
from float.safe_load import describe_weights
from float.checkpoint_names import (BEST_NAME, FINAL_NAME, LATEST, LEGACY_FINAL, STEP_NAME,  # noqa: F401
                                    final_filename, pick_checkpoint, step_filename, step_of_name)
from float.config import FloatConfig
from float.model import FloatMotionModel
from float.motion_checkpoint import MOTION_CKPT_KIND
from shards.mix import parse_data_root
from shards.sources import check_compatible, manifest_location, read_manifest_at
from shards.files import atomic_write_bytes, remove_stale_temporaries, writing
from trainer.errors import SampleError

CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("version", "step", "model", "config")
# What `sample` and `export` take (said by every refusal of theirs).
FMT_TAKES = "it takes an FMT checkpoint of `floatctl train` (a .pt file or its run folder)"


# ---------------------------------------------------------------- RNG states
def capture_rng_state() -> dict:
    """Global RNG states of torch (CPU and CUDA), numpy and python, as weights_only-safe values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "algorithm": str(np_state[0]),
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["algorithm"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------- writing
def write_latest_pointer(ckpt_dir: Path, name: str) -> None:
    atomic_write_bytes(Path(ckpt_dir) / LATEST, lambda f: f.write((name + "\n").encode()))


def save_checkpoint(ckpt_dir: str | Path, state: dict, step: int, keep: int = 3) -> Path:
    """Save ``state`` as checkpoint_step_<step>.pt, point ``latest`` at it, keep the newest ``keep`` (0 = all)."""
    ckpt_dir = Path(ckpt_dir)
    with writing(ckpt_dir / LATEST):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(ckpt_dir)
    path = ckpt_dir / step_filename(step)
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    write_latest_pointer(ckpt_dir, path.name)
    if keep > 0:
        for old in list_step_checkpoints(ckpt_dir)[:-keep]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def save_final(ckpt_dir: str | Path, state: dict) -> Path:
    ckpt_dir = Path(ckpt_dir)
    with writing(ckpt_dir / LATEST):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / final_filename(int(state["step"]))
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    write_latest_pointer(ckpt_dir, path.name)
    return path


def save_best(ckpt_dir: str | Path, state: dict) -> Path:
    """The best validated state as best_step_<step>.pt, replacing the previous best (``latest`` is untouched:
    training resumes from the newest state, not the best)."""
    ckpt_dir = Path(ckpt_dir)
    with writing(ckpt_dir / LATEST):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"best_step_{int(state['step'])}.pt"
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    for old in ckpt_dir.iterdir():
        if BEST_NAME.match(old.name) and old != path:
            old.unlink(missing_ok=True)
    return path


def best_checkpoint(ckpt_dir: str | Path) -> Path | None:
    found = [p for p in Path(ckpt_dir).glob("best_step_*.pt") if BEST_NAME.match(p.name)]
    return found[0] if found else None


# ---------------------------------------------------------------- reading
def load_checkpoint(path: str | Path, takes: str = "") -> dict:
    """Load a training checkpoint with weights_only=True; CheckpointError names the file, what it is and
    (``takes``) what the option wants."""
    path = Path(path)
    state = safe_torch_load(path, label="checkpoint ", takes=takes)
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise wrong_kind(path, state, "checkpoint ", takes or "it is not a training checkpoint of this trainer "
                                                           "(an official float.pth goes to --init)")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {state['version']}, "
                              f"this trainer reads version {CHECKPOINT_VERSION}")
    return state


def list_step_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Periodic checkpoints in ``ckpt_dir``, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(step_of_name(p.name), p) for p in ckpt_dir.iterdir() if STEP_NAME.match(p.name)]
    return [p for _, p in sorted(found)]


def _legacy_final_step(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["step"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return -1  # unreadable: tried last, and skipped with a warning then


def resume_candidates(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoints to try for ``--resume auto``, best first: by step, newest first, a final one before a
    periodic one of the same step.

    By step, not by kind: a finished 1,000-step run extended to 3,000 and killed at 2,700 resumes from
    its step-2,700 checkpoint, not from the old final one. Not by the `latest` pointer either: a run
    killed between writing a checkpoint and updating the pointer leaves a complete newer file."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    ranked: list[tuple[int, int, Path]] = []
    for path in ckpt_dir.iterdir():
        if FINAL_NAME.match(path.name):
            ranked.append((step_of_name(path.name), 1, path))
        elif STEP_NAME.match(path.name):
            ranked.append((step_of_name(path.name), 0, path))
        elif path.name == LEGACY_FINAL and path.is_file():
            ranked.append((_legacy_final_step(path), 1, path))
    ordered = [p for _, _, p in sorted(ranked, key=lambda r: (r[0], r[1]), reverse=True)]
    pointer = ckpt_dir / LATEST
    if pointer.is_file():  # a checkpoint under another name that the pointer was set to by hand
        name = pointer.read_text().strip()
        if name and "/" not in name and (ckpt_dir / name).is_file() and ckpt_dir / name not in ordered:
            ordered.append(ckpt_dir / name)
    return ordered


def latest_checkpoint(folder: str | Path) -> Path:
    """A run folder or its checkpoints folder -> the checkpoint its `latest` pointer names (else the
    newest by step); CheckpointError when there is none."""
    folder = Path(folder)
    ckpt_dir = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        if name and "/" not in name and (ckpt_dir / name).is_file():
            return ckpt_dir / name
    candidates = resume_candidates(ckpt_dir)
    if not candidates:
        raise CheckpointError(f"{folder}: no checkpoint in it (expected {step_filename(1000)} or "
                              f"{final_filename(1000)}-style files, or a `latest` pointer)")
    return candidates[0]


def find_resume_checkpoint(ckpt_dir: str | Path, warn: Callable[[str], None] = print) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, skipping (with a warning) truncated or refused ones."""
    for path in resume_candidates(ckpt_dir):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warn(f"warning: skipping {e}")
    return None


def resolve_resume(resume: str | None, ckpt_dir: str | Path,
                   warn: Callable[[str], None] = print) -> tuple[Path, dict] | None:
    """``--resume``: None/"" -> fresh start; "auto" -> newest good checkpoint or fresh; else a path."""
    if not resume:
        return None
    if resume == "auto":
        return find_resume_checkpoint(ckpt_dir, warn)
    path = pick_checkpoint(resume, "--resume", warn)  # a run folder: its final checkpoint, else its newest
    return path, load_checkpoint(path, takes="--resume takes 'auto', a training checkpoint or its run folder")


# ---------------------------------------------------------------- loading for sampling and export
Log = Callable[[str], None]
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


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
    """The FloatMotionModel of a training checkpoint (EMA weights by default), in eval mode on ``device``.

    ``path`` may also be a run folder or its checkpoints folder: its final checkpoint, else its newest
    (``log`` hears which)."""
    try:
        path = pick_checkpoint(path, "checkpoint", log)
        state = load_checkpoint(path, takes=FMT_TAKES)
    except CheckpointError as e:
        raise SampleError(str(e)) from None
    if state.get("kind") == MOTION_CKPT_KIND:
        raise SampleError(f"checkpoint {path} is {describe_weights(state)}; "
                          f"{FMT_TAKES} (a stage-1 checkpoint encodes latents: floatctl shards --from-crops ... "
                          f"--motion-ckpt {path})")
    try:
        cfg = FloatConfig.from_dict(state["config"])
    except (TypeError, ValueError) as e:
        raise SampleError(f"checkpoint {path}: unusable model config ({e})") from None
    weights, which = checkpoint_weights(state, path, use_ema, log)
    model = FloatMotionModel(cfg)
    try:
        load_exactly(model, weights, f"checkpoint {path}: the {which} weights do not fit its own config")
    except CheckpointError as e:
        raise SampleError(str(e)) from None
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


def recorded_data_root(sm: SamplingModel) -> str | None:
    """The shard folder (or URL) the checkpoint was trained on (its settings, else the run's config.json);
    the first one when the run mixed several (it also held the val split)."""
    root = sm.settings.get("data_root")
    if not root:
        config = run_dir_of(sm.checkpoint) / "config.json"
        try:
            root = json.loads(config.read_text()).get("data_root")
        except (OSError, ValueError, AttributeError):
            root = None
    if isinstance(root, list):
        root = root[0] if root else None
    return parse_data_root(str(root)).location if root else None


def load_manifest(sm: SamplingModel, data_root: str | Path | None, log: Log = print) -> tuple[dict, str]:
    """(manifest, shard folder or URL): ``data_root`` if given, else the folder recorded in the checkpoint."""
    folder = str(data_root) if data_root else recorded_data_root(sm)
    if folder is None:
        raise SampleError(f"checkpoint {sm.checkpoint} records no shard folder; pass --data-root "
                          "(the shards it was trained on: their manifest says how to encode audio and images)")
    try:
        manifest = read_manifest_at(folder)
    except ValueError as e:
        hint = "" if data_root else " (the folder recorded in the checkpoint; pass --data-root if it moved)"
        raise SampleError(f"{e}{hint}") from None
    if sm.manifest_fingerprint and manifest.get("fingerprint") != sm.manifest_fingerprint:
        log(f"warning: {manifest_location(folder)} has settings fingerprint {str(manifest.get('fingerprint'))[:12]}, "
            f"the checkpoint was trained on {sm.manifest_fingerprint[:12]}: encoders may differ from training")
    try:
        check_compatible(manifest, sm.cfg)
    except ValueError as e:
        raise SampleError(f"{manifest_location(folder)}: {e}") from None
    return manifest, folder
