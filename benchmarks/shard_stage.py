"""Offline-stage throughput: the whole stage vs decode-resample-crop alone, and encoder speed.

1. decode + resample to 25 fps + face crop (``prepare_clip``) alone, in this process, on the clips;
2. the whole stage (``run_shards``: workers decode/crop, the main process encodes and writes
   shards) on the same clips, into a temporary folder;
printed as frames/s each and their ratio (whole / prepare-only: how much encoding and writing
cost on top of decoding). 3. with ``--encoder-sizes``, or on a GPU by default, the motion
encoder alone (frames/s per crop size and precision) and random-weight wav2vec2-base on 3 s
clips.

    .venv/bin/python benchmarks/shard_stage.py [--input DIR] [--input-size 128] [--workers 1]
        [--device auto] [--encoder-sizes 128,512]

Without --input it makes a small synthetic RAVDESS set (2 actors x 2 emotions, 640x360 29.97 fps).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from preprocess.clip import prepare_clip  # noqa: E402
from preprocess.discover import discover  # noqa: E402
from preprocess.pipeline import run_shards  # noqa: E402
from preprocess.settings import ShardSettings  # noqa: E402
from preprocess.synthetic import make_synthetic_ravdess  # noqa: E402


def prepare_only(sources, input_size: int, crop: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    frames = sum(len(prepare_clip(src, input_size, crop=crop).frames) for src in sources)
    return frames, time.perf_counter() - t0


def whole_stage(root: Path, input_size: int, crop: str, workers: int, device: str, audio: str) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = run_shards(ShardSettings(input=root, out=Path(out), input_size=input_size, crop=crop,
                                           workers=workers, device=device, audio_features=audio, progress=False),
                             log=lambda m: None)
        return summary.frames_written, time.perf_counter() - t0


def encoder_speed(sizes, device: str, batch: int, iters: int) -> None:
    import torch

    from preprocess.encode import build_encoder

    for size in sizes:
        enc = build_encoder(size, "mel", device=device, batch_size=batch, log=lambda m: None)
        frames = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
        enc.encode_frames(frames)  # warm-up (cudnn autotune, allocations)
        if enc.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            enc.encode_frames(frames)
        if enc.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(f"motion encoder {size:>4}px {enc.motion_precision} on {enc.device.type}, batch {batch}: "
              f"{batch * iters / dt:8.1f} frames/s")
    enc = build_encoder(sizes[0], "wav2vec2", device=device, log=lambda m: None)
    audio = (0.1 * np.random.default_rng(0).normal(size=3 * 16000)).astype(np.float32)
    enc.encode_audio(audio, 75)
    t0 = time.perf_counter()
    for _ in range(iters):
        enc.encode_audio(audio, 75)
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / iters
    print(f"wav2vec2-base (random weights) on {enc.device.type}: {dt * 1000:.0f} ms per 3 s clip "
          f"({75 / dt:.0f} frames/s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path, help="clip folder (RAVDESS or generic); default: a small synthetic set")
    p.add_argument("--input-size", type=int, default=128, help="crop side (tiny preset: 128)")
    p.add_argument("--crop", default="auto")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--audio-features", default="mel")
    p.add_argument("--encoder-sizes", default=None,
                   help="comma-separated crop sizes for the encoder-only timing (default: 128,512 on CUDA, none on CPU)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--skip-stage", action="store_true", help="only time the encoders")
    args = p.parse_args()

    import torch

    print(f"torch {torch.__version__}, cuda: {torch.cuda.is_available()}, cpu threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.input or make_synthetic_ravdess(Path(tmp) / "synthetic", actors=(1, 2), statements=(1,),
                                                    emotions=(1, 3))
        if not args.skip_stage:
            sources, _ = discover(root)
            n_prep, t_prep = prepare_only(sources, args.input_size, args.crop)
            n_all, t_all = whole_stage(root, args.input_size, args.crop, args.workers, args.device,
                                       args.audio_features)
            print(f"{len(sources)} clips, {n_prep} frames, crop {args.crop}, {args.input_size}px")
            print(f"decode+resample+crop alone (1 process): {n_prep / t_prep:8.1f} frames/s ({t_prep:.1f} s)")
            print(f"whole stage ({args.workers} worker(s), {args.audio_features}): "
                  f"{n_all / t_all:8.1f} frames/s ({t_all:.1f} s)")
            print(f"ratio whole / decode-crop-only: {(n_all / t_all) / (n_prep / t_prep):.3f}")
    sizes = args.encoder_sizes
    if sizes is None and torch.cuda.is_available():
        sizes = "128,512"
    if sizes:
        encoder_speed([int(s) for s in sizes.split(",")], args.device, args.batch, args.iters)


if __name__ == "__main__":
    main()
