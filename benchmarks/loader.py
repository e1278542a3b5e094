"""Loader throughput and profile helpers (imported by benchmarks/train_throughput.py).

Run alone: ``.venv/bin/python benchmarks/loader.py [--clips 48 --frames 100 --audio-dim 9216]``
writes synthetic shards of the given size to a temporary folder and prints
windows/s for 0..N workers, the top entries of a profile of the stream, and, in
the same process, where the windows are cut: host collate against clip records
(``cut="device"``, shards/clip_records.py) with the same workers and batch, the
cut made here in the main process and counted in the time, and the bytes a
batch carries from the workers each way (``--compare-only`` runs just that).
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
import torch  # noqa: E402

from shards.clip_records import record_bytes  # noqa: E402
from shards.loader import WindowLoader, make_loader  # noqa: E402
from shards.sources import shard_urls  # noqa: E402
from shards.windows import WindowSpec, collate  # noqa: E402


def _finished_here(loader: WindowLoader, sizes: list[int], finish: bool = True):
    """The loader's batches finished in this process (clip records cut here), their shipped bytes noted."""
    for batch in loader:
        sizes.append(record_bytes(batch))
        yield loader.finish(batch) if finish else batch


def loader_throughput(loader: WindowLoader, batches: int = 20, warmup: int = 2,
                      device: torch.device | None = None, finish: bool = True) -> dict:
    """Windows/s and batches/s of ``loader`` over ``batches`` batches after ``warmup`` (worker start-up).

    Every batch is finished as the trainer finishes it (``loader.finish``: clip records are cut): with
    ``device``, through trainer/device_feed.py's DeviceFeed, which copies and cuts on CUDA in its side
    stream one batch ahead, synchronised before the clock stops; without, here in the main process
    (``finish=False``: not at all, the rate of the workers' output alone)."""
    sizes: list[int] = []
    if device is None:
        it = _finished_here(loader, sizes, finish)
    else:
        from trainer.device_feed import DeviceFeed

        it = iter(DeviceFeed(loader, device))
    for _ in range(warmup):
        next(it)
    windows = 0
    start = time.perf_counter()
    for batch in itertools.islice(it, batches):
        windows += len(batch["key"])
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"windows_per_s": windows / seconds, "batches_per_s": batches / seconds, "seconds": seconds,
            "batch_size": loader.batch_size, "num_workers": loader.num_workers,
            "bytes_per_batch": sum(sizes[warmup:]) / max(1, len(sizes) - warmup) if sizes else None}


# (label, cut, whether the cut is made here and timed)
CUT_RUNS = (("host", "host", True), ("device", "device", True), ("records", "device", False))


def compare_cuts(urls: list[str], spec: WindowSpec, batch_size: int, workers: int, batches: int,
                 repeats: int = 2, **dataset_kwargs) -> dict[str, dict]:
    """Host collate, clip records + the cut in this process, and clip records alone (on CUDA the cut runs on
    the GPU instead), same workers and batch; the runs alternate ``repeats`` times (a shared machine's load
    falls on all) and each keeps its best rate."""
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for label, cut, finish in CUT_RUNS:
            loader = make_loader(urls, spec, batch_size, num_workers=workers, seed=0, pin_memory=False, cut=cut,
                                 **dataset_kwargs)
            r = loader_throughput(loader, batches, finish=finish)
            if label not in best or r["windows_per_s"] > best[label]["windows_per_s"]:
                best[label] = r
    return best


def print_cut_comparison(best: dict[str, dict]) -> None:
    host = best["host"]
    what = {"host": "collate in the workers", "device": "records, cut here", "records": "records, no cut"}
    for label, r in best.items():
        print(f"  {label:8s} ({what[label]:22s}): {r['windows_per_s']:6.0f} windows/s "
              f"({r['windows_per_s'] / host['windows_per_s']:.2f}x host), {r['bytes_per_batch'] / 2**20:6.1f} MiB "
              f"a batch from the workers ({r['bytes_per_batch'] / host['bytes_per_batch']:.2f}x host)")


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
    parser.add_argument("--compare-only", action="store_true", help="only the host / device cut comparison")
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs of each cut (best kept)")
    args = parser.parse_args()

    spec = WindowSpec()
    with tempfile.TemporaryDirectory() as folder:
        seconds = write_shards(folder, args)
        print(f"wrote {args.clips} clips x {args.frames} frames (D={args.dim_w}, A={args.audio_dim}) "
              f"in {seconds:.1f}s")
        urls = shard_urls(folder, "train")
        for workers in range(0 if args.compare_only else args.max_workers + 1):
            loader = make_loader(urls, spec, args.batch_size, num_workers=workers, seed=0)
            r = loader_throughput(loader, args.batches)
            print(f"workers={workers}: {r['windows_per_s']:.0f} windows/s ({r['batches_per_s']:.1f} batches/s)")
        if not args.compare_only:
            print(profile_stream(urls, spec, windows=args.batches * args.batch_size, batch_size=args.batch_size))
        print(f"where windows are cut ({args.max_workers} workers, batch {args.batch_size}, {args.batches} batches, "
              f"best of {args.repeats}; pin_memory off: without CUDA there is no pinned copy to measure):")
        print_cut_comparison(compare_cuts(urls, spec, args.batch_size, args.max_workers, args.batches, args.repeats))


if __name__ == "__main__":
    main()
