"""`--profile-steps A:B`: torch.profiler over training steps A+1 to B of the real loop, written to <run>/profile/.

Issue 16 asks to measure the real step before removing anything from it. The profiled window is the loop as
it runs: waiting for data, the copy onto the device, forward, backward, the update, EMA and tallies. Three files:

- ``ops.txt``: the top operators by their own time, on the device on a GPU, on the CPU otherwise;
- ``summary.json``: the steps, their wall seconds, and on a GPU the seconds the device was busy and their share
  of the wall time (the union of its kernels and copies); the top operators as numbers;
- ``trace.json.gz``: the Chrome / Perfetto trace (chrome://tracing, ui.perfetto.dev).

A busy share near 1 means the host keeps the card fed; well below 1, the card waits for Python, the loader or a
host read, and the trace shows which. Profiling slows the steps it records (the throughput logged for that window
is not the run's). Only the main process profiles. A failure to profile is logged and training goes on:
profiling is a diagnosis, not part of the run.
"""
from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path

import torch

TOP = 25


def parse_profile_steps(text: str | None) -> tuple[int, int] | None:
    """"20:25" -> (20, 25): steps 21 to 25 are recorded; "" or None -> None. ValueError naming the option."""
    if not text:
        return None
    try:
        first, last = (int(part) for part in str(text).split(":"))
    except ValueError:
        raise ValueError(f"--profile-steps {text!r}: give A:B, two step numbers (e.g. 20:25)") from None
    if not 0 <= first < last:
        raise ValueError(f"--profile-steps {text!r}: need 0 <= A < B (steps A+1 to B are profiled)")
    return first, last


def device_busy_seconds(profiler, device: torch.device) -> float | None:
    """Seconds of the profiled window in which the device ran a kernel or a copy (overlaps counted once); None on
    a CPU or when no device event was recorded."""
    if device.type != "cuda":
        return None
    spans = []
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            spans.append((event.time_range.start, event.time_range.end))
    if not spans:  # none recorded (a profiler build without the device's activity): unknown, not idle
        return None
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(spans):  # microseconds; merge overlapping spans
        if end <= reach:
            continue
        busy += end - max(start, reach)
        reach = end
    return busy / 1e6


def top_ops(profiler, device: torch.device) -> tuple[str, list[dict]]:
    """(the table, its rows as numbers) of the operators with the most own time (device time on a GPU)."""
    averages = profiler.key_averages()
    on_device = device.type == "cuda"
    key = "self_device_time_total" if on_device else "self_cpu_time_total"
    table = averages.table(sort_by=key, row_limit=TOP)
    rows = sorted(averages, key=lambda e: getattr(e, key, 0.0), reverse=True)[:TOP]
    return table, [{"name": e.key, "calls": e.count, "self_ms": getattr(e, key, 0.0) / 1e3,
                    "cpu_total_ms": e.cpu_time_total / 1e3} for e in rows]


class StepProfiler:
    """Start before step ``first`` + 1, stop after step ``last``; ``before(step)`` / ``after(step)`` bracket each."""

    def __init__(self, steps: tuple[int, int] | None, run_dir: Path, device: torch.device, enabled: bool, log):
        self.steps = steps if enabled else None
        self.folder, self.device, self.log = Path(run_dir) / "profile", device, log
        self.profiler = None
        self.started_at, self.first_step = 0.0, 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def before(self, step: int) -> None:
        if self.steps is None or self.profiler is not None or not self.steps[0] <= step < self.steps[1]:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        try:
            self._sync()
            self.profiler = torch.profiler.profile(activities=activities, record_shapes=False)
            self.profiler.__enter__()
        except Exception as error:  # a diagnosis must not end the run
            self.log(f"warning: --profile-steps: the profiler did not start ({error}); training goes on")
            self.steps, self.profiler = None, None
            return
        self.started_at, self.first_step = time.perf_counter(), step

    def after(self, step: int) -> None:
        if self.profiler is None or step < self.steps[1]:
            return
        profiler, self.profiler, self.steps = self.profiler, None, None
        try:
            self._sync()
            wall = time.perf_counter() - self.started_at
            profiler.__exit__(None, None, None)
            self._write(profiler, step, wall)
        except Exception as error:
            self.log(f"warning: --profile-steps: the profile was not written ({type(error).__name__}: {error})")

    def close(self) -> None:
        """End a recording the run left open (it stopped inside the window): nothing is written."""
        if self.profiler is not None:
            profiler, self.profiler = self.profiler, None
            try:
                profiler.__exit__(None, None, None)
            except Exception:  # the run's own error, if any, is the one to report
                pass

    def _write(self, profiler, step: int, wall: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        table, rows = top_ops(profiler, self.device)
        busy = device_busy_seconds(profiler, self.device)
        summary = {"steps": [self.first_step + 1, step], "wall_s": wall, "device": str(self.device),
                   "device_busy_s": busy, "device_busy_share": busy / wall if busy is not None else None,
                   "top_ops": rows}
        (self.folder / "ops.txt").write_text(table)
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=2))
        raw = self.folder / "trace.json"
        profiler.export_chrome_trace(str(raw))
        with open(raw, "rb") as source, gzip.open(self.folder / "trace.json.gz", "wb") as target:
            shutil.copyfileobj(source, target)
        raw.unlink()
        share = f", device busy {100 * summary['device_busy_share']:.0f} % of it" if busy is not None else ""
        self.log(f"profile of steps {self.first_step + 1}-{step}: {wall:.2f} s{share}; "
                 f"top op {rows[0]['name'] if rows else '-'}; written to {self.folder}/")
