"""How much of each crop the face fills, clip by clip, in a crop shard folder (any set: synthetic or real).

The paper's crop is 1.6x the SFD face box, so the face box fills 1 / 1.6 = 0.625 of the crop side, whatever
the face's size in the source video. This measures it on the crops themselves: dlib's landmark box on
``--frames`` evenly spaced frames of every clip, mapped onto the SFD box (preprocess/face_dlib.py), divided
by the crop side. It prints each clip's median share and the spread across clips: a steady crop has every
clip near 0.625 and a small spread; a loose crop (a small face in a large frame) shows as a low share.
    PYTHONPATH=. .venv/bin/python benchmarks/crop_share.py data/real/shards-crops [--frames 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from preprocess import face_dlib  # noqa: E402
from shards.crops import CROP_ONLY_MEMBERS, JPEGS, OFFSETS, CropClip  # noqa: E402
from shards.tar import iter_tar_samples  # noqa: E402

OFFICIAL_SHARE = 1 / 1.6


def clip_share(clip: CropClip, frames: int) -> tuple[float, int]:
    """(median SFD-box side / crop side over the frames where a face is found, frames with a face)."""
    shares = []
    for i in np.linspace(0, clip.num_frames - 1, min(frames, clip.num_frames)).round().astype(int):
        image = clip.frame(int(i))
        side = image.shape[0]
        found = face_dlib.detect_scored(image, detect_height=max(side, 2 * side if side < 256 else side))
        if len(found.boxes):
            shares.append(float(face_dlib.sfd_boxes(found.boxes[:1])[0, 2]) / side)
    return (float(np.median(shares)) if shares else float("nan")), len(shares)


def measure(folder: Path, frames: int = 8) -> list[dict]:
    rows = []
    for tar in sorted(folder.glob("*.tar")):
        for key, members in iter_tar_samples(str(tar), frozenset((JPEGS, OFFSETS)), known_members=CROP_ONLY_MEMBERS):
            share, found = clip_share(CropClip(key, members), frames)
            rows.append({"key": key, "split": tar.name.split("-")[0], "share": share, "found": found})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crops", type=Path)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = measure(args.crops, args.frames)
    for r in rows:
        print(f"{r['split']:5s} {r['key'][:60]:60s} face share {r['share']:.3f} ({r['found']}/{args.frames} frames)")
    shares = np.array([r["share"] for r in rows if np.isfinite(r["share"])])
    if len(shares):
        print(f"{len(rows)} clips, face found in {len(shares)}: share median {np.median(shares):.3f}, "
              f"min {shares.min():.3f}, max {shares.max():.3f}, spread (std / mean) {shares.std() / shares.mean():.1%}; "
              f"the official framing gives {OFFICIAL_SHARE:.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
