#!/usr/bin/env bash
# What a session with a CUDA GPU runs, as ONE command from anywhere in the repository (about 9 minutes):
#     bash benchmarks/gpu_session.sh
# 1. preflight (seconds): the Python (PY, else .venv/bin/python, else python3) sees CUDA, names the card, and
#    imports every package the runs need; a missing one is named and the session stops there.
# 2. pytest -m cuda -v (tests/test_cuda.py, the fast sampling's tests/test_fast_sampling.py and the device cut's
#    tests/test_device_cut.py), within
#    CUDA_TESTS_TIMEOUT seconds (default 210).
# 3. benchmarks/gpu.py (make bench-gpu), within BENCH_TIMEOUT seconds (default 330). Its rows print as they
#    are measured, so a run cut short still leaves the figures it reached.
# Both parts run whatever the other's result. Everything is teed to $OUT/gpu_session.log when OUT is set
# (a device machine's output folder), with the benchmark's table alone in $OUT/bench_gpu.md and the real runs'
# torch.profiler files beside it (fmt_profile_{ops.txt,summary.json,trace.json.gz}, motion_profile_{ops.txt,
# summary.json}): 7 files, within a device run's 8.
# Packages the machine lacks travel as wheels (git-ignored; name the folder in the run's carry) and are
# installed into /tmp/site first. The H200 image (python 3.12) lacks PyAV, braceexpand and webdataset; fetch
# them here, once, before the session (about 40 MB) with the workplace's script, which fills .device/wheels:
#     bash ../shared/gpu/prepare.sh          # then: run(command="bash benchmarks/gpu_session.sh", carry=[".device"])
# or by hand into .whl/ (carry ".whl"):
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         -d .whl av==18.1.0 braceexpand==0.1.7 webdataset==1.0.2
# REQUIRE_CUDA=0 BENCH_ARGS=--smoke run the same steps on a CPU (the suite tests the script so).
# Exit status: 0 when both parts passed, else the first failing part's status (124: it ran out of time).
set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PY:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
CUDA_TESTS_TIMEOUT=${CUDA_TESTS_TIMEOUT:-210}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-330}
LOG=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && LOG="$OUT/gpu_session.log"; fi
export PYTHONUNBUFFERED=1

say() { echo "== $*" | tee -a "$LOG"; }

wheels=$(ls .device/wheels/*.whl .whl/*.whl 2>/dev/null)
if [ -n "$wheels" ]; then
    say "installing the carried wheels into /tmp/site: $(echo "$wheels" | xargs -n1 basename | tr '\n' ' ')"
    # shellcheck disable=SC2086  # a list of wheel files
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels \
        2>&1 | tee -a "$LOG" || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

say "preflight: $PY, $(date -u +%FT%TZ)"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.util, os, sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA available {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    if os.environ.get("REQUIRE_CUDA", "1") != "0":
        sys.exit("no CUDA GPU: the CUDA tests would all be skipped and the benchmark measures nothing")
else:
    print(f"card: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
missing = []
for name in ("av", "braceexpand", "webdataset", "typer", "yaml", "cv2", "skimage", "matplotlib", "tensorboard",
             "safetensors", "scipy", "torchaudio", "tqdm", "pytest"):
    try:
        importlib.import_module(name)
    except ImportError as e:
        missing.append(f"{name} ({e})")
if missing:
    sys.exit("missing packages (carry them as wheels in .whl/): " + ", ".join(missing))
import cv2
print(f"opencv {cv2.__version__}; dlib {'present' if importlib.util.find_spec('dlib') else 'absent (Haar faces)'}")
EOF
status=$?
if [ $status -ne 0 ]; then say "preflight failed (exit $status): nothing run"; exit $status; fi

say "part 1: pytest -m cuda -v (timeout ${CUDA_TESTS_TIMEOUT} s)"
# -v rather than -q: each test's result is printed as it ends, so a part cut short still says which passed.
timeout --signal=TERM --kill-after=10 "$CUDA_TESTS_TIMEOUT" "$PY" -m pytest -m cuda -v -p no:cacheprovider \
    --durations=0 tests/test_cuda.py tests/test_fast_sampling.py tests/test_device_cut.py 2>&1 | tee -a "$LOG"
tests_status=$?
say "part 1 exit $tests_status"

say "part 2: benchmarks/gpu.py ${BENCH_ARGS:-} (timeout ${BENCH_TIMEOUT} s)"
bench_text=$(mktemp)
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
profile_out=()
if [ -n "${OUT:-}" ]; then profile_out=(--profile-out "$OUT"); fi  # the real runs' profiles, flat in $OUT
timeout --signal=TERM --kill-after=10 "$BENCH_TIMEOUT" "$PY" benchmarks/gpu.py ${BENCH_ARGS:-} "${profile_out[@]}" 2>&1 \
    | tee -a "$LOG" "$bench_text"
bench_status=$?
if [ -n "${OUT:-}" ]; then grep '^|' "$bench_text" > "$OUT/bench_gpu.md"; fi
rm -f "$bench_text"
say "part 2 exit $bench_status; $(date -u +%FT%TZ)"

if [ $tests_status -ne 0 ]; then exit $tests_status; fi
exit $bench_status
