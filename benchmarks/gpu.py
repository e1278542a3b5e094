"""`make bench-gpu`: the real trainers and the sampler on a GPU, against the bare steps and issue 16's targets.

One run, in one process, on synthetic data it makes itself (meant to take under 5 minutes on one H100/H200;
not yet run on one when this was written), in this order:
  stage 1  the real `floatctl train-motion` at 512 px, batch 32 (L1 + structure loss, bf16) vs its bare step;
           which batch fits 80 and 141 GB cards (peaks at batches 8 and 16, the line through them, and one
           step at this card's largest batch by that line, run to check it).
  FMT      the real `floatctl train --preset paper --compile` at batch 256 (loop, loader, EMA, logging,
           checkpoint cadence) vs the bare compiled step of the same model and batch (autocast bf16,
           backward, fused AdamW on random batches already on the GPU); the shard loader alone.
  sample   `floatctl sample CKPT --audio 10s.wav --image P.png` end to end (audio features, FMT, decoder, mp4)
           with the checkpoint the FMT row wrote: the new path (guidance in one batched pass, bf16 decoder on
           CUDA, 50 frames a decoder pass, mp4 encoded during decoding) against the old settings (fp32 decoder,
           16 frames a pass, mp4 after decoding) in the same process; its decoding frames/s (decoder + mp4),
           and the decoder alone at 512 px in fp32 and bf16.
Both real training runs get one more logged window after the timed ones, whose first steps are recorded with
torch.profiler (`--profile-steps`, trainer/step_profiler.py; that window is left out of the figures): the
profile rows give the device's busy share and the top operators, and --profile-out keeps the files.
It prints samples/s, the share of time waiting for data (as the trainers log data_wait_fraction), peak
memory (torch.cuda.max_memory_allocated), MFU against the card's dense bf16 peak (table below; the FMT's
FLOPs are 6 * parameters * tokens, stage 1's are counted by torch.utils.flop_counter) and names the card.

Without CUDA it says a GPU is needed and exits 0; `--smoke` runs every row at tiny sizes on the CPU (the
figures then mean nothing; the test suite runs it to keep the code working).

A part that fails (out of memory, a missing package) marks its rows FAILED, the others still run, and the
exit status is 1; `--only motion,fmt,sample` reruns some parts (sample needs fmt's checkpoint).

A GPU session runs everything (the CUDA tests, then this) as ONE command, teeing to $OUT when set (its
header says which wheels to carry to a bare H200 image):
    bash benchmarks/gpu_session.sh
    .venv/bin/python benchmarks/gpu.py [--smoke] [--device cuda] [--no-compile] [--only PARTS] [--bare-steps N]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# The repository first (benchmarks/ holds no package of ours), then tests/ and benchmarks/ for the factories.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "benchmarks")]
sys.path[1:1] = [str(REPO / "tests"), str(REPO / "benchmarks")]

import gpu_rows  # noqa: E402  benchmarks/gpu_rows.py

# Dense bf16 tensor peaks in TFLOP/s (no sparsity), by a name fragment of torch.cuda.get_device_name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0}
MOTION_TODAY = 93.0  # pairs/s at 512 px, batch 32, bf16, measured on an H200 (issue 16)

# The rows printed, in order; the test checks each one is there with a figure.
# Stage 1 goes first: it compiles nothing, so its figures are in even if the FMT's compilation runs long.
ROWS = ("card", "stage 1 real train-motion", "stage 1 bare step", "stage 1 real / bare", "stage 1 batch fit",
        "stage 1 profile", "FMT real train", "FMT bare step", "FMT real / bare", "FMT loader alone",
        "FMT loader / real", "FMT profile", "sample end to end", "sample old settings", "sample decoding",
        "decoder alone")
# The parts of a run (--only), each with its rows: a part that fails marks its rows FAILED and the next runs.
SECTIONS = {"motion": ROWS[1:6], "fmt": ROWS[6:12], "sample": ROWS[12:]}


def bf16_peak(name: str) -> float | None:
    """The card's dense bf16 peak in FLOP/s, or None when its name is not in the table."""
    for fragment, tflops in sorted(BF16_PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if fragment.lower() in name.lower():
            return tflops * 1e12
    return None


def mfu(flops_per_s: float, peak: float | None) -> str:
    return f"MFU {100 * flops_per_s / peak:.1f} %" if peak else "MFU n/a (no bf16 peak known for this device)"


def mem(gib: float | None) -> str:
    return f"peak {gib:.1f} GiB" if gib is not None else "peak memory n/a (CPU)"


class Table:
    """what | measured | target, printed as each row is measured and again at the end."""

    def __init__(self, smoke: bool):
        self.smoke, self.rows = smoke, []

    def add(self, what: str, measured: str, target: str = "", met: bool | None = None) -> None:
        verdict = "" if met is None or self.smoke else ("  [met]" if met else "  [NOT met]")
        self.rows.append((what, measured, target + verdict))
        print(f"{what:<27} {measured}" + (f"   | target {target}{verdict}" if target else ""), flush=True)

    def fill(self, rows, why: str) -> None:
        """Every row of ``rows`` not printed yet, with ``why`` (a part failed or was not run)."""
        done = {row[0] for row in self.rows}
        for what in rows:
            if what not in done:
                self.add(what, why)

    def print(self) -> None:
        print("\n| what | measured | target |\n| --- | --- | --- |")
        for what, measured, target in self.rows:
            print(f"| {what} | {measured} | {target} |")


def fmt_rows(table: Table, work: Path, sizes: gpu_rows.Sizes, device: torch.device, peak: float | None,
             bare_steps: int, profile_out: Path | None) -> Path:
    shards = work / "latents"
    cfg = gpu_rows.make_latent_shards(shards, sizes)
    real = gpu_rows.real_fmt(shards, work / "run-fmt", sizes, device)
    per_sample = gpu_rows.fmt_flops_per_sample(cfg, real["parameters"])
    table.add("FMT real train", f"{real['samples_per_s']:.1f} samples/s at batch {sizes.fmt_batch} "
              f"({real['parameters'] / 1e6:.1f} M params, {real['precision']}, compile {sizes.compile}, "
              f"{real['workers']} workers), data wait {100 * real['data_wait']:.1f} %, {mem(real['peak_gib'])}, "
              f"{mfu(real['samples_per_s'] * per_sample, peak)}", "data wait < 5 %", real["data_wait"] < 0.05)
    bare = gpu_rows.bare_fmt(cfg, sizes, device, bare_steps)
    table.add("FMT bare step", f"{bare['samples_per_s']:.1f} samples/s, {mem(bare['peak_gib'])}, "
              f"{mfu(bare['samples_per_s'] * per_sample, peak)}")
    ratio = real["samples_per_s"] / bare["samples_per_s"]
    table.add("FMT real / bare", f"{ratio:.2f}x", ">= 0.85x at batch 256 (H200: >= 6,400 samples/s)", ratio >= 0.85)
    alone = gpu_rows.loader_alone(shards, cfg, sizes, real["workers"], device)
    more = min(2 * real["workers"], (os.cpu_count() or 2) - 2)  # would more workers feed it faster?
    extra = (f"; {gpu_rows.loader_alone(shards, cfg, sizes, more, device):.1f} with {more} workers"
             if more > real["workers"] else "")
    table.add("FMT loader alone", f"{alone:.1f} windows/s ({real['workers']} workers, as the real run{extra})")
    table.add("FMT loader / real", f"{alone / real['samples_per_s']:.2f}x", ">= 1.2x", alone >= 1.2 * real["samples_per_s"])
    table.add("FMT profile", profile_text(real["profile"]))
    keep_profile(work / "run-fmt", "fmt", profile_out, trace=True)
    return real["checkpoint"]


def profile_text(summary: dict | None) -> str:
    """The real run's --profile-steps window in a line: its steps, wall time, the device's busy share, top ops."""
    if summary is None:
        return "no profile written (see the run's log)"
    first, last = summary["steps"]
    busy = summary["device_busy_share"]
    share = (f"device busy {100 * busy:.0f} % of it" if busy is not None else
             "no device timeline" + (" (CPU)" if summary["device"] == "cpu" else " recorded"))
    total = sum(op["self_ms"] for op in summary["top_ops"]) or 1.0
    ops = ", ".join(f"{op['name']} {100 * op['self_ms'] / total:.0f} %" for op in summary["top_ops"][:4])
    return f"steps {first}-{last} of the real run: {summary['wall_s']:.2f} s, {share}; top own time: {ops}"


def keep_profile(run_dir: Path, name: str, out: Path | None, trace: bool) -> None:
    """Copy the run's profile files to ``out`` (--profile-out) as <name>_profile_<file> (flat: $OUT's limits)."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    for file in ("ops.txt", "summary.json") + (("trace.json.gz",) if trace else ()):
        source = run_dir / "profile" / file
        if source.is_file():
            shutil.copyfile(source, out / f"{name}_profile_{file}")


def motion_rows(table: Table, work: Path, sizes: gpu_rows.Sizes, device: torch.device, peak: float | None,
                bare_steps: int, profile_out: Path | None) -> None:
    crops = work / "crops"
    gpu_rows.make_crops(crops, sizes)
    cfg = gpu_rows.motion_config(sizes)
    per_pair = gpu_rows.motion_step_flops(cfg, device)
    real = gpu_rows.real_motion(crops, work / "run-motion", sizes, device)
    goal = 1.5 * MOTION_TODAY
    table.add("stage 1 real train-motion", f"{real['pairs_per_s']:.1f} pairs/s at {sizes.motion_size} px, batch "
              f"{sizes.motion_batch}, data wait {100 * real['data_wait']:.1f} %, {mem(real['peak_gib'])}, "
              f"{mfu(real['pairs_per_s'] * per_pair, peak)}",
              f">= {goal:.1f} pairs/s at 512 px, batch 32 (1.5x {MOTION_TODAY:.0f})", real["pairs_per_s"] >= goal)
    bare = gpu_rows.bare_motion(cfg, sizes, device, bare_steps)
    table.add("stage 1 bare step", f"{bare['pairs_per_s']:.1f} pairs/s, {mem(bare['peak_gib'])}, "
              f"{mfu(bare['pairs_per_s'] * per_pair, peak)}")
    table.add("stage 1 real / bare", f"{real['pairs_per_s'] / bare['pairs_per_s']:.2f}x")
    table.add("stage 1 batch fit", batch_fit_text(gpu_rows.motion_batch_fit(cfg, sizes, device), sizes))
    table.add("stage 1 profile", profile_text(real["profile"]))
    keep_profile(work / "run-motion", "motion", profile_out, trace=False)


def batch_fit_text(fit: dict, sizes: gpu_rows.Sizes) -> str:
    """Which stage-1 batch fits which card: measured peaks at two batches, the line through them, a checked step."""
    b1, b2 = fit["probes"]
    if "peaks" not in fit:
        return (f"bare steps at batches {b1} and {b2} ran ({fit['pairs_per_s'][b2]:.1f} pairs/s); no peak memory "
                f"counter on the CPU, so no batch fit")
    peaks = ", ".join(f"{fit['peaks'][b]:.1f} GiB at batch {b}" for b in (b1, b2))
    cards = ", ".join(f"{card}: batch {batch}" for card, batch in fit["fits"].items())
    checked = fit["checked"]
    check = (f"checked here ({fit['here_gib']:.0f} GiB): batch {fit['checked_batch']} ran, peak "
             f"{checked['peak_gib']:.1f} GiB, {checked['pairs_per_s']:.1f} pairs/s" if checked else
             f"no batch above {b2} ran here")
    return (f"{sizes.motion_size} px, bf16, L1 + structure loss: peak {peaks}; by that line, within "
            f"{100 * gpu_rows.FIT_HEADROOM:.0f} % of the card: {cards}; {check}")


def sample_rows(table: Table, checkpoint: Path, work: Path, sizes: gpu_rows.Sizes, device: torch.device) -> None:
    result = gpu_rows.sample_clip(checkpoint, work, sizes, device)
    new, old = result["new"], result["old"]
    table.add("sample end to end", f"{new['s']:.2f} s for a {sizes.sample_seconds:g} s clip "
              f"({result['frames']} frames, NFE {sizes.sample_nfe}, decoder {new['precision']}, "
              f"{sizes.sample_render_batch} frames a pass, mp4 during decoding, --no-face-checks; first call with "
              f"the checks {new['cold_s']:.2f} s; "
              f"generation + decoding + mp4 alone {new['generate_render_s']:.2f} s), motion {new['motion_fps']:.0f} "
              f"frames/s", "< 2 s for 10 s", new["s"] < 2.0)
    table.add("sample old settings", f"{old['s']:.2f} s (decoder {old['precision']}, "
              f"{gpu_rows.OLD_SAMPLING['render_batch']} frames a pass, mp4 after decoding; generation + decoding + mp4 "
              f"alone {old['generate_render_s']:.2f} s): new / old {old['s'] / max(new['s'], 1e-9):.2f}x faster")
    table.add("sample decoding", f"{new['render_fps']:.1f} frames/s at {sizes.sample_size} px (decoder + mp4; old "
              f"settings {old['render_fps']:.1f})", ">= 600 frames/s at 512 px", new["render_fps"] >= 600)
    fp32 = gpu_rows.decoder_alone(sizes, device, "fp32")
    bf16 = gpu_rows.decoder_alone(sizes, device, "bf16")
    table.add("decoder alone", f"{bf16:.1f} frames/s bf16, {fp32:.1f} fp32 at {sizes.sample_size} px, "
              f"{sizes.sample_render_batch} frames a pass (no mp4)")


def run_section(table: Table, name: str, measure, *args):
    """measure(*args), or None when it raised: the traceback goes to stderr, the part's rows say FAILED."""
    try:
        return measure(*args)
    except Exception as error:  # one part's failure must not cost the others' figures
        traceback.print_exc()
        first = (str(error).strip().splitlines() or [""])[0][:300]
        table.fill(SECTIONS[name], f"FAILED: {type(error).__name__}: {first}")
        return None


def sections(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(SECTIONS)} (comma-separated)")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="every row at tiny sizes on the CPU (tests the code only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-compile", action="store_true", help="neither the real run nor the bare step compiled")
    p.add_argument("--only", type=sections, default=list(SECTIONS),
                   help="the parts to run, comma-separated: motion, fmt, sample (sample needs fmt's checkpoint)")
    p.add_argument("--bare-steps", type=int, default=None, help="timed bare steps [default: 20, smoke 2]")
    p.add_argument("--profile-out", type=Path, default=None,
                   help="copy the real runs' torch.profiler files here (FMT: top ops, summary, trace; stage 1: "
                        "top ops, summary)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda" and not args.smoke:
        print("benchmarks/gpu.py measures a CUDA GPU and none is available here: nothing measured. "
              "Run it on a CUDA machine, or with --smoke to check the code at tiny sizes on the CPU.")
        return 0
    sizes = gpu_rows.SMOKE if args.smoke else gpu_rows.GPU
    if args.no_compile:
        sizes = dataclasses.replace(sizes, compile=False)
    bare_steps = args.bare_steps or (2 if args.smoke else 20)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = bf16_peak(name) if device.type == "cuda" else None
    table = Table(args.smoke)
    table.add("card", f"{name}, torch {torch.__version__}, bf16 peak "
              + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown") + (" (SMOKE: tiny sizes)" if args.smoke else ""))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        checkpoint = None
        if "motion" in args.only:
            run_section(table, "motion", motion_rows, table, work, sizes, device, peak, bare_steps,
                        args.profile_out)
        if "fmt" in args.only:
            checkpoint = run_section(table, "fmt", fmt_rows, table, work, sizes, device, peak, bare_steps,
                                     args.profile_out)
        if "sample" in args.only and checkpoint is not None:
            run_section(table, "sample", sample_rows, table, checkpoint, work, sizes, device)
        elif "sample" in args.only:
            table.fill(SECTIONS["sample"], "not run: it samples the checkpoint of the FMT part, which did not finish")
        for name in SECTIONS:
            if name not in args.only:
                table.fill(SECTIONS[name], "not run (--only)")
    table.print()
    print(f"\n(one run, {time.perf_counter() - start:.0f} s; real rows: the trainers' own logged windows after the "
          f"first, which holds compilation and start-up; MFU: FMT 6 x params x tokens (preceding + current frames), stage 1 "
          f"counted FLOPs; sample: warm calls in this process, the old settings' then the new path's, after a cold "
          f"first call)")
    return 1 if any(measured.startswith("FAILED") for _, measured, _ in table.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
