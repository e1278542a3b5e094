"""Loader throughput and profile helpers (imported by benchmarks/train_throughput.py).

Run alone: ``.venv/bin/python benchmarks/loader.py [--clips 48 --frames 100 --audio-dim 9216]``
writes synthetic shards of the given size to a temporary folder and prints
windows/s for 0..N workers and the top entries of a profile of the stream.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from shards.dataset import TrainWindows  # noqa: E402
from shards.loader import WindowLoader, make_loader  # noqa: E402
from shards.sources import shard_urls  # noqa: E402
from shards.windows import WindowSpec, collate  # noqa: E402


def loader_throughput(loader: WindowLoader, batches: int = 20, warmup: int = 2) -> dict:
    """Windows/s and batches/s of ``loader`` over ``batches`` batches after ``warmup`` (worker start-up)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    windows = 0
    start = time.perf_counter()
    for batch in itertools.islice(it, batches):
        windows += len(batch["key"])
    seconds = time.perf_counter() - start
    return {"windows_per_s": windows / seconds, "batches_per_s": batches / seconds, "seconds": seconds,
            "batch_size": loader.batch_size, "num_workers": loader.num_workers}


def local_http_verdict(rates: dict[str, float], note: str = "2x") -> None:
    """Print local disk / local HTTP of ``rates`` ("local disk", "http 127.0.0.1") and exit 1 past 2x."""
    ratio = rates["local disk"] / rates["http 127.0.0.1"]
    print(f"  local / http = {ratio:.2f}x ({'within' if ratio <= 2.0 else 'NOT within'} {note})")
    if ratio > 2.0:
        sys.exit(1)


def add_shard_options(parser: argparse.ArgumentParser, batches: int) -> None:
    """The size of the synthetic shard set and of the batches, shared by the loader benchmarks."""
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--dim-w", type=int, default=512)
    parser.add_argument("--audio-dim", type=int, default=9216)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=batches)


def write_shards(folder: str, args: argparse.Namespace) -> float:
    """Synthetic latent shards of ``args``'s size in ``folder`` (tests/shard_factory.py); returns the seconds."""
    sys.path.insert(0, str(REPO / "tests"))
    from shard_factory import make_shards

    t0 = time.perf_counter()
    make_shards(folder, {"train": args.clips}, frames=args.frames, dim_w=args.dim_w, audio_dim=args.audio_dim,
                clips_per_shard=8)
    return time.perf_counter() - t0


def profile_stream(urls: list[str], spec: WindowSpec, windows: int = 512, batch_size: int = 8,
                   top: int = 15, **dataset_kwargs) -> str:
    """cProfile of the in-process stream + collate (what each worker does), top entries by own time."""
    dataset = TrainWindows(urls, spec, **dataset_kwargs)
    profiler = cProfile.Profile()
    profiler.enable()
    stream = iter(dataset)
    for _ in range(windows // batch_size):
        collate(list(itertools.islice(stream, batch_size)))
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shard_options(parser, batches=40)
    parser.add_argument("--max-workers", type=int, default=2)
    args = parser.parse_args()

    spec = WindowSpec()
    with tempfile.TemporaryDirectory() as folder:
        seconds = write_shards(folder, args)
        print(f"wrote {args.clips} clips x {args.frames} frames (D={args.dim_w}, A={args.audio_dim}) "
              f"in {seconds:.1f}s")
        urls = shard_urls(folder, "train")
        for workers in range(args.max_workers + 1):
            loader = make_loader(urls, spec, args.batch_size, num_workers=workers, seed=0)
            r = loader_throughput(loader, args.batches)
            print(f"workers={workers}: {r['windows_per_s']:.0f} windows/s ({r['batches_per_s']:.1f} batches/s)")
        print(profile_stream(urls, spec, windows=args.batches * args.batch_size, batch_size=args.batch_size))


if __name__ == "__main__":
    main()
