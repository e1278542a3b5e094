"""The loader benchmarks of `make bench` at tiny sizes: each runs, and prints the figures it promises.

Their helpers are shared (benchmarks/loader.py), so one benchmark's change can break another's import;
`make bench` on a CPU is not part of the suite, these runs are (seconds each, figures meaning nothing)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--clips", "4", "--frames", "60", "--batches", "3", "--repeats", "1"]
RATE = r"([\d.]+) (windows|pairs)/s"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def rates(text: str, label: str) -> list[float]:
    return [float(m.group(1)) for line in text.splitlines() if label in line for m in [re.search(RATE, line)] if m]


def test_the_cut_comparison_prints_host_device_and_records_against_host():
    done = run("loader.py", "--compare-only", *TINY, "--dim-w", "16", "--audio-dim", "32", "--max-workers", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    for label in ("host ", "device ", "records "):
        (rate,) = rates(done.stdout, label)
        assert rate > 0
    assert "(1.00x host)" in done.stdout
    # records carry each row once, in the stored float16: fewer bytes than the collated batch
    records = next(line for line in done.stdout.splitlines() if line.strip().startswith("records"))
    assert float(re.findall(r"\(([\d.]+)x host\)", records)[-1]) < 1.0


def test_local_and_http_loaders_print_both_rates_and_a_verdict():
    fmt = run("remote_loader.py", *TINY, "--dim-w", "16", "--audio-dim", "32", "--workers", "0")
    pairs = run("pair_loader.py", "--clips", "2", "--frames", "12", "--batches", "2", "--repeats", "1",
                "--batch-size", "2", "--workers", "0", "--video", str(REPO / "no-such-video.mp4"))
    for done in (fmt, pairs):
        # at tiny sizes HTTP's fixed costs may miss the 2x the real sizes are held to (exit 1): a verdict either way
        assert done.returncode in (0, 1), done.stderr[-2000:]
        assert rates(done.stdout, "local disk")[0] > 0 and rates(done.stdout, "http 127.0.0.1")[0] > 0
        assert re.search(r"local / http = [\d.]+x \((NOT )?within", done.stdout), done.stdout
