"""Stage-1 costs: training throughput of the motion auto-encoder, and re-encoding latents from crops.

Measured in one process, on one device, on a small synthetic RAVDESS set made here:
  (1) the full shard stage from video (decode + resample + face crop + encode + write the latent
      shards and the crop shards in the same pass), tiny preset (128 px, ae_width 0.125);
  (2) stage-1 training (``floatctl train-motion`` through ``trainer.train_motion.prepare`` and the
      loop's own ``compute_gradients``), batch 8, timed after one warm-up step, as training pairs/s
      (one pair = a source and a driving frame of one clip, rebuilt into the driving frame):
      default losses (L1 + the weight-free structure loss) and with the adversarial term on, fed by
      the run's own pair loader; and the pair loader alone (far faster = training is not input-bound);
  (3) re-encoding the latents from the crop shards of (1) with the stage-1 checkpoint of (2)
      (``floatctl shards --from-crops --motion-ckpt``), against (1).
Stage times (1) and (3) are wall-clock of ``run_shards`` end to end, encoder set-up included.

    .venv/bin/python benchmarks/stage1.py [--steps 3] [--actors 4] [--emotions 1] [--device auto]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# Python puts this script's folder first on the path, where benchmarks/shard_stage.py would hide the
# preprocess package: drop it and put the repository root first.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "benchmarks")]

from preprocess.pipeline import run_shards  # noqa: E402
from preprocess.settings import ShardSettings, default_workers  # noqa: E402
from preprocess.synthetic import make_synthetic_ravdess  # noqa: E402
from shards.crops import crop_shard_urls, read_crop_manifest  # noqa: E402
from shards.pairs import make_pair_loader  # noqa: E402
from trainer.distributed import init_distributed  # noqa: E402
from trainer.loop import apply_update, compute_gradients, save, set_lr  # noqa: E402
from trainer.settings import MotionSettings  # noqa: E402
from trainer.train_motion import prepare  # noqa: E402


def quiet():
    """The trainer's set-up log goes to stdout; keep the benchmark's table readable."""
    return contextlib.redirect_stdout(io.StringIO())


def shard_stage(settings: ShardSettings) -> tuple[int, float]:
    """(frames written, seconds) of one whole ``run_shards`` call."""
    t0 = time.perf_counter()
    summary = run_shards(settings, log=lambda m: None)
    return summary.frames_written, time.perf_counter() - t0


def loader_rate(loader, batches: int, warmup: int = 2) -> float:
    """Pairs/s of the pair loader alone over ``batches`` batches after ``warmup`` (worker start-up)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    pairs = sum(len(batch["key"]) for batch in itertools.islice(it, batches))
    return pairs / (time.perf_counter() - t0)


def train_step(run, stage, step: int, batches) -> None:
    """One optimizer step as ``trainer.loop.run_loop`` takes it, without its logging and checkpointing."""
    set_lr(run, step)
    losses, grad_norm = compute_gradients(run, stage, step, batches, {"wait": 0.0})
    apply_update(run, stage, step, losses, grad_norm)  # optimizer, EMA, the discriminator's step when on
    float(losses[0])  # waits for CUDA, so the timing is the device's (the loop itself reads at log steps)


def train_rate(run, stage, batches, steps: int) -> float:
    """Training pairs/s over ``steps`` optimizer steps after one warm-up step (allocations, first-call
    overheads; with the discriminator also its first, R1-penalised step)."""
    train_step(run, stage, 0, batches)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        train_step(run, stage, step, batches)
    return steps * run.s.batch_size / (time.perf_counter() - t0)


