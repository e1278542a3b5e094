"""benchmarks/gpu.py and benchmarks/gpu_session.sh: --smoke runs every row at tiny sizes on the CPU, the
session script runs the CUDA tests then the benchmark and keeps their output, and without CUDA the full
benchmark says a GPU is needed and measures nothing (exit 0) while the session script stops at its preflight."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"
SESSION = REPO / "benchmarks" / "gpu_session.sh"
NUMBER = re.compile(r"\d+(\.\d+)?")


def run_script(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    # One thread: the tiny models gain nothing from more, and the machine may be busy.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


def rows_of(output: str) -> dict[str, list[str]]:
    """{what: [measured, target]} from the final markdown table."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] not in ("what", "---"):
            rows[cells[0]] = cells[1:]
    return rows


def session(out: Path, **env: str) -> subprocess.CompletedProcess:
    """benchmarks/gpu_session.sh with this Python, CUDA hidden (the CUDA tests skip, the benchmark runs on the CPU)."""
    variables = dict(os.environ, PY=sys.executable, OUT=str(out), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", **env)
    return subprocess.run(["bash", str(SESSION)], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=variables)


def test_session_runs_the_cuda_tests_then_the_smoke_benchmark_with_every_row_and_target(tmp_path):
    """One run covers both: gpu_session.sh's plumbing and `benchmarks/gpu.py --smoke`'s rows."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu import ROWS

    out = tmp_path / "out"
    done = session(out, REQUIRE_CUDA="0", BENCH_ARGS="--smoke --device cpu")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (out / "gpu_session.log").read_text()
    assert "part 1: pytest -m cuda" in log and "part 1 exit 0" in log and "part 2 exit 0" in log
    assert "needs a CUDA GPU" in log  # the CUDA tests were collected and skipped with their reason, not failed
    assert log in done.stdout  # the console shows what the log holds

    rows = rows_of((out / "bench_gpu.md").read_text())
    assert list(rows) == list(ROWS)
    for what, (measured, _) in rows.items():
        assert NUMBER.search(measured), f"{what}: no figure in {measured!r}"
    assert "SMOKE" in rows["card"][0]
    real = float(rows["FMT real train"][0].split()[0])
    wait = float(re.search(r"data wait ([\d.]+) %", rows["FMT real train"][0]).group(1))
    assert real > 0 and 0 <= wait <= 100
    assert float(rows["sample decoding"][0].split()[0]) > 0
    # The new sampling path against the old settings in the same process, and the decoder alone in both precisions.
    assert "decoder fp32" in rows["sample end to end"][0]  # auto is fp32 on the CPU
    assert re.search(r"new / old [\d.]+x faster", rows["sample old settings"][0])
    assert re.search(r"[\d.]+ frames/s bf16, [\d.]+ fp32 at 16 px", rows["decoder alone"][0])
    # The targets stand next to the figures; a smoke run claims none of them met or missed.
    assert ">= 0.85x" in rows["FMT real / bare"][1] and ">= 1.2x" in rows["FMT loader / real"][1]
    assert "1.5x 93" in rows["stage 1 real train-motion"][1] and "< 2 s" in rows["sample end to end"][1]
    assert ">= 600 frames/s" in rows["sample decoding"][1]
    assert "met]" not in log
    # The real runs' profiled window: its steps after the timed windows, the top operators, the files in $OUT.
    assert re.search(r"steps \d+-\d+ of the real run: .*top own time: .*aten::\w+ \d+ %", rows["FMT profile"][0])
    assert "no device timeline (CPU)" in rows["stage 1 profile"][0]
    kept = sorted(p.name for p in out.iterdir() if "_profile_" in p.name)
    assert kept == ["fmt_profile_ops.txt", "fmt_profile_summary.json", "fmt_profile_trace.json.gz",
                    "motion_profile_ops.txt", "motion_profile_summary.json"]


def test_session_without_a_gpu_stops_at_the_preflight_naming_why(tmp_path):
    done = session(tmp_path / "out")
    assert done.returncode == 1
    assert "no CUDA GPU" in done.stdout + done.stderr and "nothing run" in done.stdout
    assert "part 1" not in (tmp_path / "out" / "gpu_session.log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the full benchmark instead")
def test_without_a_gpu_the_full_run_says_so_and_exits_0():
    done = run_script()
    assert done.returncode == 0, done.stderr
    assert "none is available here: nothing measured" in done.stdout
    assert "samples/s" not in done.stdout


def test_bf16_peak_by_card_name():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu import bf16_peak

    assert bf16_peak("NVIDIA H200") == 989e12
    assert bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert bf16_peak("NVIDIA L40S") == 362e12  # not L4's
    assert bf16_peak("Some Future GPU") is None


def test_a_failing_part_marks_its_rows_and_the_others_go_on(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu import SECTIONS, Table, run_section

    table = Table(smoke=True)

    def broken_motion():
        table.add("stage 1 real train-motion", "12.0 pairs/s")  # measured before the failure: kept
        raise RuntimeError("CUDA out of memory\nsecond line")

    assert run_section(table, "motion", broken_motion) is None
    assert run_section(table, "fmt", lambda: "ckpt") == "ckpt"
    rows = dict((what, measured) for what, measured, _ in table.rows)
    assert list(rows) == ["stage 1 real train-motion", *SECTIONS["motion"][1:]]
    assert rows["stage 1 real train-motion"] == "12.0 pairs/s"
    assert rows["stage 1 bare step"] == "FAILED: RuntimeError: CUDA out of memory"
    assert "Traceback" in capsys.readouterr().err


def test_only_takes_known_parts():
    done = run_script("--smoke", "--only", "fmt,stage2")
    assert done.returncode == 2 and "'fmt,stage2': choose from motion, fmt, sample" in done.stderr


def test_the_batch_that_fits_a_card_follows_the_line_through_two_measured_peaks():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_rows import largest_batch

    # 10 GiB of weights and optimizer state, 1.25 GiB a pair: 90 % of 80 GiB holds (72 - 10) / 1.25 = 49.6 pairs
    peaks = {8: 20.0, 16: 30.0}
    assert largest_batch(peaks, 80.0) == 49
    assert largest_batch(peaks, 80.0, headroom=1.0) == 56
    assert largest_batch(peaks, 8.0) == 0  # not even the weights fit
    with pytest.raises(ValueError, match="did not grow"):
        largest_batch({8: 30.0, 16: 30.0}, 80.0)


def test_the_batch_fit_row_checks_its_prediction_and_backs_off_when_the_card_runs_out(monkeypatch):
    """The card is simulated (no GPU here): 10 GiB + 1.25 GiB a pair by the probes, but the real card runs out
    above batch 80, so the predicted batch (90 % of 120 GiB: 78) is tried, and the 141 GB card's is not."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu
    import gpu_rows

    tried = []

    def bare_motion(cfg, sizes, device, steps, warmup):
        tried.append(sizes.motion_batch)
        if sizes.motion_batch > 70:
            raise torch.OutOfMemoryError("simulated")
        return {"pairs_per_s": 10.0 * sizes.motion_batch, "peak_gib": 10.0 + 1.25 * sizes.motion_batch}

    class Props:
        total_memory = 120 * 2**30

    monkeypatch.setattr(gpu_rows, "bare_motion", bare_motion)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    sizes = gpu_rows.GPU
    fit = gpu_rows.motion_batch_fit(gpu_rows.motion_config(gpu_rows.SMOKE), sizes, torch.device("cuda"))
    assert fit["peaks"] == {8: 20.0, 16: 30.0}
    assert fit["fits"] == {"80 GB": gpu_rows.largest_batch(fit["peaks"], 79.1), "141 GB": 92}
    assert tried == [8, 16, 78, 70] and fit["checked_batch"] == 70  # 78 ran out, then a tenth smaller
    text = gpu.batch_fit_text(fit, sizes)
    assert "80 GB: batch 48" in text and "141 GB: batch 92" in text and "batch 70 ran, peak 97.5 GiB" in text
