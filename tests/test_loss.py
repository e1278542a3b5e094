import pytest
import torch
from torch import nn

from conftest import IdentityNorm
from float.config import get_preset
from float.fmt import CONDITIONS, keep_all_conditions, sample_condition_keep
from float.loss import LossWeights, rectified_flow_loss


class Oracle(IdentityNorm, nn.Module):
    """Predicts the exact velocity and preceding latents, plus chosen errors."""

    def __init__(self, cfg, batch, noise, cur_err=None, prev_err=None):
        super().__init__()
        self.cfg, self.batch, self.noise = cfg, batch, noise
        self.cur_err, self.prev_err = cur_err, prev_err

    def forward(self, t, x, audio, prev_audio, wr, we, prev_x, prev_mask=None, audio_keep=None):
        v = self.batch["motion"] - self.noise
        prev = self.batch["prev_motion"].clone()
        if self.cur_err is not None:
            v = v + self.cur_err
        if self.prev_err is not None:
            prev = prev + self.prev_err
        return torch.cat([prev, v], dim=1)


def make_batch(cfg, B=3):
    g = torch.Generator().manual_seed(0)
    N, P, D = cfg.num_frames, cfg.num_prev_frames, cfg.dim_w
    return {
        "motion": torch.randn(B, N, D, generator=g),
        "prev_motion": torch.randn(B, P, D, generator=g),
        "prev_mask": torch.ones(B, P, dtype=torch.bool),
        "audio": torch.randn(B, N, 16, generator=g),
        "prev_audio": torch.randn(B, P, 16, generator=g),
        "ref_motion": torch.randn(B, D, generator=g),
        "emotion": torch.zeros(B, 7),
    }


def keep_all(B):
    return {k: torch.ones(B) for k in ("audio", "ref", "emotion", "prev", "prev_audio")}


def test_perfect_predictor_has_zero_loss():
    cfg = get_preset("tiny", dim_w=8)
    batch = make_batch(cfg)
    noise = torch.randn_like(batch["motion"])
    out = rectified_flow_loss(Oracle(cfg, batch, noise), batch, noise=noise, keep=keep_all(3))
    for k in ("total", "current", "preceding", "velocity"):
        assert out[k].item() < 1e-6, k


def test_each_term_responds_to_its_error():
    cfg = get_preset("tiny", dim_w=8)
    batch = make_batch(cfg)
    noise = torch.randn_like(batch["motion"])
    N = cfg.num_frames
    # a constant offset on the velocity: current term only (differences cancel)
    out = rectified_flow_loss(Oracle(cfg, batch, noise, cur_err=0.5), batch, noise=noise, keep=keep_all(3))
    assert abs(out["current"].item() - 0.5) < 1e-5 and out["velocity"].item() < 1e-6 and out["preceding"].item() < 1e-6
    # an error alternating in time: velocity term sees twice its amplitude
    alt = (torch.arange(N) % 2 * 2 - 1).float().view(1, N, 1) * 0.25
    out = rectified_flow_loss(Oracle(cfg, batch, noise, cur_err=alt), batch, noise=noise, keep=keep_all(3))
    assert abs(out["velocity"].item() - 0.5) < 1e-5
    # preceding outputs wrong: preceding term only
    out = rectified_flow_loss(Oracle(cfg, batch, noise, prev_err=1.0), batch, noise=noise, keep=keep_all(3))
    assert abs(out["preceding"].item() - 1.0) < 1e-5 and out["current"].item() < 1e-6
    # weights scale the total
    w = LossWeights(current=2.0, preceding=0.0, velocity=3.0)
    out = rectified_flow_loss(Oracle(cfg, batch, noise, cur_err=alt, prev_err=1.0), batch, weights=w, noise=noise, keep=keep_all(3))
    assert abs(out["total"].item() - (2 * 0.25 + 3 * 0.5)) < 1e-5


def test_preceding_term_ignores_missing_and_dropped_frames():
    cfg = get_preset("tiny", dim_w=8)
    batch = make_batch(cfg)
    batch["prev_mask"][0, :4] = False  # window starting at frame 6: 4 padded positions
    noise = torch.randn_like(batch["motion"])
    err = torch.zeros(3, cfg.num_prev_frames, 8)
    err[0, :4] = 7.0  # errors only on padded positions ...
    keep = keep_all(3)
    keep["prev"][1] = 0.0
    err[1] = 9.0  # ... and on a sample whose preceding condition was dropped
    out = rectified_flow_loss(Oracle(cfg, batch, noise, prev_err=err), batch, noise=noise, keep=keep)
    assert out["preceding"].item() < 1e-6


def test_condition_dropout_rates():
    cfg = get_preset("tiny")
    keep = sample_condition_keep(cfg, 20000, "cpu", torch.Generator().manual_seed(0))
    assert abs(1 - keep["audio"].mean().item() - cfg.audio_dropout) < 0.01
    assert abs(1 - keep["prev"].mean().item() - cfg.prev_dropout) < 0.015
    # independent draws per condition
    assert not torch.equal(keep["audio"], keep["ref"])


class Recorder(IdentityNorm, nn.Module):
    """Records the inputs the loss feeds the model; predicts zeros."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.seen = cfg, {}

    def forward(self, t, x, audio, prev_audio, wr, we, prev_x, prev_mask=None, audio_keep=None):
        self.seen = dict(audio_keep=audio_keep, wr=wr, we=we, prev_x=prev_x, prev_mask=prev_mask)
        return torch.zeros(x.shape[0], prev_x.shape[1] + x.shape[1], x.shape[2])


@pytest.mark.parametrize("which,zeroed", [
    ("audio", "audio_keep"),  # the guidance's unconditional pass keeps the preceding audio
    ("ref", "wr"),
    ("emotion", "we"),
    ("prev", "prev_x"),
    ("prev_audio", "prev_mask"),
])
def test_each_dropped_condition_reaches_the_model_zeroed(which, zeroed):
    cfg = get_preset("tiny")
    batch = make_batch(cfg)
    model = Recorder(cfg)
    rectified_flow_loss(model, batch, keep=keep_all_conditions(3, "cpu"))
    kept = {k: v.clone() for k, v in model.seen.items()}
    keep = keep_all_conditions(3, "cpu")
    keep[which][1] = 0.0
    rectified_flow_loss(model, batch, keep=keep)
    assert not model.seen[zeroed][1].any()
    assert torch.equal(model.seen[zeroed][0], kept[zeroed][0])
    for name, value in model.seen.items():
        if name != zeroed:
            assert torch.equal(value, kept[name])


def test_condition_keep_reproducible_and_keys_are_the_conditions():
    cfg = get_preset("tiny")
    first = sample_condition_keep(cfg, 64, "cpu", torch.Generator().manual_seed(7))
    again = sample_condition_keep(cfg, 64, "cpu", torch.Generator().manual_seed(7))
    assert tuple(first) == CONDITIONS == tuple(keep_all_conditions(2, "cpu"))
    assert all(torch.equal(first[k], again[k]) for k in CONDITIONS)
