"""Stage 1 (`floatctl train-motion`): training, validation, samples, exact resume, DDP, bad input."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

from crop_factory import make_crop_shards
from float.motion_autoencoder import MotionAutoEncoder
from float.motion_training import prepare_for_training
from shard_factory import make_shards
from trainer import checkpoints as ckpt
from trainer.logging import read_metrics
from trainer.motion_eval import psnr
from trainer.errors import TrainingError
from trainer.settings import MotionSettings
from trainer.train_motion import train

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crops")
    make_crop_shards(folder, {"train": 6, "val": 2}, frames=10, size=SIZE, seed=0)
    return folder


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def settings(crops: Path, out: Path, **changes) -> MotionSettings:
    base = dict(data_root=str(crops), out=str(out), preset="tiny", steps=4, batch_size=4, log_step=2,
                val_step=2, sample_step=2, save_step=0, progress=False, tensorboard=False, val_clips=2,
                val_pairs_per_clip=2, sample_count=3, pairs_per_clip=4)
    base.update(changes)
    return MotionSettings(**base)


def test_the_training_start_reconstructs_the_source_frame():
    torch.manual_seed(0)
    model = prepare_for_training(MotionAutoEncoder(SIZE, 512, 20, 0.125))
    # Smooth pictures, as faces are: the identity warp resamples on a grid a fraction of a pixel off.
    grid = torch.linspace(0, 3.0, SIZE)
    x = 0.7 * torch.sin(grid[None, None, :, None] + grid[None, None, None, :] * torch.tensor([1.0, 0.5, 2.0])[None, :, None, None])
    x = torch.cat([x, -x])
    y = x.flip(-1)
    with torch.no_grad():
        recon = model(x, y)  # the motion is ignored at the start: the source comes through
    inner = (..., slice(2, -2), slice(2, -2))  # the official sampling grid half-fades the outermost pixels
    assert psnr(recon[inner], x[inner]).min() > 30.0
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("dec.to_rgb1.") or n.endswith("noise.weight") for n in frozen)
    plain = MotionAutoEncoder(SIZE, 512, 20, 0.125)(x, y).detach()
    assert psnr(plain[inner], x[inner]).max() < 15.0  # the StyleGAN2 initialisation starts at noise


def test_short_run_validates_samples_and_checkpoints(crops, tmp_path):
    result = train(settings(crops, tmp_path / "run", adversarial_weight=0.1, r1_every=2))
    assert result.step == 4 and result.final_checkpoint is not None
    state = ckpt.load_checkpoint(result.final_checkpoint)
    assert state["kind"] == "motion_autoencoder" and "discriminator" in state and "ema" in state
    assert state["config"]["input_size"] == SIZE
    val = [m for m in read_metrics(tmp_path / "run") if m.get("split") == "val"]
    assert [m["step"] for m in val] == [0, 2, 4]
    for m in val:
        assert m["psnr_gain"] == pytest.approx(m["psnr"] - m["psnr_copy_source"])
        assert math.isfinite(m["psnr_mouth_gain"])  # the mouth region alone, reconstruction vs copying the source
        assert 5.0 < m["psnr"] < 60.0
    train_rows = [m for m in read_metrics(tmp_path / "run") if m.get("split") == "train"]
    assert all("d_logistic" in m and "l1" in m and "perceptual" in m for m in train_rows)
    grid = cv2.imread(str(tmp_path / "run" / "samples" / "sample_step_4.png"))
    assert grid.shape == (3 * SIZE, 3 * SIZE, 3)  # rows source | driving | reconstruction, 3 pairs


def test_l1_training_beats_copying_the_source(crops, tmp_path):
    result = train(settings(crops, tmp_path / "run", steps=40, perceptual_weight=0.0, lr=3e-3, val_step=40,
                            sample_step=0, log_step=0))
    first = read_metrics(tmp_path / "run", "val")[0]
    assert result.last_val["psnr"] > first["psnr"] + 3.0  # from the start (about the copy) towards the driving frame


def cli(crops: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer.command", "train-motion", "--data-root", str(crops), "--out", str(out),
            "--preset", "tiny", "--batch-size", "4", "--log-step", "1000", "--val-step", "0", "--sample-step", "0",
            "--pairs-per-clip", "4", "--adversarial-weight", "0.1", "--r1-every", "2", "--no-progress", *extra]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_killed_run_resumes_to_the_same_weights(crops, tmp_path):
    args = ["--steps", "8", "--save-step", "3", "--deterministic"]
    whole = subprocess.run(cli(crops, tmp_path / "whole", *args), cwd=REPO, env=env(), capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    # The same run stopped after its step-3 checkpoint (a SIGTERM'd run saves and exits 143) ...
    part = subprocess.Popen(cli(crops, tmp_path / "cut", *args), cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "cut" / "checkpoints" / ckpt.step_filename(3)
    import time

    deadline = time.time() + 200
    while not marker.exists() and part.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    part.send_signal(signal.SIGKILL)
    part.wait(timeout=30)
    assert marker.exists() and not list((tmp_path / "cut" / "checkpoints").glob("final*"))
    # ... and continued.
    resumed = subprocess.run(cli(crops, tmp_path / "cut", *args, "--resume", "auto"), cwd=REPO, env=env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-2000:]
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "whole"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "cut"))
    for part_name in ("model", "ema", "discriminator"):
        for name, tensor in a[part_name].items():
            assert torch.equal(tensor, b[part_name][name]), f"{part_name}.{name} differs after resume"


def test_latent_shards_are_refused_as_crops(tmp_path):
    latents = tmp_path / "latents"
    make_shards(latents, {"train": 2, "val": 1}, frames=12, dim_w=16, audio_dim=8, seed=0)
    with pytest.raises(TrainingError, match="latent shards, not crop shards"):
        train(settings(latents, tmp_path / "run"))


def test_perceptual_weights_of_another_architecture_are_refused(crops, tmp_path):
    wrong = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64),
                "features.2.weight": torch.zeros(64, 64, 3, 3), "features.2.bias": torch.zeros(64)}, wrong)
    with pytest.raises(TrainingError, match="vgg16.pth"):
        train(settings(crops, tmp_path / "run", perceptual_weights=str(wrong)))


def test_checkpoints_of_the_other_stage_are_refused(crops, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    fmt_like = {"version": ckpt.CHECKPOINT_VERSION, "step": 5, "model": {}, "config": {}}
    ckpt.save_checkpoint(run / "checkpoints", fmt_like, 5)
    with pytest.raises(TrainingError, match="fmt checkpoint, not a motion_autoencoder one"):
        train(settings(crops, run, resume="auto"))


def test_two_gloo_ranks_stay_in_step(crops, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys, torch\n"
        "from trainer.distributed import cleanup, init_distributed\n"
        "from trainer.settings import MotionSettings\n"
        "from trainer.train_motion import train\n"
        "info = init_distributed('cpu', timeout_s=60)\n"
        f"s = MotionSettings(data_root=sys.argv[1], out=sys.argv[2], preset='tiny', steps=3, batch_size=2,\n"
        "    pairs_per_clip=4, log_step=1, val_step=0, sample_step=0, save_step=2, progress=False,\n"
        "    tensorboard=False, adversarial_weight=0.1, r1_every=2)\n"
        "r = train(s, info=info)\n"
        "torch.save({'model': r.model.state_dict()}, f'{sys.argv[2]}/weights-rank{info.rank}.pt')\n"
        "cleanup()\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver),
           str(crops), str(tmp_path / "run")]
    done = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(tmp_path / "run" / "weights-rank0.pt")["model"]
    b = torch.load(tmp_path / "run" / "weights-rank1.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["world_size"] == 2


def test_init_starts_from_a_stage1_checkpoint_or_an_official_file_and_refuses_others(crops, tmp_path):
    from crop_factory import write_stage1_checkpoint
    from float.motion_checkpoint import load_motion_checkpoint

    stage1 = write_stage1_checkpoint(tmp_path / "s1.pt", size=SIZE, width=0.125)
    result = train(settings(crops, tmp_path / "run", steps=1, lr=0.0, val_step=0, sample_step=0,
                            init=str(stage1)))
    expected, _, _ = load_motion_checkpoint(stage1)  # its EMA weights
    for name, value in expected.state_dict().items():
        assert torch.equal(result.model.state_dict()[name], value), name
    official = tmp_path / "float.pth"
    torch.save({f"motion_autoencoder.{k}": v for k, v in expected.state_dict().items()}, official)
    with pytest.raises(TrainingError, match="do not fit|motion auto-encoder"):  # full-width names, thin model
        train(settings(crops, tmp_path / "run2", steps=1, init=str(official)))
    stranger = tmp_path / "other.pt"
    torch.save({"fmt.x": torch.zeros(1)}, stranger)
    with pytest.raises(TrainingError, match="other.pt"):
        train(settings(crops, tmp_path / "run3", steps=1, init=str(stranger)))
