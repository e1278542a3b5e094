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

from float.checkpoint_names import pick_checkpoint
from float.config import FloatConfig
from float.hf_checkpoint import state_fingerprint
from float.motion_autoencoder import MotionAutoEncoder
from float.safe_load import CheckpointError, safe_torch_load, wrong_kind

MOTION_CKPT_KIND = "motion_autoencoder"
TAKES = "it takes a stage-1 checkpoint of `floatctl train-motion` (a .pt file or its run folder)"


def load_motion_checkpoint(path: str | Path, log=print) -> tuple[MotionAutoEncoder, dict, FloatConfig]:
    """(frozen MotionAutoEncoder on CPU in eval mode, manifest info, the checkpoint's config).

    ``path`` may be a run folder (``log`` hears which checkpoint was chosen). Raises CheckpointError naming
    the file for: a missing file, a file that is not a torch checkpoint (or a pickle that would run code),
    a checkpoint of another kind (saying which kind), or weights that do not fit the recorded config.
    """
    path = pick_checkpoint(path, log=log)  # a run folder: its final checkpoint, else its newest
    obj = safe_torch_load(path, takes=TAKES)
    if not isinstance(obj, dict) or obj.get("kind") != MOTION_CKPT_KIND:
        raise wrong_kind(path, obj, takes=TAKES)
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

