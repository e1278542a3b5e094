"""Loading the motion auto-encoder from a stage-1 checkpoint (``floatctl train-motion``).

The checkpoint is a ``torch.save`` dict ``{"kind": "motion_autoencoder", "step": int,
"config": FloatConfig.to_dict(), "model": state_dict, "ema": state_dict, ...}``,
loaded with ``weights_only=True`` (tensors and plain containers only). The EMA
weights are the encoder's (the raw "model" weights when a checkpoint has no EMA).
This is the one loader: the shard stage, sampling and rendering all go through it
(via preprocess.encode.load_motion_encoder), so they agree on the fingerprint.
"""
from __future__ import annotations

from pathlib import Path

from float.checkpoint import CheckpointError, safe_torch_load
from float.config import FloatConfig
from float.hf_checkpoint import state_fingerprint
from float.motion_autoencoder import MotionAutoEncoder

MOTION_CKPT_KIND = "motion_autoencoder"


def _what_it_is(obj: dict) -> str:
    """A guess at what a wrong-kind checkpoint is, to make the refusal useful."""
    kind = obj.get("kind")
    if kind is not None:
        return f"a checkpoint of kind {kind!r}"
    if any(isinstance(k, str) and k.startswith("motion_autoencoder.") for k in obj):
        return "an official-format float.pth (use --float-ckpt for it)"
    if "fmt" in obj or "model" in obj:
        return "an FMT training checkpoint"
    return f"a dict with keys {sorted(map(str, obj))[:6]}"


def load_motion_checkpoint(path: str | Path) -> tuple[MotionAutoEncoder, dict, FloatConfig]:
    """(frozen MotionAutoEncoder on CPU in eval mode, manifest info, the checkpoint's config).

    Raises CheckpointError naming the file for: a missing file, a file that is not a torch
    checkpoint, a checkpoint of another kind, or weights that do not fit the recorded config.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (expected a stage-1 checkpoint written by "
                              "`floatctl train-motion`)")
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or obj.get("kind") != MOTION_CKPT_KIND:
        what = _what_it_is(obj) if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(f"{path}: not a stage-1 motion auto-encoder checkpoint (kind "
                              f"{MOTION_CKPT_KIND!r}); it is {what}")
    try:
        cfg = FloatConfig.from_dict(obj["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: stage-1 checkpoint without a usable config ({e})") from None
    which = "ema" if isinstance(obj.get("ema"), dict) and obj["ema"] else "model"
    state = obj.get(which)
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: stage-1 checkpoint holds no 'ema' or 'model' weights")
    model = MotionAutoEncoder(cfg.input_size, cfg.dim_w, cfg.dim_m, cfg.ae_width)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the {which!r} weights do not fit a MotionAutoEncoder(size "
                              f"{cfg.input_size}, dim_w {cfg.dim_w}, dim_m {cfg.dim_m}, width {cfg.ae_width}) "
                              f"as its config says: {str(e).splitlines()[0]}") from None
    model.eval().requires_grad_(False)
    info = {"fingerprint": state_fingerprint(model), "source": str(path), "random": False,
            "size": cfg.input_size, "width": cfg.ae_width, "kind": MOTION_CKPT_KIND,
            "step": int(obj.get("step") or 0), "weights": which}
    return model, info, cfg

