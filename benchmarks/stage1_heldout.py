"""Held-out PSNR of a stage-1 checkpoint on the splits of a crop shard folder: how much better than copying the
source frame it rebuilds the driving frame, over the whole frame and the mouth region (MOUTH_BOX).

The trainer validates on the val split only; this scores any split (the test people too, or the train people to
see the gap) with a fixed pair list: ``--pairs`` pairs per clip, drawn with seed 1 (shards/pairs.py ValPairs),
so two checkpoints are compared on the same pairs. The README's real-data tables come from it:
    PYTHONPATH=. .venv/bin/python benchmarks/stage1_heldout.py runs/real-cpu/stage1.pt data/real-cpu/crops \
        --splits val,test --pairs 48
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from float.checkpoint_names import pick_checkpoint  # noqa: E402
from float.motion_checkpoint import load_motion_checkpoint  # noqa: E402
from shards.crops import crop_shard_urls  # noqa: E402
from shards.pairs import ValPairs  # noqa: E402
from trainer.motion_eval import heldout_psnr  # noqa: E402


def score(model, crops: Path, split: str, pairs: int, batch: int = 32) -> dict:
    val = ValPairs(crop_shard_urls(crops, split), pairs_per_clip=pairs, seed=1, size=model.size)
    m = heldout_psnr(model, val.batches(batch))
    return {"pairs": m["pairs"], "psnr": m["recon"], "copy": m["copy"], "gain": m["recon"] - m["copy"],
            "mouth_gain": m["mouth"] - m["mouth_copy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="stage-1 checkpoint or run folder (train-motion or export)")
    parser.add_argument("crops", type=Path, help="crop shard folder")
    parser.add_argument("--splits", default="val,test")
    parser.add_argument("--pairs", type=int, default=48, help="pairs per clip")
    args = parser.parse_args()
    model, _, _ = load_motion_checkpoint(pick_checkpoint(args.checkpoint, "checkpoint", print))
    model.eval()
    for split in args.splits.split(","):
        r = score(model, args.crops, split, args.pairs)
        print(f"{split:5s} {r['pairs']:4d} pairs: reconstruction {r['psnr']:.2f} dB, copying the source {r['copy']:.2f} dB, "
              f"gain {r['gain']:+.2f} dB (mouth region {r['mouth_gain']:+.2f} dB)")


if __name__ == "__main__":
    main()
