"""--profile-steps A:B: torch.profiler over steps A+1..B of the real loop, written to <run>/profile/."""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from crop_factory import make_crop_shards
from run_settings import AUDIO_DIM, DIM_W, fmt_settings, motion_settings
from shard_factory import make_shards
from trainer.errors import TrainingError
from trainer.step_profiler import device_busy_seconds, parse_profile_steps
from trainer.train_fmt import train
from trainer.train_motion import train as train_motion


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    make_shards(folder, {"train": 4, "val": 0}, frames=60, dim_w=DIM_W, audio_dim=AUDIO_DIM, seed=0)
    return folder


def test_the_profiled_steps_leave_top_ops_a_summary_and_a_trace(shards, tmp_path, capsys):
    result = train(fmt_settings(shards, tmp_path / "run", profile_steps="2:4"), samples_hook=lambda path: None)
    assert result.step == 6  # profiling changes nothing of the run itself
    folder = tmp_path / "run" / "profile"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == [3, 4] and summary["wall_s"] > 0
    assert summary["device_busy_share"] is None  # no device timeline on a CPU
    names = [op["name"] for op in summary["top_ops"]]
    assert any(name.startswith("aten::") for name in names) and all(op["calls"] > 0 for op in summary["top_ops"])
    assert names[0][:40] in (folder / "ops.txt").read_text()  # the table cuts long names (the loader's) short
    trace = json.loads(gzip.decompress((folder / "trace.json.gz").read_bytes()))
    assert any(event.get("name", "").startswith("aten::") for event in trace["traceEvents"])
    assert "profile of steps 3-4" in capsys.readouterr().out


def test_stage1_profiles_through_the_same_loop(tmp_path):
    crops = tmp_path / "crops"
    make_crop_shards(crops, {"train": 4, "val": 0}, frames=8, size=32, seed=0)
    train_motion(motion_settings(crops, tmp_path / "run", steps=3, log_step=3, profile_steps="1:2"))
    assert json.loads((tmp_path / "run" / "profile" / "summary.json").read_text())["steps"] == [2, 2]


def test_a_run_that_ends_inside_the_window_writes_no_profile_and_ends_cleanly(shards, tmp_path):
    result = train(fmt_settings(shards, tmp_path / "run", steps=3, profile_steps="2:9"), samples_hook=lambda p: None)
    assert result.step == 3 and result.final_checkpoint is not None
    assert not (tmp_path / "run" / "profile").exists()


@pytest.mark.parametrize("text", ["4:2", "3:3", "-1:2", "3", "a:b"])
def test_bad_profile_steps_are_refused_before_anything_runs(shards, tmp_path, text):
    with pytest.raises(TrainingError, match="--profile-steps"):
        train(fmt_settings(shards, tmp_path / "run", profile_steps=text), samples_hook=lambda path: None)
    assert not (tmp_path / "run").exists()
    assert parse_profile_steps("") is None and parse_profile_steps("0:1") == (0, 1)


def test_device_busy_time_counts_overlapping_kernels_and_copies_once():
    def event(start, end, device=torch.autograd.DeviceType.CUDA):
        return SimpleNamespace(device_type=device, time_range=SimpleNamespace(start=start, end=end))

    # microseconds: a kernel 0-10, a copy on the side stream 5-15 (overlaps), a kernel 20-30 inside one 20-40,
    # and CPU work 0-100 that is not device time
    events = [event(0, 10), event(5, 15), event(20, 40), event(20, 30), event(0, 100, torch.autograd.DeviceType.CPU)]
    profiler = SimpleNamespace(events=lambda: events)
    assert device_busy_seconds(profiler, torch.device("cuda")) == pytest.approx(35e-6)
    assert device_busy_seconds(profiler, torch.device("cpu")) is None
    assert device_busy_seconds(SimpleNamespace(events=lambda: events[-1:]), torch.device("cuda")) is None