def motion_settings(crops: Path, out: Path, args, **changes) -> MotionSettings:
    base = dict(data_root=str(crops), out=str(out), preset="tiny", steps=1000, batch_size=args.batch_size,
                device=args.device, num_workers=args.loader_workers, val_step=0, sample_step=0, save_step=0,
                log_step=0, tensorboard=False, progress=False, precision="fp32", seed=0)
    return MotionSettings(**(base | changes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--actors", type=int, default=4, help="synthetic actors (1 val, 1 test, the rest train)")
    p.add_argument("--emotions", default="1", help="RAVDESS emotion codes per actor (one clip each)")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per training row")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--adversarial-weight", type=float, default=0.1)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=default_workers(), help="decoding processes of the shard stage")
    p.add_argument("--loader-workers", type=int, default=0, help="pair loader workers for training")
    p.add_argument("--loader-batches", type=int, default=20)
    args = p.parse_args()

    info = init_distributed(args.device)
    device = info.device
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"cpu threads {torch.get_num_threads()}, shard-stage decode workers {args.workers}, "
          f"pair loader workers {args.loader_workers}", flush=True)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_synthetic_ravdess(tmp / "synthetic", actors=tuple(range(1, args.actors + 1)), statements=(1,),
                                      emotions=tuple(int(e) for e in args.emotions.split(",")))
        # One held-out actor each: the defaults (2/2) would shrink with a warning on a set this small.
        common = dict(preset="tiny", device=args.device, val_actors=1, test_actors=1, progress=False)

        # (1) the full stage from video; it writes <out>-crops in the same pass
        latents = tmp / "latents"
        full_frames, full_s = shard_stage(ShardSettings(input=root, out=latents, workers=args.workers, **common))
        crops = tmp / "latents-crops"
        manifest = read_crop_manifest(crops)
        print(f"(1) full shard stage from video     {full_frames:5d} frames {full_s:7.1f} s "
              f"{full_frames / full_s:8.1f} frames/s  ({manifest['input_size']} px, "
              f"train clips {manifest['splits']['train']['clips']})", flush=True)

        # (2) stage-1 training; the pair loader alone first
        urls = crop_shard_urls(crops, "train", manifest)
        alone = loader_rate(make_pair_loader(urls, args.batch_size, args.loader_workers, seed=0, pairs_per_clip=8,
                                             size=manifest["input_size"]), args.loader_batches)
        print(f"(2) pair loader alone               {alone:8.1f} pairs/s", flush=True)
        variants = [("L1 + structure", {}),
                    (f"+ adversarial x{args.adversarial_weight}", {"adversarial_weight": args.adversarial_weight})]
        precisions = ["fp32"] + (["bf16"] if device.type == "cuda" else [])
        checkpoint = None
        for precision in precisions:
            for name, changes in variants:
                label = f"{name}, {precision}"
                out = tmp / f"run-{len(rows)}"
                with quiet():
                    run, stage = prepare(motion_settings(crops, out, args, precision=precision, **changes), info)
                try:
                    rate = train_rate(run, stage, iter(run.loader), args.steps)
                    if checkpoint is None:  # the first run's weights re-encode the latents in (3)
                        with quiet():
                            checkpoint = save(run, stage, args.steps + 1, final=True)
                finally:
                    run.log.close()
                print(f"    training {label:<30} {rate:8.2f} pairs/s", flush=True)
                rows.append((f"training {label}", f"{rate:.2f} pairs/s; the loader alone is "
                             f"{alone / rate:.0f}x faster ({'not ' if alone > 2 * rate else ''}input-bound)"))
        if device.type != "cuda":
            print("    training bf16 rows                skipped: CPU")
            rows.append(("training bf16", "skipped: CPU"))

        # (3) latents again, from the crop shards, with the stage-1 checkpoint
        re_frames, re_s = shard_stage(ShardSettings(from_crops=crops, motion_ckpt=checkpoint,
                                                    out=tmp / "latents-stage1", **common))
        print(f"(3) re-encode latents from crops    {re_frames:5d} frames {re_s:7.1f} s "
              f"{re_frames / re_s:8.1f} frames/s", flush=True)
    print()
    print(f"{'what':<52} result")
    print(f"{'full shard stage from video':<52} {full_frames / full_s:.1f} frames/s ({full_s:.1f} s)")
    print(f"{'re-encode latents from crop shards':<52} {re_frames / re_s:.1f} frames/s ({re_s:.1f} s); "
          f"{full_s / re_s:.2f}x faster than the full stage (seconds ratio, "
          f"{'same' if re_frames == full_frames else 'different'} frame count)")
    print(f"{'pair loader alone':<52} {alone:.1f} pairs/s")
    for what, result in rows:
        print(f"{what:<52} {result}")
    r1_note = "; lazy R1 (every 16 discriminator steps) only in the warm-up" if args.steps < 16 else ""
    print(f"(one training pair = one source + one driving frame; batch {args.batch_size}; {args.steps} timed "
          f"steps after 1 warm-up step{r1_note})")


if __name__ == "__main__":
    main()
