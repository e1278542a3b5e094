"""Stage 1's pair loader at 512 px: pairs/s from local disk and from a local HTTP server, and bytes/pair.

``.venv/bin/python benchmarks/pair_loader.py [--clips 12 --frames 50 --workers 1 --batches 12]``
writes 512 px crop shards to a temporary folder (the frames of /work/shared's real talking-head
video when it is there, cut into clips; otherwise synthetic frames, which JPEG shrinks far more than
faces, so their bytes/pair are low), serves the folder on 127.0.0.1 (shards/http_serve.py) and reads
it both ways with `floatctl train-motion`'s loader and defaults (pairs per clip, hard-pair share,
shuffle buffer): the HTTP path goes through WebDataset's gopen (curl), as a bucket would.

A clip is read whole (every frame's JPEG: the stream cannot seek inside a tar) and gives
``pairs_per_clip`` pairs, so the bytes read per pair are the clip's JPEG bytes over the pairs drawn
from it: they grow with clip length. Printed: the bytes of one 512 px frame, bytes/pair for these
clips, and the bandwidth a node needs at the measured rate. The HTTP path should stay within 2x of
local disk on one machine (as for the FMT's loader, benchmarks/remote_loader.py); exits 1 when not.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "benchmarks")]

from benchmarks.loader import local_http_verdict, loader_throughput  # noqa: E402
from shards.crops import read_crop_manifest  # noqa: E402
from shards.http_serve import serve_folder  # noqa: E402
from shards.pairs import make_pair_loader  # noqa: E402
from shards.sources import shard_urls  # noqa: E402
from trainer.settings import MotionSettings  # noqa: E402

VIDEO = Path("/work/shared/samples/talking_head_512_25fps.mp4")
SIZE = 512


def video_frames(path: Path, size: int) -> np.ndarray | None:
    """Every frame of ``path`` as (T,size,size,3) RGB uint8, or None when it cannot be read."""
    import cv2

    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if frame.shape[:2] != (size, size):
            frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames) if frames else None


def clips_from(video: np.ndarray):
    """A crop_factory frames_fn cutting consecutive clips out of ``video`` (wrapping around)."""
    cursor = [0]

    def frames_fn(rng, n: int, size: int) -> np.ndarray:
        index = (cursor[0] + np.arange(n)) % len(video)
        cursor[0] += n
        return video[index]

    return frames_fn


def write_crops(folder: str, args: argparse.Namespace) -> tuple[str, float]:
    sys.path.insert(0, str(REPO / "tests"))
    from crop_factory import crop_frames, make_crop_shards

    video = video_frames(args.video, SIZE) if args.video.is_file() else None
    what = f"frames of {args.video.name}" if video is not None else "synthetic frames (no video found)"
    t0 = time.perf_counter()
    make_crop_shards(folder, {"train": args.clips}, frames=args.frames, size=SIZE, seed=0,
                     clips_per_shard=args.clips_per_shard,
                     frames_fn=clips_from(video) if video is not None else crop_frames)
    return what, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = MotionSettings()
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--frames", type=int, default=50, help="frames per clip (2 s at 25 fps)")
    parser.add_argument("--clips-per-shard", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="best of N per source (a busy machine is noisy)")
    parser.add_argument("--pairs-per-clip", type=int, default=defaults.pairs_per_clip)
    parser.add_argument("--hard-pairs", type=float, default=defaults.hard_pairs)
    parser.add_argument("--video", type=Path, default=VIDEO)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        what, seconds = write_crops(folder, args)
        manifest = read_crop_manifest(folder)
        shard_bytes = sum(s["bytes"] for s in manifest["splits"]["train"]["shards"])
        frames = manifest["splits"]["train"]["frames"]
        per_frame = shard_bytes / frames
        per_pair = per_frame * args.frames / args.pairs_per_clip
        print(f"pair_loader: {args.clips} clips x {args.frames} frames at {SIZE} px ({what}), "
              f"{shard_bytes / 2**20:.1f} MiB of crop shards written in {seconds:.1f} s; "
              f"{per_frame / 1024:.1f} KiB/frame, {per_pair / 1024:.0f} KiB read per pair "
              f"({args.pairs_per_clip} pairs per {args.frames}-frame clip, hard share {args.hard_pairs}); "
              f"batch {args.batch_size}, {args.workers} worker(s), best of {args.repeats}")
        rates = {}
        with serve_folder(folder, lifetime=900) as server:
            for name, root in (("local disk", folder), ("http 127.0.0.1", server.url)):
                urls = shard_urls(root, "train")
                best = 0.0
                for _ in range(args.repeats):
                    loader = make_pair_loader(urls, args.batch_size, args.workers, seed=0,
                                              pairs_per_clip=args.pairs_per_clip, pin_memory=False, size=SIZE,
                                              hard_fraction=args.hard_pairs,
                                              shuffle_buffer=defaults.shuffle_buffer)
                    best = max(best, loader_throughput(loader, args.batches)["windows_per_s"])
                rates[name] = best
                print(f"  {name:>15}: {best:7.1f} pairs/s  ({best * per_pair / 2**20:6.1f} MiB/s of shards)")
            served = [r for r in server.requests if r.startswith("train-")]
            if not served:
                sys.exit("pair_loader: the HTTP measurement read no shard from the server")
            pairs = args.repeats * (args.batches + 2) * args.batch_size  # loader_throughput's 2 warm-up batches
            sent = sum((Path(folder) / r).stat().st_size for r in served)
            print(f"  http: {len(served)} shard GETs, {sent / 2**20:.1f} MiB for {pairs} pairs = "
                  f"{sent / pairs / 1024:.0f} KiB/pair (at most: shards still open at the end count whole)")
    local_http_verdict(rates)


if __name__ == "__main__":
    main()
