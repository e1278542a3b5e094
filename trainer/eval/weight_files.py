"""Reading a weights file the user names for an evaluation network, and refusing a wrong one in one line.

Every evaluation network (pytorch-fid's InceptionV3, SyncNet v2) is a published state dict that we load
into our own pure-torch rebuild. The file is read with the project's safe loader (tensors and plain
containers only: a pickle that would run code is refused, never executed), and its names and shapes must
equal ours exactly, so that a file of another network, a truncated file or a file with a key missing stops
with the file, the expected public file name and the reason, instead of a traceback or silently wrong scores.
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from float.safe_load import CheckpointError, safe_torch_load
from trainer.errors import TrainerError

# BatchNorm's step counter: files saved before torch 0.4.1 lack it and torch's own loading accepts that.
OPTIONAL_SUFFIX = "num_batches_tracked"
NAMES_SHOWN = 3


def _some(names) -> str:
    names = sorted(names)
    more = f" (+{len(names) - NAMES_SHOWN} more)" if len(names) > NAMES_SHOWN else ""
    return ", ".join(names[:NAMES_SHOWN]) + more


def load_exact_state_dict(module: nn.Module, path: str | Path, what: str, public_name: str) -> nn.Module:
    """Fill ``module`` from the state dict at ``path``; TrainerError naming the file when it is not that network.

    ``what`` says which network in the message ("FID InceptionV3 weights"); ``public_name`` is the file the
    user should give. Keys and shapes must match exactly (only BatchNorm step counters may be absent).
    """
    where = f"{what} {path}"
    try:
        state = safe_torch_load(path)
    except CheckpointError as e:
        raise TrainerError(f"{what}: {e}") from None
    if not isinstance(state, dict) or not state:
        raise TrainerError(f"{where}: not a state dict (found {type(state).__name__}); expected {public_name}")
    if any(not isinstance(k, str) or not isinstance(v, Tensor) for k, v in state.items()):
        raise TrainerError(f"{where}: not a tensor state dict; expected {public_name}")
    ours = module.state_dict()
    required = {k for k in ours if not k.endswith(OPTIONAL_SUFFIX)}
    missing = required - state.keys()
    unexpected = state.keys() - ours.keys()
    if missing and len(missing) == len(required):
        raise TrainerError(f"{where}: not the expected network (none of its {len(required)} weight names; found "
                           f"{len(state)} keys such as {_some(state)}); expected {public_name}")
    if missing or unexpected:
        parts = [f"missing {len(missing)} keys: {_some(missing)}"] if missing else []
        parts += [f"unexpected {len(unexpected)} keys: {_some(unexpected)}"] if unexpected else []
        raise TrainerError(f"{where}: {'; '.join(parts)}; expected {public_name}")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(ours[k].shape)})"
             for k in sorted(state) if state[k].shape != ours[k].shape]
    if wrong:
        raise TrainerError(f"{where}: {len(wrong)} weights of the wrong shape: {_some(wrong)}; expected {public_name}")
    module.load_state_dict(state, strict=False)  # every required key is present (checked above)
    return module.eval().requires_grad_(False)
