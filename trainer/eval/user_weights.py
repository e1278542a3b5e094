"""FID, FVD and LSE-C/D in `floatctl eval`, from network files the user names (README: "Evaluation weights
you bring"): ``--inception`` (pytorch-fid), ``--i3d`` (the common FVD code's TorchScript), ``--syncnet``
(syncnet_python's SyncNet v2), or the same keys in ``--config eval.yaml``.

Every file is loaded (and checked) before any video is scored, so a wrong file costs nothing. The networks
plug into score.py's UserMetrics: LSE per clip, for the generated video and for the ground truth (the paper
reports both), FID and FVD per sample set, over all its clips. A set too small for a statistic (FVD needs two
16-frame clips a side) gets a note in the log and no value, not a failed run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from trainer.errors import TrainerError
from trainer.eval.clips import Clip
from trainer.eval.score import UserMetrics

USER_COLUMNS = (  # (key, heading, legend), as score.FACE_COLUMNS
    ("fid", "FID", "pytorch-fid InceptionV3 pool3, every frame of the set, generated vs ground truth"),
    ("fvd", "FVD", "I3D features of 16-frame clips (the common FVD code), generated vs ground truth"),
    ("lse_c_generated", "LSE-C", "SyncNet confidence, median - min distance over offsets +-15 (higher is better)"),
    ("lse_d_generated", "LSE-D", "SyncNet minimum mean distance over offsets +-15 (lower is better)"),
    ("lse_c_truth", "LSE-C GT", "the same for the ground truth"),
    ("lse_d_truth", "LSE-D GT", "the same for the ground truth"),
)
CONFIG_KEYS = ("inception", "i3d", "syncnet")


def load_user_metrics(inception: Path | None = None, i3d: Path | None = None, syncnet: Path | None = None,
                      log: Callable[[str], None] = print) -> UserMetrics:
    """UserMetrics for the files given (none: an empty one); TrainerError (one line) for a wrong file."""
    user = UserMetrics()
    if inception is not None:
        from trainer.eval.fid import fid_score
        from trainer.eval.inception import load_inception

        model = load_inception(inception)
        log(f"FID: InceptionV3 from {inception}")
        user.per_set.append(_guarded("FID", lambda reals, fakes: {"fid": fid_score(model, reals, fakes)}, log))
    if i3d is not None:
        from trainer.eval.fvd import fvd_score
        from trainer.eval.i3d import load_i3d

        detector = load_i3d(i3d)
        log(f"FVD: I3D from {i3d}")
        user.per_set.append(_guarded("FVD", lambda reals, fakes: {"fvd": fvd_score(detector, reals, fakes)}, log))
    if syncnet is not None:
        from trainer.eval.syncnet import load_syncnet

        net = load_syncnet(syncnet)
        log(f"LSE-C/D: SyncNet v2 from {syncnet}")
        user.per_clip.append(lambda clip: lse_row(net, clip))
    return user


def lse_row(net, clip: Clip) -> dict:
    """LSE-C/D of the clip's generated video and its ground truth against the clip's speech."""
    from trainer.eval.syncnet import lse_scores

    if clip.waveform is None:
        clip.notes.append("no audio at hand: no LSE")
        return {}
    row = {}
    for suffix, video in (("generated", clip.generated), ("truth", clip.real)):
        if video is None:
            continue
        try:
            scores = lse_scores(net, video, clip.waveform)
        except TrainerError as e:  # too short for SyncNet's windows
            clip.notes.append(f"LSE of the {suffix} video: {e}")
            continue
        row |= {f"lse_c_{suffix}": scores["lse_c"], f"lse_d_{suffix}": scores["lse_d"],
                f"lse_lag_{suffix}": scores["offset"]}
    return row


def _guarded(name: str, score, log):
    def run(reals, fakes) -> dict:
        if not reals:
            log(f"{name}: no clip has a ground-truth video: not computed")
            return {}
        try:
            return score(reals, fakes)
        except TrainerError as e:  # too few frames or clips for a covariance
            log(f"{name}: not computed: {e}")
            return {}
    return run
