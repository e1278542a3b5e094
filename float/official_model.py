"""The official ``float.pth`` as a model to sample from: recognise it, read its sizes, load its parts.

An official file is a flat state dict under the official module names
(``fmt.*``, ``audio_encoder.audio_projection.*``, ``motion_autoencoder.*``, and
usually the frozen ``audio_encoder.wav2vec2.*`` / ``emotion_encoder.*``), not a
training checkpoint (a dict with ``version``, ``step``, ``model``, ``config``).

The sizes are read from the tensor shapes, so the paper model and smaller
models under the same names load alike. Two options leave no trace in the
shapes: the number of attention heads (the official default, 8) and the
preceding-frame count (10); the attention window is read from
``fmt.alignment_mask`` when the file has it.

Loading copies *parameters* only, as the official loader does; buffers (the
alignment mask, blur kernels, position table) are computed by the modules. The
wav2vec2 weights of both encoders are skipped: they come from the Hugging Face
folders (--wav2vec2, --ser).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from float.checkpoint import MOTION_AUTOENCODER, SKIPPED_MARKER, CheckpointError
from float.config import FPS, FloatConfig
from float.fmt import alignment_mask
from float.model import FloatMotionModel
from float.motion_autoencoder import MotionAutoEncoder

FMT = "fmt."
PROJECTION = "audio_encoder.audio_projection."
OFFICIAL_TOP_PREFIXES = (FMT, "audio_encoder.", MOTION_AUTOENCODER, "emotion_encoder.")
TRAINING_KEYS = ("version", "step", "model", "config")
DEFAULT_HEADS = 8  # official --num_heads; not recoverable from shapes
DEFAULT_PREV_FRAMES = 10  # official --num_prev_frames; pos_embed only holds their sum with the window
_BLOCK = re.compile(r"^fmt\.blocks\.(\d+)\.")
_ENC_CONV = re.compile(r"^motion_autoencoder\.enc\.net_app\.convs\.(\d+)\.")


def is_official_state(obj) -> bool:
    """True for an official-format state dict (tensors under the official prefixes), False for a
    training checkpoint or anything else."""
    if not isinstance(obj, dict) or not obj or any(k in obj for k in TRAINING_KEYS):
        return False
    return any(isinstance(k, str) and k.startswith(OFFICIAL_TOP_PREFIXES) for k in obj)


def _shape(state: dict[str, Tensor], key: str, source: str) -> torch.Size:
    if key not in state:
        raise CheckpointError(f"{source}: missing {key}; cannot read the model's sizes")
    return state[key].shape


def missing_parts(state: dict[str, Tensor]) -> list[str]:
    """The official parts sampling needs that the file does not have at all."""
    return [p.rstrip(".") for p in (FMT, PROJECTION, MOTION_AUTOENCODER) if not any(k.startswith(p) for k in state)]


def official_config(state: dict[str, Tensor], source: str = "float.pth") -> FloatConfig:
    """The FloatConfig of an official state dict, read from its shapes."""
    missing = missing_parts(state)
    if missing:
        raise CheckpointError(f"{source}: an official checkpoint without {', '.join(missing)}: sampling needs the "
                              "FMT, the audio projection and the motion auto-encoder (a float.pth written by "
                              "floatctl export without --float-ckpt / --motion-ckpt has no motion auto-encoder)")
    dim_h, dim_w = _shape(state, "fmt.x_embedder.proj.weight", source)
    dim_a, audio_input_dim = _shape(state, PROJECTION + "0.weight", source)
    dim_e = _shape(state, "fmt.c_embedder.weight", source)[1] - dim_w - dim_a
    mlp_ratio = _shape(state, "fmt.blocks.0.mlp.fc1.weight", source)[0] / dim_h
    depth = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK.match(k)))
    seq_len = _shape(state, "fmt.pos_embed", source)[1]
    num_frames = seq_len - DEFAULT_PREV_FRAMES
    style_dim = _shape(state, "motion_autoencoder.enc.fc.0.weight", source)[0]
    dim_m = _shape(state, "motion_autoencoder.dec.direction.weight", source)[1]
    # The appearance encoder has log2(size) convolutions (stem, residual blocks, final 4x4).
    size = 2 ** (1 + max(int(m.group(1)) for k in state if (m := _ENC_CONV.match(k))))
    if style_dim != dim_w:
        raise CheckpointError(f"{source}: the motion auto-encoder's latent width {style_dim} differs from the "
                              f"FMT's dim_w {dim_w}")
    if dim_e < 1 or num_frames < 1 or dim_h % DEFAULT_HEADS:
        raise CheckpointError(f"{source}: unusual shapes (dim_e {dim_e}, {seq_len} positions, dim_h {dim_h}); "
                              "not a FLOAT model this code can rebuild")
    window = 2
    mask = state.get("fmt.alignment_mask")
    if mask is not None and mask.shape == (seq_len, seq_len):
        window = next((w for w in range(seq_len) if torch.equal(alignment_mask(seq_len, w), mask.bool())), 2)
    return FloatConfig(name="official", input_size=size, dim_w=dim_w, dim_m=dim_m, dim_a=dim_a, dim_e=dim_e,
                       audio_input_dim=audio_input_dim, dim_h=dim_h, depth=depth, num_heads=DEFAULT_HEADS,
                       mlp_ratio=mlp_ratio, attention_window=window, num_prev_frames=DEFAULT_PREV_FRAMES,
                       wav2vec_sec=num_frames / FPS)


@dataclass
class OfficialModel:
    model: FloatMotionModel  # fmt + audio projection, identity motion statistics (raw latents)
    autoencoder: MotionAutoEncoder
    cfg: FloatConfig
    loaded: int = 0  # parameters copied
    skipped: int = 0  # wav2vec2 / speech-emotion tensors left to the Hugging Face folders
    ignored: list[str] = field(default_factory=list)  # other keys of the file


@torch.no_grad()
def _copy_parameters(module: nn.Module, prefix: str, state: dict[str, Tensor], claimed: set, source: str) -> int:
    problems = []
    for name, param in module.named_parameters():
        key = prefix + name
        claimed.add(key)
        if key not in state:
            problems.append(f"missing {key}")
        elif state[key].shape != param.shape:
            problems.append(f"{key}: file {tuple(state[key].shape)} vs model {tuple(param.shape)}")
        else:
            param.copy_(state[key])
    if problems:
        more = f" ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise CheckpointError(f"{source}: {prefix.rstrip('.')} does not load: {'; '.join(problems[:5])}{more}")
    return sum(1 for _ in module.parameters())


def load_official_model(state: dict[str, Tensor], source: str = "float.pth") -> OfficialModel:
    """The sampling model and motion auto-encoder of an official state dict (CPU, eval, frozen)."""
    cfg = official_config(state, source)
    model = FloatMotionModel(cfg)
    autoencoder = MotionAutoEncoder(cfg.input_size, cfg.dim_w, cfg.dim_m)
    claimed: set = set()
    loaded = _copy_parameters(model.fmt, FMT, state, claimed, source)
    loaded += _copy_parameters(model.audio_encoder.audio_projection, PROJECTION, state, claimed, source)
    loaded += _copy_parameters(autoencoder, MOTION_AUTOENCODER, state, claimed, source)
    skipped = sum(1 for k in state if SKIPPED_MARKER in k)
    buffers = {FMT + n for n, _ in model.fmt.named_buffers()} | \
        {MOTION_AUTOENCODER + n for n, _ in autoencoder.named_buffers()}
    ignored = sorted(k for k in state if k not in claimed and k not in buffers and SKIPPED_MARKER not in k)
    return OfficialModel(model.eval().requires_grad_(False), autoencoder.eval().requires_grad_(False), cfg,
                         loaded, skipped, ignored)
