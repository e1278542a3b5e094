"""Where the time between the bare FMT step and the real trainer's step goes.

Measured in one process on one device, with the same model, batch and precision:
  bare  the training step alone (autocast, backward, clip, AdamW, EMA) on batches already on the device,
        the optimizer built as the trainer builds it (trainer/run.py make_optimizer);
  real  `floatctl train` itself (trainer.train_fmt.train: its loader, loop, logging; no validation,
        samples or checkpoints but the final one), timed by the run's own samples_per_s log;
and a profile of the real run: the share of wall time in the loop's own pieces (data wait, the step's
forward/backward, the optimizer update, EMA, host reads), from Python's cProfile (cumulative seconds of
named functions; on CUDA read the torch.profiler trace instead: host reads cost nothing on a CPU).

    .venv/bin/python benchmarks/step_profile.py [--batch-size 8] [--steps 60] [--device cpu] [--scale tiny]
"""
from __future__ import annotations

import argparse
import cProfile
import contextlib
import io
import itertools
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "benchmarks")]
sys.path.insert(1, str(REPO / "tests"))

from shard_factory import make_shards  # noqa: E402  tests/shard_factory.py

from float.audio_encoder import Wav2Vec2Features  # noqa: E402
from float.config import get_preset  # noqa: E402
from float.loss import rectified_flow_loss  # noqa: E402
from float.model import FloatMotionModel  # noqa: E402
from shards.loader import make_loader  # noqa: E402
from shards.sources import shard_urls  # noqa: E402
from shards.windows import WindowSpec  # noqa: E402
from trainer.ema import EMA  # noqa: E402
from trainer.logging import read_metrics  # noqa: E402
from trainer.run import make_optimizer, resolve_precision, to_device  # noqa: E402
from trainer.settings import TrainSettings  # noqa: E402
from trainer.train_fmt import train  # noqa: E402

# The loop's pieces whose cumulative time the profile reports: (file fragment, function name) as cProfile names them.
PIECES = {"data (loader + copy)": (("shards/loader.py", "__iter__"), ("trainer/run.py", "to_device")),
          "forward (loss)": (("trainer/train_fmt.py", "loss"),),
          "backward": (("torch/_tensor.py", "backward"),),
          "clip (grad norm)": (("torch/nn/utils/clip_grad.py", "clip_grad_norm_"),),
          "optimizer": (("torch/optim/adamw.py", "step"), ("torch/optim/adam.py", "step")),
          "EMA": (("trainer/ema.py", "update"),),
          "step seeds": (("trainer/run.py", "step_seed"),),
          "host reads (item, tolist)": (("~", "<method 'item' of 'torch._C.TensorBase' objects>"),
                                        ("~", "<method 'tolist' of 'torch._C.TensorBase' objects>")),
          "logging": (("trainer/loop.py", "_log_window"), ("trainer/logging.py", "advance"))}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_rate(cfg, batches: list[dict], device: torch.device, precision: str, steps: int) -> float:
    torch.manual_seed(0)
    model = FloatMotionModel(cfg).to(device).train()
    ema, optimizer = EMA(model, 0.9999), make_optimizer(model.parameters(), 1e-4, 0.0)
    amp_dtype, _ = resolve_precision(precision, device)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = rectified_flow_loss(model, batch)["total"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update(model)

    feed = itertools.cycle(batches)
    for _ in range(3):
        step(next(feed))
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(next(feed))
    sync(device)
    return steps * batches[0]["motion"].shape[0] / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--scale", choices=("tiny", "paper"), default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: spinning OpenMP threads are slow on a shared machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    scale = args.scale or ("paper" if device.type == "cuda" else "tiny")
    w2v = Wav2Vec2Features.random(seed=0, size="tiny" if scale == "tiny" else "base")
    cfg = get_preset(scale, audio_input_dim=w2v.feature_dim(all_layers=True))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        make_shards(folder, {"train": 32}, frames=100, dim_w=cfg.dim_w, audio_dim=cfg.audio_input_dim,
                    clips_per_shard=8)
        loader = make_loader(shard_urls(folder, "train"), WindowSpec.from_config(cfg), args.batch_size, 0,
                             motion_dim=cfg.dim_w, audio_dim=cfg.audio_input_dim)
        batches = [to_device(b, device) for b in itertools.islice(iter(loader), 4)]
        bare = bare_rate(cfg, batches, device, args.precision, args.steps)

        log_step = max(1, args.steps // 3)
        settings = TrainSettings(data_root=str(folder), out=str(Path(tmp) / "run"), preset=scale,
                                 steps=args.steps + log_step, batch_size=args.batch_size, lr=1e-4,
                                 log_step=log_step, val_step=0, sample_step=0, save_step=0, progress=False,
                                 tensorboard=False, device=args.device, precision=args.precision,
                                 normalize_motion="off", num_workers=0 if device.type == "cpu" else -1)
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            profiler.runcall(train, settings, samples_hook=lambda path: None)
        wall = time.perf_counter() - t0
        rows = read_metrics(Path(tmp) / "run", "train")[1:]  # the first window holds the warm-up
        real = sum(r["samples_per_s"] for r in rows) / len(rows)
        wait = sum(r["data_wait_fraction"] for r in rows) / len(rows)

    stats = pstats.Stats(profiler, stream=io.StringIO()).stats
    print(f"device {device}, scale {scale}, batch {args.batch_size}, {args.steps} timed steps, "
          f"torch threads {torch.get_num_threads()}")
    print(f"bare step                 {bare:9.1f} samples/s")
    print(f"real `floatctl train`     {real:9.1f} samples/s   real / bare = {real / bare:.2f}; "
          f"data wait {100 * wait:.1f} %")
    print(f"profile of the real run ({wall:.1f} s wall, set-up included), cumulative seconds:")
    for piece, names in PIECES.items():
        seconds = sum(stat[3] for (file, _, name), stat in stats.items()
                      if any(fragment in file and name == wanted for fragment, wanted in names))
        print(f"    {piece:<22} {seconds:7.2f} s  {100 * seconds / wall:5.1f} %")


if __name__ == "__main__":
    main()
