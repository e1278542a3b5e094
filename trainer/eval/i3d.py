"""The I3D TorchScript of the common FVD code (StyleGAN-V's ``i3d_torchscript.pt``): loading and features.

FVD is defined on the Kinetics-400 Inception-I3D of the original TensorFlow FVD (tf.hub), which StyleGAN-V
re-exported as TorchScript. Its forward is ``detector(videos, rescale=..., resize=..., return_features=...)``:
videos are (B, 3, T, H, W) with pixels 0..255 (StyleGAN-V passes uint8), ``rescale=True`` maps them to
[-1, 1], ``resize=True`` resizes the frames to 224x224, and ``return_features=True`` returns the 400 logits
before the softmax, one row per clip. The file is TorchScript, so it is loaded with ``torch.jit.load``, which
reads TorchScript code and tensors only (no Python pickles run). Because the network is code, it is checked
by how it answers: its forward must take those three options, and one probe clip must give (1, 400).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trainer.errors import TrainerError

I3D_FILE = "i3d_torchscript.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
I3D_FEATURES = 400
I3D_OPTIONS = ("rescale", "resize", "return_features")
CLIP_FRAMES = 16  # StyleGAN-V's FVD clips (fvd2048_16f); the network needs at least 9 frames
PROBE_SIZE = 64  # probe clip side (the network resizes it to 224 itself)


def _forward_options(module) -> list[str]:
    try:
        schema = module.forward.schema
    except (AttributeError, RuntimeError):
        return []
    return [a.name for a in schema.arguments][1:]  # without self


def load_i3d(path: str | Path, probe: bool = True) -> torch.jit.ScriptModule:
    """The FVD I3D from its TorchScript file, in eval mode; TrainerError (one line) for any other file.

    ``probe`` runs one 16-frame clip through it to check that features are (1, 400) (a few seconds on a CPU).
    """
    path = Path(path)
    where = f"FVD I3D TorchScript {path}"
    if not path.is_file():
        raise TrainerError(f"{where}: no such file")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, ValueError or zip errors for a bad archive
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainerError(f"{where}: not a TorchScript archive (truncated, corrupt, or a plain torch.save file; "
                           f"expected {I3D_FILE}): {detail}") from None
    options = _forward_options(module)
    if not all(o in options for o in I3D_OPTIONS):
        raise TrainerError(f"{where}: its forward takes ({', '.join(options)}), not (videos, rescale, resize, "
                           f"return_features): not the FVD detector {I3D_FILE}")
    module.eval()
    if probe:
        clip = torch.zeros(1, CLIP_FRAMES, PROBE_SIZE, PROBE_SIZE, 3, dtype=torch.uint8)
        try:
            i3d_features(module, clip)  # raises TrainerError unless the features are (1, 400)
        except TrainerError as e:
            raise TrainerError(f"{where}: {e}") from None
        except Exception as e:  # noqa: BLE001 - whatever a foreign network raises on the probe
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            # TorchScript puts its traceback first and the error itself on the last line.
            raise TrainerError(f"{where}: fails on a (1, 3, {CLIP_FRAMES}, {PROBE_SIZE}, {PROBE_SIZE}) probe clip: "
                               f"{type(e).__name__}: {lines[-1] if lines else ''}") from None
    return module


@torch.no_grad()
def i3d_features(module, clips: np.ndarray | Tensor, batch_size: int = 8) -> Tensor:
    """Features (B, 400) float32 of clips uint8 (B, T, H, W, 3), fed as StyleGAN-V feeds its detector.

    Each batch goes in as uint8 (B, 3, T, H, W) with rescale=True, resize=True, return_features=True.
    """
    clips = torch.as_tensor(np.asarray(clips))
    if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"I3D clips must be uint8 (B, T, H, W, 3), got {clips.dtype} {tuple(clips.shape)}")
    params = list(module.parameters())
    device = params[0].device if params else torch.device("cpu")
    out = []
    for i in range(0, len(clips), batch_size):
        videos = clips[i:i + batch_size].permute(0, 4, 1, 2, 3).contiguous().to(device)
        feats = module(videos, rescale=True, resize=True, return_features=True)
        if not isinstance(feats, Tensor) or tuple(feats.shape) != (len(videos), I3D_FEATURES):
            got = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise TrainerError(f"I3D features are {got} for {len(videos)} clips, expected ({len(videos)}, "
                               f"{I3D_FEATURES}): not the FVD detector {I3D_FILE}")
        out.append(feats.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, I3D_FEATURES)
