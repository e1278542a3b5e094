"""trainer/checkpoints.py: atomic saves, rotation, the latest pointer, safe loading, RNG states."""
from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from trainer import checkpoints as ckpt


def make_state(step: int, value: float = 1.0) -> dict:
    return {
        "version": ckpt.CHECKPOINT_VERSION, "step": step,
        "model": {"w": torch.full((3, 4), value), "b": torch.arange(4.0)},
        "config": {"name": "tiny", "depth": 2},
        "settings": {"lr": 1e-4, "resume": None, "overrides": {"depth": 2}},
        "stream": {"ranks": [{"batches": step, "streams": [[1, 2, 0, 0]]}]},
        "rng": ckpt.capture_rng_state(),
    }


def test_roundtrip_rotation_and_latest_pointer(tmp_path):
    for step in (10, 20, 30, 40):
        ckpt.save_checkpoint(tmp_path, make_state(step, value=step), step, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    # only the newest two are kept, no temporary file is left behind
    assert names == ["checkpoint_step_30.pt", "checkpoint_step_40.pt", "latest"]
    assert (tmp_path / "latest").read_text().strip() == "checkpoint_step_40.pt"
    path, state = ckpt.find_resume_checkpoint(tmp_path)
    assert path.name == "checkpoint_step_40.pt" and state["step"] == 40
    assert torch.equal(state["model"]["w"], torch.full((3, 4), 40.0))
    assert state["settings"]["overrides"] == {"depth": 2} and state["settings"]["resume"] is None

    final = ckpt.save_final(tmp_path, make_state(50))
    assert final.name == "final_step_50.pt" and (tmp_path / "latest").read_text().strip() == final.name
    assert ckpt.find_resume_checkpoint(tmp_path)[1]["step"] == 50


def test_keep_zero_keeps_everything(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, make_state(step), step, keep=0)
    assert [p.name for p in ckpt.list_step_checkpoints(tmp_path)] == [ckpt.step_filename(s) for s in (1, 2, 3)]


def test_truncated_checkpoint_is_named_and_auto_resume_falls_back(tmp_path):
    ckpt.save_checkpoint(tmp_path, make_state(10), 10, keep=5)
    newest = ckpt.save_checkpoint(tmp_path, make_state(20), 20, keep=5)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a copy cut short, a full disk...

    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt") as err:
        ckpt.load_checkpoint(newest)
    assert str(newest) in str(err.value)

    warnings = []
    path, state = ckpt.find_resume_checkpoint(tmp_path, warn=warnings.append)
    assert path.name == "checkpoint_step_10.pt" and state["step"] == 10
    assert len(warnings) == 1 and "checkpoint_step_20.pt" in warnings[0]
    # an explicit path does not fall back: the user asked for that file
    with pytest.raises(ckpt.CheckpointError):
        ckpt.resolve_resume(str(newest), tmp_path)


class RunsCode:
    """Unpickling this calls open(marker, "w"): the file appearing would mean code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", ["raw pickle", "torch zip"])
def test_checkpoint_holding_code_is_refused_and_never_executed(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {**make_state(5), "model": RunsCode(marker)}
    if container == "raw pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    assert not marker.exists()
    with pytest.raises(ckpt.CheckpointError, match="refused") as err:
        ckpt.load_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists(), "loading the checkpoint executed code"
    if container == "raw pickle":  # the payload is live: a plain unpickler does run it
        pickle.loads(pickle.dumps(RunsCode(tmp_path / "control")))
        assert (tmp_path / "control").exists()
    # auto resume skips it rather than running it
    (tmp_path / "ck").mkdir()
    path.rename(tmp_path / "ck" / "step_00000005.pt")
    assert ckpt.find_resume_checkpoint(tmp_path / "ck", warn=lambda m: None) is None
    assert not marker.exists()


def test_other_files_are_refused_with_a_reason(tmp_path):
    official = tmp_path / "float.pth"
    torch.save({"fmt.x_embedder.proj.weight": torch.zeros(2, 2)}, official)
    with pytest.raises(ckpt.CheckpointError, match="--init"):
        ckpt.load_checkpoint(official)
    with pytest.raises(ckpt.CheckpointError, match="no such file"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path / "no-checkpoints-yet") is None


def test_rng_states_survive_a_weights_only_roundtrip(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    state = make_state(1)  # captures the RNG states now
    expected = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    ckpt.save_checkpoint(tmp_path, state, 1)
    loaded = ckpt.load_checkpoint(tmp_path / "checkpoint_step_1.pt")
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ckpt.restore_rng_state(loaded["rng"])
    again = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "checkpoint_step_1.pt"
    torch.save(make_state(1), target)
    before = target.read_bytes()

    def explode(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.atomic_write_bytes(target, explode)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_step_1.pt"]


def test_a_kill_between_file_and_pointer_loses_nothing(tmp_path):
    ckpt.save_checkpoint(tmp_path, make_state(10), 10)
    ckpt.save_checkpoint(tmp_path, make_state(20), 20)
    # as if killed after step_20 was renamed into place but before `latest` moved, mid-way through its write
    ckpt.write_latest_pointer(tmp_path, "checkpoint_step_10.pt")
    (tmp_path / ".latest.tmp-999999").write_bytes(b"step_000")
    path, state = ckpt.find_resume_checkpoint(tmp_path)
    assert path.name == "checkpoint_step_20.pt" and state["step"] == 20
    ckpt.save_checkpoint(tmp_path, make_state(30), 30)  # the next save clears the dead writer's leftovers
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_auto_resume_takes_the_newest_step_final_or_periodic(tmp_path):
    # A finished 1,000-step run, extended to 3,000 and killed at 2,700: continue from 2,700, not 1,000.
    ckpt.save_final(tmp_path, make_state(1000))
    for step in (2500, 2700):
        ckpt.save_checkpoint(tmp_path, make_state(step), step)
    path, state = ckpt.find_resume_checkpoint(tmp_path)
    assert path.name == "checkpoint_step_2700.pt" and state["step"] == 2700
    # The same step as final and periodic: the final one (it holds the finished run's last word).
    ckpt.save_checkpoint(tmp_path, make_state(3000), 3000)
    ckpt.save_final(tmp_path, make_state(3000))
    assert [p.name for p in ckpt.resume_candidates(tmp_path)][:3] == [
        "final_step_3000.pt", "checkpoint_step_3000.pt", "checkpoint_step_2700.pt"]
    assert ckpt.latest_checkpoint(tmp_path).name == "final_step_3000.pt"


def test_runs_written_with_the_old_names_still_resume(tmp_path):
    import torch as _torch

    _torch.save(make_state(5), tmp_path / "step_00000005.pt")
    _torch.save(make_state(8), tmp_path / "final.pt")
    _torch.save(make_state(7), tmp_path / "step_00000007.pt")
    assert [p.name for p in ckpt.resume_candidates(tmp_path)] == ["final.pt", "step_00000007.pt",
                                                                   "step_00000005.pt"]
    ckpt.save_checkpoint(tmp_path, make_state(9), 9)
    assert ckpt.find_resume_checkpoint(tmp_path)[1]["step"] == 9


def test_latest_checkpoint_of_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.latest_checkpoint(tmp_path)
