"""The trainers' step near the card's limit, tested on the CPU: no host read inside a step (the skip of a
non-finite step decided on the device), fused AdamW, the one-batch-ahead device feed with exact positions,
--lr-scaling, channels-last for stage 1 and --d-every. The CUDA-only effects (side stream overlap, NHWC
kernels) are not measured here."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from crop_factory import make_crop_shards
from float.discriminator import Discriminator
from float.motion_autoencoder import MotionAutoEncoder
from float.motion_training import prepare_for_training, to_channels_last
from run_settings import AUDIO_DIM, DIM_W, fmt_settings, motion_settings
from shard_factory import make_shards
from shards.loader import make_loader
from shards.sources import shard_urls
from shards.windows import WindowSpec
from trainer import checkpoints as ckpt
from trainer.command import train as train_command
from trainer.device_feed import DeviceFeed
from trainer.device_step import keep_fused, optimizer_step, supports_found_inf
from trainer import ema as ema_module
from trainer.ema import EMA
from trainer.errors import TrainingError
from trainer.run import make_optimizer
from trainer.schedule import lr_batch_factor
from trainer.train_fmt import train
from trainer.train_motion import train as train_motion

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    make_shards(folder, {"train": 8, "val": 0}, frames=60, dim_w=DIM_W, audio_dim=AUDIO_DIM, seed=0)
    return folder


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crops")
    make_crop_shards(folder, {"train": 4, "val": 0}, frames=8, size=32, seed=0)
    return folder


# ---------------------------------------------------------------- the device-side skip
def test_a_skipped_fused_step_changes_nothing_and_a_kept_one_equals_a_plain_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = make_optimizer(model.parameters(), 0.1, 0.01)
    assert supports_found_inf(optimizer)  # fused AdamW on the CPU too: the CUDA path's logic is tested here
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    plain = torch.optim.AdamW(reference.parameters(), lr=0.1, weight_decay=0.01)
    for p, q in zip(model.parameters(), reference.parameters()):
        p.grad = torch.full_like(p, 0.5)
        q.grad = p.grad.clone()
    optimizer_step(optimizer, torch.tensor(1.0))
    assert torch.equal(model.weight, reference.weight) and all(
        float(s["step"]) == 0 and not s["exp_avg"].any() for s in optimizer.state.values())
    start = model.weight.detach().clone()
    optimizer_step(optimizer, torch.tensor(0.0))
    plain.step()
    assert torch.allclose(model.weight, reference.weight, atol=1e-6) and not torch.equal(model.weight, start)
    assert all(float(s["step"]) == 1 for s in optimizer.state.values())


def test_a_fused_optimizer_stays_fused_after_loading_a_plain_optimizers_state():
    model = torch.nn.Linear(2, 2)
    plain = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.weight.grad, model.bias.grad = torch.ones(2, 2), torch.ones(2)
    plain.step()
    fused = make_optimizer(model.parameters(), 0.1, 0.0)
    fused.load_state_dict(plain.state_dict())  # torch restores the checkpoint's own fused=None
    assert not supports_found_inf(fused)
    keep_fused(fused)
    assert supports_found_inf(fused)
    assert all(s["step"].dtype == torch.float32 for s in fused.state.values())


@pytest.mark.parametrize("host_read", [True, False], ids=["host-read", "masked-on-device"])
def test_the_ema_holds_still_on_a_skipped_step_and_follows_on_a_kept_one(host_read, monkeypatch):
    monkeypatch.setattr(ema_module, "HOST_READ_FREE", {"cpu"} if host_read else set())
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    before = ema.shadow.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, skip=torch.tensor(1.0))
    assert torch.equal(ema.shadow.weight, before)
    ema.update(model, skip=torch.tensor(0.0))
    assert torch.allclose(ema.shadow.weight, 0.5 * before + 0.5 * model.weight)


def test_no_host_read_inside_a_step_only_at_log_steps(shards, tmp_path, monkeypatch):
    """Every read of a device value by our code (trainer/, float/), by the function that made it: none
    from the step's functions (on a GPU each would make the CPU wait for the GPU's queue to drain)."""
    callers: list[str] = []
    our_code = (str(REPO / "trainer"), str(REPO / "float"))

    def spy(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            frame = __import__("sys")._getframe(1)
            if frame.f_code.co_filename.startswith(our_code):
                callers.append(frame.f_code.co_name)
            return original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, read)

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        spy(name)
    monkeypatch.setattr(ema_module, "HOST_READ_FREE", set())  # the CUDA path: the CPU's own reads are free
    train(fmt_settings(shards, tmp_path / "run", steps=8, log_step=4), samples_hook=lambda path: None)
    step_code = {"run_loop", "compute_gradients", "apply_update", "optimizer_step", "update", "add", "after_step",
                 "loss", "rectified_flow_loss", "forward"}
    assert callers and not step_code & set(callers), callers
    assert callers.count("_log_window") == 2 * 2  # two log steps, two reads each (the sums, the means)


def test_a_non_finite_step_is_skipped_counted_and_logged_at_the_log_step(shards, tmp_path):
    from float.loss import rectified_flow_loss

    calls = {"n": 0}

    def loss_fn(model, batch, weights, **kw):
        out = rectified_flow_loss(model, batch, weights, **kw)
        calls["n"] += 1
        return {k: v * float("nan") for k, v in out.items()} if calls["n"] == 2 else out

    result = train(fmt_settings(shards, tmp_path / "run", steps=6, log_step=3), loss_fn=loss_fn)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "samples_per_s" in r]
    assert [r["nonfinite_steps"] for r in train_rows] == [1, 1] and result.nonfinite_steps == 1
    assert all(r["total"] == r["total"] for r in train_rows)  # the mean leaves the bad step out: no NaN


# ---------------------------------------------------------------- the device feed
def test_the_feed_one_batch_ahead_hands_out_the_same_batches_and_records_their_position(shards):
    spec = WindowSpec(num_frames=10, num_prev_frames=2)
    urls = shard_urls(shards, "train")

    def loader():
        return make_loader(urls, spec, 2, 0, seed=1, motion_dim=DIM_W, audio_dim=AUDIO_DIM)

    plain_loader, feed = loader(), DeviceFeed(loader(), torch.device("cpu"), ahead=True)
    plain, ahead = iter(plain_loader), iter(feed)
    for _ in range(3):
        a, b = next(plain), next(ahead)
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
        # the feed's loader is a batch further on; its recorded position is the handed-out one
        assert feed.loader.batches == plain_loader.batches + 1
        assert feed.state_dict() == plain_loader.state_dict()
    resumed = loader()
    resumed.load_state_dict(feed.state_dict())
    following = next(iter(resumed))
    assert torch.equal(following["motion"], next(plain)["motion"])


# ---------------------------------------------------------------- --lr-scaling
def test_lr_scaling_rules_against_the_papers_batch():
    assert lr_batch_factor("none", 64) == 1.0
    assert lr_batch_factor("linear", 64) == 8.0 and lr_batch_factor("sqrt", 32) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="--lr-scaling"):
        lr_batch_factor("cubic", 8)


def test_the_scaled_rate_is_used_and_printed(shards, tmp_path, capsys):
    train(fmt_settings(shards, tmp_path / "run", steps=1, batch_size=4, grad_accum=8, lr=1e-3, lr_scaling="sqrt",
                       warmup=0), samples_hook=lambda path: None)
    printed = capsys.readouterr().out
    assert "lr 0.002," in printed and "lr_scaling sqrt (global batch 32 vs the paper's 8: x2)" in printed
    state = ckpt.load_checkpoint(next((tmp_path / "run" / "checkpoints").glob("final*")))
    assert state["schedule"]["lr"] == pytest.approx(2e-3)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-3)


def test_a_bad_lr_scaling_is_one_line_and_exit_2(shards, tmp_path):
    app = typer.Typer()
    app.command()(train_command)
    result = CliRunner().invoke(app, ["--data-root", str(shards), "--out", str(tmp_path / "run"),
                                      "--lr-scaling", "cubic"])
    assert result.exit_code == 2 and "--lr-scaling 'cubic'" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- stage 1: channels-last, --d-every
def test_channels_last_gives_the_default_formats_outputs_and_gradients():
    torch.manual_seed(0)
    model = prepare_for_training(MotionAutoEncoder(32, 64, 8, 0.125))
    discriminator = Discriminator(32, width=0.125)
    source, driving = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    recon = model(source, driving)
    logits = discriminator(recon)
    logits.sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(), discriminator.zero_grad()
    to_channels_last(model, discriminator)
    assert model.enc.net_app.convs[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    source_cl, driving_cl = to_channels_last(source, driving)
    recon_cl = model(source_cl, driving_cl)
    logits_cl = discriminator(recon_cl)
    logits_cl.sum().backward()
    assert torch.allclose(recon_cl, recon, atol=1e-5) and torch.allclose(logits_cl, logits, atol=1e-5)
    grads_cl = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(grads_cl, grads))


def test_d_every_steps_the_discriminator_on_every_nth_step_and_resumes(crops, tmp_path):
    result = train_motion(motion_settings(crops, tmp_path / "run", steps=5, adversarial_weight=0.1, d_every=2,
                                          channels_last=True))
    state = ckpt.load_checkpoint(result.final_checkpoint)
    d_steps = {float(s["step"]) for s in state["d_optimizer"]["state"].values()}
    assert d_steps == {3.0}  # steps 0, 2 and 4 of 0..4
    g_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert g_steps == {5.0}
    resumed = train_motion(motion_settings(crops, tmp_path / "run", steps=7, adversarial_weight=0.1, d_every=2,
                                           resume="auto"))
    state = ckpt.load_checkpoint(resumed.final_checkpoint)
    assert {float(s["step"]) for s in state["d_optimizer"]["state"].values()} == {4.0}  # and step 6
    with pytest.raises(TrainingError, match="--d-every"):
        train_motion(motion_settings(crops, tmp_path / "bad", d_every=0))


def test_a_channels_last_checkpoint_loads_as_a_plain_auto_encoder(crops, tmp_path):
    from float.motion_checkpoint import load_motion_checkpoint

    result = train_motion(motion_settings(crops, tmp_path / "run", steps=1, channels_last=True))
    model, _, _ = load_motion_checkpoint(result.final_checkpoint)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    expected = result.ema_model(to_channels_last(x), to_channels_last(x))
    assert torch.allclose(model(x, x), expected, atol=1e-5)
