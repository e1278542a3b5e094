"""FMT forward+backward throughput: samples/s at tiny and paper sizes, fp32 and bf16 autocast.

Prints one row per (preset, precision) with the parameter count, and the ratio
of each row to fp32 at the same size (measured in this process).
    .venv/bin/python benchmarks/fmt_step.py [--device cuda] [--batch 8] [--iters 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from float.config import get_preset  # noqa: E402
from float.loss import rectified_flow_loss  # noqa: E402
from float.model import FloatMotionModel, count_parameters  # noqa: E402


def make_batch(cfg, B, device):
    N, P, D, A = cfg.num_frames, cfg.num_prev_frames, cfg.dim_w, cfg.audio_input_dim
    return {
        "motion": torch.randn(B, N, D, device=device),
        "prev_motion": torch.randn(B, P, D, device=device),
        "prev_mask": torch.ones(B, P, device=device),
        "audio": torch.randn(B, N, A, device=device),
        "prev_audio": torch.randn(B, P, A, device=device),
        "ref_motion": torch.randn(B, D, device=device),
        "emotion": torch.softmax(torch.randn(B, 7, device=device), -1),
    }


def samples_per_second(model, batch, precision, iters, device) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    use_bf16 = precision == "bf16"

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = rectified_flow_loss(model, batch)["total"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return iters * batch["motion"].shape[0] / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--presets", default="tiny,paper")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    print(f"device {device}  batch {args.batch}  iters {args.iters}")
    print(f"{'preset':8} {'precision':9} {'params':>12} {'samples/s':>10} {'vs fp32':>8}")
    for name in args.presets.split(","):
        cfg = get_preset(name)
        model = FloatMotionModel(cfg).to(device).train()
        batch = make_batch(cfg, args.batch, device)
        base = None
        for precision in ("fp32", "bf16"):
            if precision == "bf16" and device.type != "cuda":
                # CPU autocast to bf16 says nothing about the GPU runs the precision is for
                print(f"{name:8} {precision:9} {'':>12} {'skipped: CPU':>10}")
                continue
            sps = samples_per_second(model, batch, precision, args.iters, device)
            base = base or sps
            print(f"{name:8} {precision:9} {count_parameters(model):>12,} {sps:>10.2f} {sps / base:>7.2f}x")
        del model, batch


if __name__ == "__main__":
    main()
