"""The trainer: learning on synthetic shards, run layout, logging, exact resume after SIGKILL,
SIGTERM, non-finite losses, --init, and the bad-input messages of `floatctl train`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from float.config import get_preset
from float.hf_checkpoint import state_fingerprint
from float.model import FloatMotionModel
from float.motion_autoencoder import MotionAutoEncoder
from shard_factory import make_shards, write_tar
from shards.manifest import write_manifest
from trainer import checkpoints as ckpt
from trainer.command import train as train_command
from trainer.ema import EMA
from trainer.logging import read_metrics
from trainer.errors import TrainingError
from trainer.schedule import ema_decay_at, lr_at
from trainer.settings import TrainSettings
from trainer.train_fmt import train
from trainer.validate import generation_error, validation_loss

REPO = Path(__file__).resolve().parents[1]
DIM_W, AUDIO_DIM = 16, 12
TINY = {"dim_w": DIM_W, "dim_a": 16, "dim_h": 32, "depth": 1, "num_heads": 2}
TINY_ARGS = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    make_shards(folder, {"train": 16, "val": 4}, frames=80, dim_w=DIM_W, audio_dim=AUDIO_DIM, seed=0)
    return folder


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def settings(shards: Path, out: Path, **changes) -> TrainSettings:
    base = dict(data_root=str(shards), out=str(out), preset="tiny", overrides=dict(TINY), steps=20, batch_size=4,
                lr=3e-3, log_step=10, val_step=0, sample_step=0, save_step=0, progress=False, tensorboard=False,
                val_nfe=4)
    base.update(changes)
    return TrainSettings(**base)


def run_cli(args: list[str]):
    app = typer.Typer()
    app.command()(train_command)
    return CliRunner().invoke(app, args)


# ---------------------------------------------------------------- small pieces
def test_lr_schedule_and_ema_warmup():
    assert lr_at(0, 2.0, 10, 100, "constant") == pytest.approx(0.2)
    assert lr_at(9, 2.0, 10, 100, "constant") == 2.0 and lr_at(99, 2.0, 10, 100, "constant") == 2.0
    assert lr_at(10, 2.0, 10, 100, "cosine") == pytest.approx(2.0)
    assert lr_at(100, 2.0, 10, 100, "cosine") == pytest.approx(0.2)
    assert lr_at(55, 2.0, 10, 100, "cosine") == pytest.approx(1.1)
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 1.0, 0, 10, "linear")
    assert ema_decay_at(0, 0.9999) == pytest.approx(0.1) and ema_decay_at(10**7, 0.9999) == 0.9999


def test_ema_tracks_the_weights():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.75)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
    ema.update(model)
    assert torch.allclose(ema.shadow.weight, start + 1.0)  # 0.75 * w + 0.25 * (w + 4)
    ema.update(model, decay=0.0)
    assert torch.equal(ema.shadow.weight, model.weight) and not ema.shadow.weight.requires_grad


def test_validation_is_deterministic(shards):
    from shards.sources import shard_urls
    from shards.validation import ValWindows
    from shards.windows import WindowSpec

    cfg = get_preset("tiny", audio_input_dim=AUDIO_DIM, **TINY)
    torch.manual_seed(0)
    model = FloatMotionModel(cfg)
    with torch.no_grad():  # leave the zero-initialised output so predictions are not trivially zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batches = ValWindows(shard_urls(shards, "val"), WindowSpec.from_config(cfg), 2).batches(4)
    assert validation_loss(model, batches, seed=1) == validation_loss(model, batches, seed=1)
    assert validation_loss(model, batches, seed=1) != validation_loss(model, batches, seed=2)
    first = generation_error(model, batches[:1], nfe=2, seed=1)
    assert first == generation_error(model, batches[:1], nfe=2, seed=1)
    assert first["gen_l1_audio"] != first["gen_l1_no_audio"]  # dropping the audio changes the samples


# ---------------------------------------------------------------- learning, layout, logs
def test_short_run_learns_and_uses_the_audio(shards, tmp_path):
    seen = []
    result = train(settings(shards, tmp_path / "run", steps=300, batch_size=8, log_step=100, val_step=150,
                            sample_step=300, save_step=150, tensorboard=True), samples_hook=seen.append)
    run = tmp_path / "run"
    assert result.step == 300 and result.final_checkpoint == run / "checkpoints" / "final_step_300.pt"
    assert (run / "config.json").is_file() and json.loads((run / "config.json").read_text())["config"]["depth"] == 1
    assert (run / "checkpoints" / "checkpoint_step_150.pt").is_file()
    assert (run / "checkpoints" / "latest").read_text().strip() == "final_step_300.pt"
    assert any((run / "tb").iterdir())

    train_logs = read_metrics(run, "train")
    assert [r["step"] for r in train_logs] == [100, 200, 300]
    for key in ("total", "current", "preceding", "velocity", "lr", "grad_norm", "samples_per_s",
                "data_wait_fraction"):
        assert all(isinstance(r[key], float) for r in train_logs), key
    assert all(0.0 <= r["data_wait_fraction"] <= 1.0 and r["samples_per_s"] > 0 for r in train_logs)

    val = read_metrics(run, "val")
    assert [r["step"] for r in val] == [0, 150, 300]
    assert val[-1]["val_total"] < 0.8 * val[0]["val_total"], "validation loss did not fall"
    assert val[0]["gen_l1_audio"] == val[0]["gen_l1_no_audio"]  # untrained: the audio does nothing yet
    assert val[-1]["gen_l1_audio"] < 0.9 * val[-1]["gen_l1_no_audio"], "generation ignores the audio"

    # motion samples: saved, announced through the hook, loadable without pickle
    assert seen == [run / "samples" / "sample_step_300.pt"]
    sample = torch.load(seen[0], weights_only=True)
    assert sample["motion"].shape == sample["target"].shape == (4, 50, DIM_W)
    assert torch.isfinite(sample["motion"]).all() and sample["step"] == 300 and len(sample["keys"]) == 4


# ---------------------------------------------------------------- exact resume
def cli_command(shards: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer.command", "--data-root", str(shards), "--out", str(out),
            "--preset", "tiny", *TINY_ARGS, "--batch-size", "4", "--lr", "3e-3", "--log-step", "1000",
            "--val-step", "0", "--sample-step", "0", "--no-progress", *extra]


def subprocess_env() -> dict:
    # One thread: the two runs compared bit for bit must use identical kernels and partitions.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {path.name} appeared"
        assert time.time() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.01)


def final_weights(run: Path) -> dict:
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    return {"model": state["model"], "ema": state["ema"], "optimizer": state["optimizer"]["state"]}


def test_sigkilled_run_resumes_to_bitwise_identical_weights(shards, tmp_path):
    steps = ["--steps", "300", "--save-step", "10", "--deterministic"]
    env = subprocess_env()
    whole = subprocess.run(cli_command(shards, tmp_path / "whole", *steps), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=180)
    assert whole.returncode == 0, whole.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(cli_command(shards, killed_dir, *steps), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(killed_dir / "checkpoints" / "checkpoint_step_20.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not list((killed_dir / "checkpoints").glob("final*")), "the run finished before it was killed"

    resumed = subprocess.run(cli_command(shards, killed_dir, *steps, "--resume", "auto"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout

    a, b = final_weights(tmp_path / "whole"), final_weights(killed_dir)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name} differs after resume"
    for index, moments in a["optimizer"].items():
        for k, v in moments.items():
            assert torch.equal(v, b["optimizer"][index][k]), f"optimizer state {index}.{k} differs"


def test_sigterm_saves_a_checkpoint_then_exits(shards, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(cli_command(shards, run, "--steps", "100000", "--save-step", "10"), cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(run / "checkpoints" / "checkpoint_step_10.pt", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in out
    path, state = ckpt.find_resume_checkpoint(run / "checkpoints")
    assert state["step"] > 10 and path.name == ckpt.step_filename(state["step"])
    assert not list((run / "checkpoints").glob("final*"))


# ---------------------------------------------------------------- non-finite losses
def nan_after(first_bad_call: int, every: int | None = None):
    """A loss function that turns non-finite from the given call on (every `every`-th call, or always)."""
    from float.loss import rectified_flow_loss

    calls = {"n": 0}

    def loss_fn(model, batch, weights, **kw):
        out = rectified_flow_loss(model, batch, weights, **kw)
        calls["n"] += 1
        n = calls["n"]
        if n >= first_bad_call and (every is None or n % every == 0):
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    return loss_fn


def test_non_finite_losses_are_skipped_and_counted(shards, tmp_path):
    result = train(settings(shards, tmp_path / "run", steps=12), loss_fn=nan_after(1, every=3))
    assert result.step == 12 and result.nonfinite_steps == 4
    state = ckpt.load_checkpoint(result.final_checkpoint)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(v).all() for v in state["ema"].values())
    assert read_metrics(tmp_path / "run", "train")[-1]["nonfinite_steps"] == 4


def test_many_non_finite_losses_in_a_row_stop_the_run_keeping_the_last_good_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="3 non-finite losses in a row") as err:
        train(settings(shards, run, steps=50, save_step=4, max_nonfinite=3), loss_fn=nan_after(10))
    assert "checkpoint_step_8.pt" in str(err.value)
    assert not list((run / "checkpoints").glob("final*"))
    path, state = ckpt.find_resume_checkpoint(run / "checkpoints")
    assert path.name == "checkpoint_step_8.pt"
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# ---------------------------------------------------------------- --init from official weights
def test_init_loads_official_parts_and_reports(shards, tmp_path, capsys):
    cfg = get_preset("tiny", audio_input_dim=AUDIO_DIM, **TINY)
    torch.manual_seed(123)
    donor = FloatMotionModel(cfg)
    torch.save(donor.state_dict(), tmp_path / "float.pth")  # fmt.* and audio_encoder.audio_projection.*

    result = train(settings(shards, tmp_path / "run", steps=1, lr=0.0, init=str(tmp_path / "float.pth")))
    printed = capsys.readouterr().out
    assert "fmt: " in printed and "0 missing" in printed and "no motion_autoencoder" in printed
    weights = ckpt.load_checkpoint(result.final_checkpoint)["model"]
    for name, value in donor.state_dict().items():
        assert torch.equal(weights[name], value), name

    wider = FloatMotionModel(cfg.replace(dim_h=64))
    torch.save(wider.state_dict(), tmp_path / "other.pth")
    with pytest.raises(TrainingError, match="do not fit"):
        train(settings(shards, tmp_path / "run2", steps=1, init=str(tmp_path / "other.pth")))


def test_init_requires_shards_encoded_with_its_motion_encoder(tmp_path):
    folder = tmp_path / "shards"
    manifest = make_shards(folder, {"train": 4, "val": 0}, frames=60, dim_w=DIM_W, audio_dim=AUDIO_DIM)
    cfg = get_preset("tiny", audio_input_dim=AUDIO_DIM, **TINY)
    torch.manual_seed(0)
    encoder = MotionAutoEncoder(8)  # the smallest encoder keeps the file small
    official = {f"motion_autoencoder.{k}": v for k, v in encoder.state_dict().items()}
    official.update(FloatMotionModel(cfg).state_dict())
    torch.save(official, tmp_path / "float.pth")
    manifest["input_size"] = 8
    write_manifest(folder, manifest)
    with pytest.raises(TrainingError, match="motion encoder fingerprint") as err:
        train(settings(folder, tmp_path / "run", steps=1, init=str(tmp_path / "float.pth")))
    assert "synthetic-motion-seed-0" in str(err.value)

    manifest["encoders"]["motion"]["fingerprint"] = state_fingerprint(encoder)  # shards made with that encoder
    write_manifest(folder, manifest)
    assert train(settings(folder, tmp_path / "run", steps=1, init=str(tmp_path / "float.pth"))).step == 1


# ---------------------------------------------------------------- bad input, through the command line
def test_missing_and_empty_shard_folders(tmp_path):
    result = run_cli(["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), "--steps", "1"])
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = run_cli(["--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--steps", "1"])
    assert result.exit_code == 2 and "is empty" in result.output


@pytest.mark.parametrize("content", ["garbage", "foreign tar"])
def test_a_tar_that_is_not_a_shard(tmp_path, content):
    folder = tmp_path / "shards"
    manifest = make_shards(folder, {"train": 4, "val": 0}, frames=60, dim_w=DIM_W, audio_dim=AUDIO_DIM)
    bad = folder / manifest["splits"]["train"]["shards"][0]["name"]
    if content == "garbage":
        bad.write_bytes(os.urandom(3000))
    else:
        write_tar(bad, [("notes", {"txt": b"hello"})])
    result = run_cli(["--data-root", str(folder), "--out", str(tmp_path / "r"), "--steps", "1", *TINY_ARGS])
    assert result.exit_code == 2
    assert str(bad) in result.output and "not a" in result.output and "shard" in result.output


def test_shards_that_do_not_fit_the_model_stop_at_start(shards, tmp_path):
    # the tiny preset's dim_w is 512; these shards hold 16-wide motion latents
    result = run_cli(["--data-root", str(shards), "--out", str(tmp_path / "r"), "--steps", "1"])
    assert result.exit_code == 2 and "motion latent width" in result.output and "dim_w=512" in result.output


def test_checkpoint_from_another_config_lists_the_differences(shards, tmp_path):
    run = tmp_path / "run"
    train(settings(shards, run, steps=2))
    result = run_cli(["--data-root", str(shards), "--out", str(run), "--steps", "4", "--resume", "auto",
                      *TINY_ARGS, "--set", "depth=2", "--set", "num_heads=4"])
    assert result.exit_code == 2
    assert "another model config" in result.output
    assert "depth: checkpoint 1, this run 2" in result.output and "num_heads: checkpoint 2, this run 4" in result.output


def test_truncated_and_pickle_checkpoints_on_resume(shards, tmp_path):
    run = tmp_path / "run"
    train(settings(shards, run, steps=6, save_step=3))
    final = run / "checkpoints" / "final_step_6.pt"
    data = final.read_bytes()
    final.write_bytes(data[: len(data) // 3])

    base = ["--data-root", str(shards), "--out", str(run), *TINY_ARGS, "--batch-size", "4", "--log-step", "1000",
            "--val-step", "0", "--sample-step", "0", "--save-step", "0"]
    result = run_cli(base + ["--steps", "8", "--resume", str(final)])
    assert result.exit_code == 2 and "truncated or corrupt" in result.output and str(final) in result.output

    result = run_cli(base + ["--steps", "8", "--resume", "auto"])
    assert result.exit_code == 0, result.output
    assert "skipping" in result.output and "resumed from" in result.output and "checkpoint_step_3.pt" in result.output

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"version": 1, "step": 1, "config": {}, "model": RunsCode(marker)}, evil)
    result = run_cli(base + ["--steps", "8", "--resume", str(evil)])
    assert result.exit_code == 2 and "refused" in result.output
    assert not marker.exists()


class RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
