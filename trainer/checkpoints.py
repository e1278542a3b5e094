"""Training checkpoints: atomic writes, a `latest` pointer, rotation, safe loading, and the model of a
checkpoint (with the shards it was trained on) for sampling and export.

Layout inside ``runs/NAME/checkpoints/``:
  step_00001000.pt ...   the last K periodic checkpoints
  latest                 text file naming the newest good checkpoint
  final.pt               written when the run completes

A checkpoint is a dict of tensors and plain Python values only (config and
settings as dicts, RNG states as tensors/lists), so it loads with
``torch.load(weights_only=True)``: a file holding a pickle that would run code
is refused by the restricted unpickler before anything executes.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

# CheckpointError: the one class for unusable weight files (float.pth, training checkpoints).
from float.checkpoint import CheckpointError, load_exactly, safe_torch_load
from float.config import FloatConfig
from float.model import FloatMotionModel
from float.motion_checkpoint import MOTION_CKPT_KIND
from shards.sources import check_compatible
from shards.manifest import read_manifest
from shards.files import atomic_write_bytes, remove_stale_temporaries  # noqa: F401  (loop.py writes through it)
from trainer.errors import SampleError

CHECKPOINT_VERSION = 1
LATEST = "latest"
FINAL = "final.pt"
STEP_NAME = re.compile(r"^step_(\d{8})\.pt$")
REQUIRED_KEYS = ("version", "step", "model", "config")


def step_filename(step: int) -> str:
    return f"step_{step:08d}.pt"


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
    """Save ``state`` as step_<step>.pt, point ``latest`` at it, keep the newest ``keep`` (0 = all)."""
    ckpt_dir = Path(ckpt_dir)
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
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / FINAL
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    write_latest_pointer(ckpt_dir, path.name)
    return path


# ---------------------------------------------------------------- reading
def load_checkpoint(path: str | Path) -> dict:
    """Load a training checkpoint with weights_only=True; CheckpointError names the file and reason."""
    path = Path(path)
    state = safe_torch_load(path, label="checkpoint ")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, found {type(state).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path}: not a training checkpoint of this trainer "
                              f"(missing keys {missing}; an official float.pth goes to --init)")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {state['version']}, "
                              f"this trainer reads version {CHECKPOINT_VERSION}")
    return state


def list_step_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Periodic checkpoints in ``ckpt_dir``, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def resume_candidates(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoints to try for ``--resume auto``, best first: final.pt, then the step files newest first.

    Ordered by step rather than by the `latest` pointer: a run killed between writing a checkpoint and
    updating the pointer leaves a complete newer file, which should not be thrown away."""
    ckpt_dir = Path(ckpt_dir)
    ordered: list[Path] = []
    final = ckpt_dir / FINAL
    if final.is_file():
        ordered.append(final)
    ordered += list(reversed(list_step_checkpoints(ckpt_dir)))
    pointer = ckpt_dir / LATEST
    if pointer.is_file():  # a checkpoint under another name that the pointer was set to by hand
        name = pointer.read_text().strip()
        if name and "/" not in name and (ckpt_dir / name).is_file() and ckpt_dir / name not in ordered:
            ordered.append(ckpt_dir / name)
    return ordered


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
    path = Path(resume)
    return path, load_checkpoint(path)


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
    """The FloatMotionModel of a training checkpoint (EMA weights by default), in eval mode on ``device``."""
    path = Path(path)
    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        raise SampleError(str(e)) from None
    if state.get("kind") == MOTION_CKPT_KIND:
        raise SampleError(f"{path} is a stage-1 motion auto-encoder checkpoint (floatctl train-motion); this "
                          f"needs an FMT checkpoint (floatctl train). A stage-1 checkpoint encodes latents: "
                          f"floatctl shards --from-crops ... --motion-ckpt {path}")
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
