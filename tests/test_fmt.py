"""Flow Matching Transformer: official names, parity with the official module,
local attention, condition dropout, autocast."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import crc_fill

from float.config import get_preset
from float.fmt import FlowMatchingTransformer, alignment_mask

TOL = 1e-5


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def fixture(ref_dir):
    return torch.load(ref_dir / "fmt_small.pt", weights_only=True)


def fixture_config(fixture):
    c = fixture["config"]
    return get_preset("tiny", dim_w=c["dim_w"], dim_a=c["dim_a"], dim_e=c["dim_e"], dim_h=c["dim_h"],
                      depth=c["fmt_depth"], num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"],
                      wav2vec_sec=c["wav2vec_sec"], fps=int(c["fps"]),
                      num_prev_frames=c["num_prev_frames"], attention_window=c["attention_window"])


@pytest.fixture(scope="module")
def official_model(fixture):
    model = FlowMatchingTransformer(fixture_config(fixture)).eval()
    fill = fixture["fill"]
    crc_fill(model, fill["prefix"], fill["scale"], fill["skip"])
    return model


def small_model(**overrides) -> FlowMatchingTransformer:
    """A tiny FMT with non-zero random weights (the DiT init zeroes the output)."""
    sizes = dict(dim_w=16, dim_a=12, dim_h=32, depth=1, num_heads=2)
    cfg = get_preset("tiny", **{**sizes, **overrides})
    model = FlowMatchingTransformer(cfg)
    crc_fill(model, "fmt.", 0.1)
    return model


def random_inputs(cfg, batch: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n, p = cfg.num_frames, cfg.num_prev_frames
    return dict(
        t=torch.rand(batch, generator=g),
        x=torch.randn(batch, n, cfg.dim_w, generator=g),
        wa=torch.randn(batch, n, cfg.dim_a, generator=g),
        wr=torch.randn(batch, cfg.dim_w, generator=g),
        we=torch.softmax(torch.randn(batch, 1, cfg.dim_e, generator=g), dim=-1),
        prev_x=torch.randn(batch, p, cfg.dim_w, generator=g),
        prev_wa=torch.randn(batch, p, cfg.dim_a, generator=g),
    )


# ---------------------------------------------------------------- official names and parity
def test_fixture_parameter_names_match(fixture, official_model):
    ours = {"fmt." + k: list(v.shape) for k, v in official_model.named_parameters()}
    assert ours == {k: list(v) for k, v in fixture["parameters"].items()}


def test_forward_matches_official(fixture, official_model):
    with torch.no_grad():
        out = official_model(**fixture["inputs"])
    assert out.shape == fixture["outputs"]["forward"].shape == (3, 60, 64)
    assert (out - fixture["outputs"]["forward"]).abs().max().item() <= TOL


@pytest.mark.parametrize("key,e_scale", [("cfv_a2_e1", 1.0), ("cfv_a2_e1_5", 1.5)])
def test_cfv_matches_official(fixture, official_model, key, e_scale):
    out = official_model.forward_with_cfv(**fixture["cfv_inputs"], a_cfg_scale=2.0, e_cfg_scale=e_scale)
    assert (out - fixture["outputs"][key]).abs().max().item() <= TOL


def test_cfv_with_unit_scales_is_plain_forward(fixture, official_model):
    inputs = fixture["cfv_inputs"]
    with torch.no_grad():
        plain = official_model(**inputs)
    cfv = official_model.forward_with_cfv(**inputs, a_cfg_scale=1.0, e_cfg_scale=1.0)
    assert torch.allclose(cfv, plain, atol=1e-6)


def test_scalar_time_broadcasts_and_emotion_rank(fixture, official_model):
    inputs = dict(fixture["cfv_inputs"])
    with torch.no_grad():
        shared = official_model(**inputs)
        per_sample = official_model(**{**inputs, "t": inputs["t"].expand(3).clone()})
        flat_we = official_model(**{**inputs, "we": inputs["we"][:, 0]})
        cfv_shared = official_model.forward_with_cfv(**inputs)
        cfv_per_sample = official_model.forward_with_cfv(**{**inputs, "t": inputs["t"].expand(3).clone()})
    assert torch.allclose(shared, per_sample, atol=1e-6)
    assert torch.equal(shared, flat_we)
    assert torch.allclose(cfv_shared, cfv_per_sample, atol=1e-6)


def test_paper_model_has_the_official_names_shapes_and_count(ref_dir):
    listing = json.loads((ref_dir / "float_default_parameters.json").read_text())
    official = {k[len("fmt."):]: tuple(v) for k, v in listing["parameters"].items() if k.startswith("fmt.")}
    official_buffers = {k[len("fmt."):]: tuple(v) for k, v in listing["buffers"].items() if k.startswith("fmt.")}
    with torch.device("meta"):  # shapes only, no 600 MB allocation
        model = FlowMatchingTransformer(get_preset("paper"))
    assert {k: tuple(p.shape) for k, p in model.named_parameters()} == official
    assert {k: tuple(b.shape) for k, b in model.named_buffers()} == official_buffers
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(math.prod(s) for s in official.values())
    assert round(count / 1e6, 1) == 156.7  # the README's figure
    assert not model.pos_embed.requires_grad  # fixed table, never trained


# ---------------------------------------------------------------- structure
def test_alignment_mask_blocks_beyond_window():
    mask = alignment_mask(8, 2)
    for i in range(8):
        for j in range(8):
            assert bool(mask[i, j]) == (abs(i - j) > 2)


@pytest.mark.parametrize("depth", [1, 2])
def test_attention_is_local(depth):
    """A change at one frame reaches exactly the frames within depth * window."""
    model = small_model(depth=depth).eval()
    cfg = model.cfg
    inputs = random_inputs(cfg, batch=1)
    frame = 30
    position = cfg.num_prev_frames + frame  # x follows the preceding frames
    changed_inputs = dict(inputs, x=inputs["x"].clone())
    changed_inputs["x"][:, frame] += 1.0
    with torch.no_grad():
        diff = (model(**changed_inputs) - model(**inputs)).abs().amax(dim=(0, 2))
    reach = depth * cfg.attention_window
    inside = (torch.arange(cfg.seq_len) - position).abs() <= reach
    assert diff[~inside].max().item() == 0.0
    assert diff[inside].min().item() > 1e-6  # the whole receptive field does see it


def test_rejects_bad_shapes():
    model = small_model().eval()
    good = random_inputs(model.cfg, batch=2)
    bad_cases = {
        "x": good["x"][:, :40],
        "wa": good["wa"][..., :5],
        "wr": good["wr"][:1],
        "we": good["we"][..., :3],
        "prev_x": good["prev_x"][:, :4],
        "t": torch.rand(3),
    }
    for name, value in bad_cases.items():
        with pytest.raises(ValueError, match=name):
            model(**{**good, name: value})


# Condition dropout is drawn by float.fmt.sample_condition_keep and applied by the loss only:
# its tests live in tests/test_loss.py.


def test_training_backward_reaches_every_trainable_parameter():
    model = small_model().train()
    model(**random_inputs(model.cfg, batch=2)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert model.pos_embed.grad is None


# ---------------------------------------------------------------- dtype and device
def test_bf16_autocast_close_to_fp32(fixture, official_model):
    with torch.no_grad():
        ref = official_model(**fixture["inputs"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = official_model(**fixture["inputs"])
    assert torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.02
    assert (out.float() - ref).abs().max() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_and_runs_under_bf16(fixture, official_model):
    model = FlowMatchingTransformer(official_model.cfg).cuda().eval()
    model.load_state_dict(official_model.state_dict())
    inputs = {k: v.cuda() for k, v in fixture["inputs"].items()}
    with torch.no_grad():
        out = model(**inputs).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out_bf16 = model(**inputs).float().cpu()
        cfv = model.forward_with_cfv(**{k: v.cuda() for k, v in fixture["cfv_inputs"].items()}).cpu()
    assert (out - fixture["outputs"]["forward"]).abs().max().item() <= 1e-4
    assert (cfv - fixture["outputs"]["cfv_a2_e1"]).abs().max().item() <= 1e-4
    assert (out_bf16 - out).norm() / out.norm() < 0.02
