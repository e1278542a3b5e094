"""`make demo` (tiny, CPU) runs exactly the commands it always ran; `make demo PRESET=paper` runs the paper-size path
(512 px crops, stage 1 trained here, latents, the paper FMT at a GPU batch, samples, eval) in folders of its own;
and that path's face detection needs no OpenCV Haar cascades (OpenCV 5 ships none)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PORTRAIT = REPO.parent / "shared" / "samples" / "portrait_512.jpg"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

# `make -n demo` before the paper preset existed, after the install lines (whitespace as make prints it).
TINY_DEMO = """\
.venv/bin/floatctl shards --out data/shards --preset tiny    
.venv/bin/floatctl inspect data/shards
test -f assets/stage1-tiny.pt || (echo "no stage-1 checkpoint assets/stage1-tiny.pt: make demo STAGE1=train trains one" && false)
.venv/bin/floatctl shards --from-crops data/shards-crops --motion-ckpt assets/stage1-tiny.pt --out data/shards-stage1
.venv/bin/floatctl inspect data/shards-stage1
.venv/bin/floatctl train --data-root data/shards-stage1 --out runs/demo --steps 1000 --resume auto \\
	--log-step 100 --val-step 500 --save-step 500 --sample-step 500
.venv/bin/floatctl sample runs/demo
.venv/bin/floatctl eval runs/demo
echo "demo done: metrics in runs/demo/metrics.jsonl, samples (videos, plots) in runs/demo/samples/, scores in runs/demo/eval.md"
"""


def make_n(*args: str) -> str:
    """The commands `make -n demo ARGS` would run, after the install step's."""
    done = subprocess.run(["make", "-n", "--no-print-directory", "demo", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if "floatctl" in line)
    return "".join(lines[first:])


def commands(text: str) -> list[str]:
    """One line per command (make's continuation lines joined)."""
    return [" ".join(c.split()) for c in text.replace("\\\n", " ").splitlines() if c.strip()]


def test_the_tiny_demo_runs_exactly_the_commands_it_always_ran():
    assert make_n() == TINY_DEMO
    assert make_n("PRESET=tiny") == TINY_DEMO


def test_the_paper_demo_runs_the_whole_path_at_512_px_in_its_own_folders():
    run = commands(make_n("PRESET=paper"))
    assert run[0] == ".venv/bin/floatctl shards --out data/shards-paper --preset paper"
    stage1 = next(c for c in run if " train-motion " in c)
    assert "--data-root data/shards-paper-crops --preset paper" in stage1
    assert "--steps 300" in stage1 and "--batch-size 16" in stage1 and "--out runs/motion-demo-paper" in stage1
    assert ".venv/bin/floatctl export runs/motion-demo-paper runs/motion-demo-paper/stage1.pt" in run
    assert (".venv/bin/floatctl shards --from-crops data/shards-paper-crops --motion-ckpt "
            "runs/motion-demo-paper/stage1.pt --out data/shards-paper-stage1") in run
    fmt = next(c for c in run if c.startswith(".venv/bin/floatctl train "))
    assert "--data-root data/shards-paper-stage1 --out runs/demo-paper --steps 2000" in fmt
    assert "--preset paper" in fmt and "--batch-size 64" in fmt
    assert run[-3:-1] == [".venv/bin/floatctl sample runs/demo-paper", ".venv/bin/floatctl eval runs/demo-paper"]
    # The order: crops, stage 1, its latents, the FMT, samples, eval.
    order = [next(i for i, c in enumerate(run) if key in c)
             for key in ("--preset paper", "train-motion", "--from-crops", "floatctl train ", "sample ", "eval ")]
    assert order == sorted(order)


def test_the_paper_demo_takes_smaller_sizes_from_the_command_line():
    run = commands(make_n("PRESET=paper", "MOTION_STEPS=20", "STEPS=10", "BATCH=4", "MOTION_BATCH=2"))
    assert any(" train-motion " in c and "--steps 20" in c and "--batch-size 2" in c for c in run)
    assert any(c.startswith(".venv/bin/floatctl train ") and "--steps 10" in c and "--batch-size 4" in c for c in run)


def test_with_float_pth_the_paper_preset_keeps_the_official_encoder_path():
    run = commands(make_n("FLOAT_CKPT=float.pth"))
    assert run[0].startswith(".venv/bin/floatctl shards --out data/shards --preset paper --float-ckpt float.pth")
    assert not any("train-motion" in c or "--from-crops" in c for c in run)
    assert any("train --data-root data/shards --out runs/demo --steps 1000" in c for c in run)


def test_the_paper_paths_face_detection_needs_no_haar_cascades(monkeypatch):
    """OpenCV 5 has no cv2.data and no cascades: the default detector (dlib) crops and counts faces without them."""
    import cv2

    from preprocess import face_models
    from preprocess.face_pick import default_detector, image_crop_box
    from trainer.eval.lipsync import face_rate

    if not face_models.available():
        pytest.skip("dlib's models are not installed (the faces extra)")
    if not PORTRAIT.is_file():
        pytest.skip(f"{PORTRAIT} not found")
    monkeypatch.delattr(cv2, "data", raising=False)
    monkeypatch.delattr(cv2, "CascadeClassifier", raising=False)
    assert default_detector() == "dlib"
    image = cv2.cvtColor(cv2.imread(str(PORTRAIT)), cv2.COLOR_BGR2RGB)
    assert image_crop_box(image, default_detector()) is not None
    assert face_rate(np.stack([image, np.zeros_like(image)]), every=1) == 0.5


def test_make_real_runs_both_stages_on_the_recipe_and_refuses_without_data(tmp_path):
    """`make real` (the real-data recipe): the recipe's configs, the speakers held out, both stages, eval."""
    done = subprocess.run(["make", "-n", "--no-print-directory", "real", "DATA=clips", "VAL_IDS=a,b", "TEST_IDS=c"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    commands = done.stdout
    order = ["floatctl shards --input clips", "train-motion --config recipes/real-cpu-stage1.yaml",
             "floatctl export runs/real-cpu/stage1", "shards --from-crops data/real-cpu/crops",
             "train --config recipes/real-cpu-fmt.yaml", "floatctl sample runs/real-cpu/fmt",
             "floatctl eval runs/real-cpu/fmt"]
    positions = [commands.index(c) for c in order]
    assert positions == sorted(positions)
    assert "--val-ids a,b --test-ids c" in commands and "--preset tiny" in commands
    assert commands.count("--audio-features mel-speech") == 2  # the crops' and the latents' audio alike
    gpu = subprocess.run(["make", "-n", "--no-print-directory", "real", "DATA=clips", "VAL_IDS=a", "TEST_IDS=c",
                          "RECIPE=gpu"], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    assert "recipes/real-gpu-stage1.yaml" in gpu and "--preset small" in gpu and "runs/real-gpu/fmt" in gpu
    for recipe in ("cpu", "gpu"):  # every key of the recipe files is an option the trainers know
        from trainer.settings import MotionSettings, TrainSettings, read_config_file

        read_config_file(str(REPO / "recipes" / f"real-{recipe}-stage1.yaml"), MotionSettings)
        read_config_file(str(REPO / "recipes" / f"real-{recipe}-fmt.yaml"), TrainSettings)
    stamp = tmp_path / "installed"
    stamp.touch()  # newer than pyproject.toml: the install step has nothing to do
    refused = subprocess.run(["make", "--no-print-directory", "real", f"STAMP={stamp}"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "usage: make real DATA=folder VAL_IDS=a,b TEST_IDS=c,d" in refused.stdout
