"""Motion auto-encoder: official names/shapes, parity with the official fixture,
batched decoding and the offline per-frame motion path."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from conftest import crc_fill
from float.motion_autoencoder import MotionAutoEncoder

PREFIX = "motion_autoencoder."
TOL = 1e-4


@pytest.fixture(scope="module")
def fixture(ref_dir):
    return torch.load(ref_dir / "motion_autoencoder_small.pt", weights_only=True)


@pytest.fixture(scope="module")
def fixture_model(fixture):
    model = MotionAutoEncoder(**fixture["config"]).eval()
    fill = fixture["fill"]
    crc_fill(model, fill["prefix"], fill["scale"], skip=fill.get("skip", ()))
    return model


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return MotionAutoEncoder(size=16, style_dim=64, motion_dim=8).eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_fixture_parameter_names_match(fixture, fixture_model):
    ours = {PREFIX + k: list(p.shape) for k, p in fixture_model.named_parameters()}
    official = {k: list(v) for k, v in fixture["parameters"].items()}
    assert ours == official


def test_fixture_parity(fixture, fixture_model):
    images = fixture["inputs"]["images"]
    expected = fixture["outputs"]
    with torch.no_grad():
        appearance, lambdas, feats = fixture_model.encode(images)
        motion = fixture_model.motion_from_lambdas(lambdas)
        # image i from appearance[i] + motion[1-i], warping the feats of image i
        decoded = fixture_model.decode(appearance, motion.flip(0), feats)
    assert _max_diff(appearance, expected["appearance"]) <= TOL
    assert len(feats) == len(expected["feats"]) == 4
    for ours, ref in zip(feats, expected["feats"]):
        assert _max_diff(ours, ref) <= TOL
    assert _max_diff(lambdas, expected["lambdas"]) <= TOL
    assert _max_diff(motion, expected["motion"]) <= TOL
    assert _max_diff(decoded, expected["decoded"]) <= TOL


def test_fixture_encode_motion(fixture, fixture_model):
    with torch.no_grad():
        motion, lambdas = fixture_model.encode_motion(fixture["inputs"]["images"])
    assert _max_diff(motion, fixture["outputs"]["motion"]) <= TOL
    assert _max_diff(lambdas, fixture["outputs"]["lambdas"]) <= TOL


def test_official_size_names_shapes_and_count(ref_dir):
    listed = json.loads((ref_dir / "float_default_parameters.json").read_text())
    official_params = {k[len(PREFIX):]: list(v) for k, v in listed["parameters"].items()
                       if k.startswith(PREFIX)}
    official_buffers = {k[len(PREFIX):]: list(v) for k, v in listed["buffers"].items()
                        if k.startswith(PREFIX)}
    model = MotionAutoEncoder(size=512, style_dim=512, motion_dim=20)
    assert {k: list(p.shape) for k, p in model.named_parameters()} == official_params
    assert {k: list(b.shape) for k, b in model.named_buffers()} == official_buffers
    # every buffer is persistent, so a strict load of the official state dict fits
    assert set(model.state_dict()) == set(official_params) | set(official_buffers)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(math.prod(s) for s in official_params.values())
    assert round(n_params / 1e6, 1) == 45.2


def test_encode_motion_matches_encode(small_model):
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        _, lambdas, _ = small_model.encode(images)
        motion, lambdas_m = small_model.encode_motion(images)
        expected = small_model.motion_from_lambdas(lambdas)
    assert motion.shape == (3, 64) and lambdas_m.shape == (3, 8)
    assert torch.allclose(lambdas_m, lambdas, atol=1e-6)
    assert torch.allclose(motion, expected, atol=1e-6)
    # per-sample: frames do not mix across the batch
    with torch.no_grad():
        single, _ = small_model.encode_motion(images[1:2])
    assert torch.allclose(single, motion[1:2], atol=1e-5)


def test_motion_basis_is_orthonormal(small_model):
    basis = small_model.dec.direction.basis()
    assert basis.shape == (64, 8)
    assert torch.allclose(basis.t() @ basis, torch.eye(8), atol=1e-5)
    lambdas = torch.randn(4, 8)
    motion = small_model.motion_from_lambdas(lambdas)
    # the basis is orthonormal, so the coefficients are recovered by projection
    assert torch.allclose(motion @ basis, lambdas, atol=1e-5)


def test_batched_decode_with_one_source_equals_per_sample(small_model):
    # float64, so that any mixing between batch items would stand out far above
    # rounding (float32 rounding alone reaches ~1e-4 through this deep decoder)
    model = copy.deepcopy(small_model).double()
    gen = torch.Generator().manual_seed(1)
    source = torch.rand(1, 3, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    motions = torch.randn(4, 64, generator=gen, dtype=torch.float64) * 0.5
    with torch.no_grad():
        appearance, _, feats = model.encode(source)
        batched = model.decode(appearance, motions, feats)
        one_by_one = torch.cat([model.decode(appearance, motions[i:i + 1], feats)
                                for i in range(4)])
        repeated = model.decode(appearance.expand(4, -1), motions,
                                [f.expand(4, -1, -1, -1) for f in feats])
    assert batched.shape == (4, 3, 16, 16)
    assert _max_diff(batched, one_by_one) <= 1e-10
    assert _max_diff(batched, repeated) <= 1e-10
    # different motions must give different images (the motion is not ignored)
    assert _max_diff(batched[0], batched[1]) > 1e-3


def test_decode_is_differentiable_in_motion(small_model):
    with torch.no_grad():
        appearance, _, feats = small_model.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
    motion = torch.zeros(2, 64, requires_grad=True)
    small_model.decode(appearance, motion, feats).square().mean().backward()
    assert motion.grad is not None and motion.grad.abs().sum() > 0


def test_bad_inputs_raise(small_model):
    with pytest.raises(ValueError, match=r"\(B,3,16,16\)"):
        small_model.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B,3,16,16\)"):
        small_model.encode_motion(torch.zeros(3, 16, 16))
    with torch.no_grad():
        appearance, _, feats = small_model.encode(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="batch sizes"):
        small_model.decode(appearance, torch.zeros(3, 64), feats)
    with pytest.raises(ValueError, match="needs 2 feature maps"):
        small_model.decode(appearance, torch.zeros(2, 64), feats[:1])
    with pytest.raises(ValueError, match="power of two"):
        MotionAutoEncoder(size=48)


def test_runs_at_128_px():
    torch.manual_seed(2)
    model = MotionAutoEncoder(size=128, style_dim=512, motion_dim=20).eval()
    with torch.no_grad():
        appearance, lambdas, feats = model.encode(torch.rand(1, 3, 128, 128) * 2 - 1)
        motions = model.motion_from_lambdas(torch.randn(2, 20))
        images = model.decode(appearance, motions, feats)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (512, 8, 8), (512, 16, 16), (512, 32, 32), (256, 64, 64), (128, 128, 128)]
    assert appearance.shape == (1, 512) and lambdas.shape == (1, 20)
    assert images.shape == (2, 3, 128, 128)
    assert torch.isfinite(images).all()


def test_thin_width_scales_channels_and_runs():
    from float.motion_autoencoder import channels_for

    assert channels_for(1.0)[128] == 128 and channels_for(0.125)[128] == 16 and channels_for(0.125)[4] == 64
    full, thin = MotionAutoEncoder(32), MotionAutoEncoder(32, width=0.125)
    assert sum(p.numel() for p in thin.parameters()) < sum(p.numel() for p in full.parameters()) / 4
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        app, lambdas, feats = thin.encode(images)
        out = thin.decode(app, thin.motion_from_lambdas(lambdas), feats)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="width"):
        MotionAutoEncoder(32, width=0)
