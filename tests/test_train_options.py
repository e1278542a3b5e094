"""Options a researcher reaches for: --config files, --loss-weights, --early-stop, --wandb."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from shard_factory import make_shards
from trainer import checkpoints as ckpt
from trainer.errors import TrainingError
from trainer.settings import TrainSettings, typer_command
from trainer.train_fmt import parse_loss_weights, train

TINY = {"dim_w": 16, "dim_a": 16, "dim_h": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    make_shards(folder, {"train": 4, "val": 2}, frames=60, dim_w=16, audio_dim=12, seed=0)
    return folder


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def settings(shards: Path, out: Path, **changes) -> TrainSettings:
    base = dict(data_root=str(shards), out=str(out), preset="tiny", overrides=dict(TINY), steps=4, batch_size=2,
                lr=3e-3, log_step=0, val_step=0, sample_step=0, save_step=0, progress=False, tensorboard=False,
                val_nfe=2, val_clips=2)
    base.update(changes)
    return TrainSettings(**base)


def invoke(args: list[str]) -> tuple[object, list[TrainSettings]]:
    seen: list[TrainSettings] = []
    app = typer.Typer()
    app.command()(typer_command(TrainSettings, seen.append, "train", "test"))
    return CliRunner().invoke(app, [str(a) for a in args]), seen


def test_config_file_fills_options_and_the_command_line_wins(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 7\nbatch-size: 3\nlr: 0.01\nschedule: cosine\nset:\n  depth: 2\n  num_heads: 2\n")
    result, seen = invoke(["--config", config, "--steps", "5", "--set", "depth=3"])
    assert result.exit_code == 0, result.output
    s = seen[0]
    assert s.steps == 5 and s.batch_size == 3 and s.lr == 0.01 and s.schedule == "cosine"
    assert s.overrides == {"depth": 3, "num_heads": 2} and s.config == str(config)
    # A value equal to the default, given on the command line, still wins over the file.
    result, seen = invoke(["--config", config, "--batch-size", "8"])
    assert seen[0].batch_size == 8


@pytest.mark.parametrize("text,message", [
    ("stepz: 3\n", "unknown option 'stepz'"),
    ("steps: many\n", "steps must be int"),
    ("set:\n  depht: 2\n", "not a model setting"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("steps: [\n", "not valid YAML"),
])
def test_bad_config_files_are_refused_naming_the_file(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result, seen = invoke(["--config", config])
    assert result.exit_code == 2 and message in result.output and "bad.yaml" in result.output and not seen
    result, _ = invoke(["--config", tmp_path / "missing.yaml"])
    assert result.exit_code == 2 and "missing.yaml" in result.output


def test_the_resolved_options_are_saved_in_the_run_folder(shards, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 3\nlog-step: 1\n")
    result, seen = invoke(["--config", config, "--data-root", shards, "--out", tmp_path / "run", "--preset", "tiny",
                           *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")], "--batch-size", "2",
                           "--val-step", "0", "--sample-step", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    done = train(seen[0])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["settings"]
    assert done.step == 3 and saved["steps"] == 3 and saved["log_step"] == 1 and saved["config"] == str(config)


def test_loss_weights_reach_the_loss_and_bad_ones_are_refused(shards, tmp_path):
    seen = []

    def loss_fn(model, batch, weights, **kw):
        from float.loss import rectified_flow_loss

        seen.append(weights)
        return rectified_flow_loss(model, batch, weights, **kw)

    train(settings(shards, tmp_path / "run", steps=1, loss_weights="1,0,0.5"), loss_fn=loss_fn)
    assert (seen[0].current, seen[0].preceding, seen[0].velocity) == (1.0, 0.0, 0.5)
    for bad in ("1,1", "1,-1,1", "a,b,c", "0,0,0"):
        with pytest.raises(TrainingError, match="--loss-weights"):
            parse_loss_weights(bad)


def test_early_stop_ends_the_run_and_names_its_best_checkpoint(shards, tmp_path, capsys):
    # lr 0: the weights never change, so the validation loss never improves after step 0.
    result = train(settings(shards, tmp_path / "run", steps=100, lr=0.0, val_step=2, early_stop=2))
    assert result.step == 4, "two validations without improvement after the baseline"
    assert result.best_checkpoint == tmp_path / "run" / "checkpoints" / "best_step_0.pt"
    assert result.best_checkpoint.is_file() and result.final_checkpoint.name == "final_step_4.pt"
    out = capsys.readouterr().out
    assert "early stop at step 4" in out and "best_step_0.pt" in out
    state = ckpt.load_checkpoint(result.final_checkpoint)
    assert state["counters"]["early_stop"] == {"best": pytest.approx(state["counters"]["early_stop"]["best"]),
                                               "best_step": 0, "stale": 2}
    # The best checkpoint is never a resume point: the newest state is.
    assert ckpt.find_resume_checkpoint(tmp_path / "run" / "checkpoints")[0].name == "final_step_4.pt"


def test_early_stop_keeps_improving_runs_going(shards, tmp_path):
    result = train(settings(shards, tmp_path / "run", steps=60, batch_size=4, val_step=20, early_stop=1, lr=3e-3))
    assert result.step == 60 and result.best_checkpoint.name == "best_step_60.pt"


def test_wandb_logs_when_installed_and_is_skipped_with_a_warning_when_not(shards, tmp_path, monkeypatch, capsys):
    calls = {"init": [], "log": [], "finish": 0}

    class FakeRun:
        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self):
            calls["finish"] += 1

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls["init"].append(kw) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train(settings(shards, tmp_path / "run", steps=2, log_step=1, val_step=2, wandb=True))
    assert calls["init"][0]["mode"] == "offline" and calls["init"][0]["config"]["steps"] == 2
    assert {k for _, d in calls["log"] for k in d} >= {"train/total", "val/val_total"} and calls["finish"] == 1

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    result = train(settings(shards, tmp_path / "run2", steps=2, wandb=True))
    assert result.step == 2 and "wandb package is not installed" in capsys.readouterr().out
