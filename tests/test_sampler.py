import math

import pytest
import torch
from torch import nn

from conftest import IdentityNorm
from float.config import get_preset
from float.sampler import generate_motion, integrate, time_grid


def counting(f):
    calls = []

    def wrapped(t, x):
        calls.append(float(t))
        return f(t, x)

    return wrapped, calls


@pytest.mark.parametrize("solver,nfe,tol", [("euler", 1000, 2e-3), ("midpoint", 40, 2e-3), ("rk4", 40, 1e-5)])
def test_solvers_integrate_exponential_to_analytic_answer(solver, nfe, tol):
    x0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    f, calls = counting(lambda t, x: x)
    x1 = integrate(f, x0, nfe=nfe, solver=solver)
    assert len(calls) == nfe
    assert torch.allclose(x1, x0 * math.e, rtol=tol, atol=0)


def test_time_dependent_field_rk4_exact_for_cubic():
    # dx/dt = 3 t^2 -> x(1) = x0 + 1; RK4 is exact for polynomials of degree <= 3 in t.
    x1 = integrate(lambda t, x: 3 * t**2 * torch.ones_like(x), torch.zeros(3, dtype=torch.float64), nfe=4, solver="rk4")
    assert torch.allclose(x1, torch.ones(3, dtype=torch.float64))


def test_official_grid_takes_nfe_minus_one_euler_steps():
    f, calls = counting(lambda t, x: torch.ones_like(x))
    integrate(f, torch.zeros(1), nfe=10, official_grid=True)
    assert len(calls) == 9
    assert torch.allclose(time_grid(10, official_grid=True), torch.linspace(0, 1, 10))


def test_bad_nfe_for_solver_is_an_error():
    with pytest.raises(ValueError, match="rk4"):
        time_grid(6, "rk4")
    with pytest.raises(ValueError, match="unknown solver"):
        time_grid(4, "heun")
    with pytest.raises(ValueError, match="official"):
        time_grid(4, "rk4", official_grid=True)


class CopyPrevFMT(nn.Module):
    """A vector field whose flow ends at the last preceding frame (or at the audio when there is none).

    v = (target - x) / (1 - t) carries x exactly to target under Euler, so the
    generated window is constant and equal to its target.
    """

    def __init__(self, log):
        super().__init__()
        self.log = log

    def forward_with_cfv(self, t, x, wa, wr, we, prev_x, prev_wa, a_cfg_scale, r_cfg_scale, e_cfg_scale):
        self.log.append((prev_x.clone(), prev_wa.clone(), wa.clone()))
        has_prev = prev_x.abs().sum() > 0
        target = prev_x[:, -1:] if has_prev else wa[:, :1, : x.shape[-1]]
        v = (target - x) / (1 - t.view(1, 1, 1))
        return torch.cat([prev_x, v], dim=1)


class FakeModel(IdentityNorm, nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.log = []
        self.fmt = CopyPrevFMT(self.log)

    def project_audio(self, a):
        return a * 2


def test_chunked_generation_is_continuous_and_feeds_previous_frames():
    cfg = get_preset("tiny", dim_w=8, dim_a=8)
    model = FakeModel(cfg)
    T = 2 * cfg.num_frames + 7  # two full windows and a short one
    audio = torch.randn(2, T, 8)
    out = generate_motion(model, audio, wr=torch.randn(2, 8), we=torch.zeros(2, 7), nfe=5, seed=0)
    assert out.shape == (2, T, 8)
    N, P = cfg.num_frames, cfg.num_prev_frames
    # first window: zeros as the preceding condition
    first_prev_x, first_prev_wa, _ = model.log[0]
    assert first_prev_x.abs().sum() == 0 and first_prev_wa.abs().sum() == 0
    # every later window starts where the previous one ended (continuous across borders)
    for border in (N, 2 * N):
        assert torch.allclose(out[:, border], out[:, border - 1], atol=1e-5)
    # and is conditioned on the last P generated frames and their projected audio
    second_prev_x, second_prev_wa, _ = model.log[5]
    assert torch.allclose(second_prev_x, out[:, N - P : N], atol=1e-5)
    assert torch.allclose(second_prev_wa, 2 * audio[:, N - P : N])
    # the short last window is padded by repeating its last audio frame
    _, _, last_wa = model.log[-1]
    assert last_wa.shape[1] == N
    assert torch.equal(last_wa[:, 7:], (2 * audio[:, -1:]).expand(-1, N - 7, -1))


def test_generation_noise_is_seeded():
    cfg = get_preset("tiny", dim_w=8, dim_a=8)

    class NoiseEcho(FakeModel):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.fmt.forward_with_cfv = lambda t, x, *a, **k: torch.cat([torch.zeros_like(x[:, : cfg.num_prev_frames]), torch.zeros_like(x)], 1)

    m = NoiseEcho(cfg)
    a = torch.randn(1, 60, 8)
    kw = dict(wr=torch.zeros(1, 8), we=torch.zeros(1, 7), nfe=2)
    assert torch.equal(generate_motion(m, a, seed=3, **kw), generate_motion(m, a, seed=3, **kw))
    assert not torch.equal(generate_motion(m, a, seed=3, **kw), generate_motion(m, a, seed=4, **kw))


def test_official_grid_reseeds_every_window_like_the_official_fix_noise_seed():
    # A zero field leaves x = x0, so the output shows each window's starting noise.
    cfg = get_preset("tiny", dim_w=8, dim_a=8)

    class NoiseEcho(FakeModel):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.fmt.forward_with_cfv = lambda t, x, *a, **k: torch.zeros(x.shape[0], cfg.num_prev_frames + x.shape[1], x.shape[2])

    m, N = NoiseEcho(cfg), cfg.num_frames
    a = torch.randn(1, 2 * N, 8)
    kw = dict(wr=torch.zeros(1, 8), we=torch.zeros(1, 7), nfe=3, seed=15)
    official = generate_motion(m, a, official_grid=True, **kw)
    assert torch.equal(official[:, :N], official[:, N:])  # the same x0 in both windows
    expected = torch.randn(1, N, 8, generator=torch.Generator().manual_seed(15))
    assert torch.equal(official[:, :N], expected)
    ours = generate_motion(m, a, **kw)  # one generator for the whole clip: fresh noise per window
    assert torch.equal(ours[:, :N], expected) and not torch.equal(ours[:, :N], ours[:, N:])
