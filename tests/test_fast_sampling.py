"""Fast sampling: the guidance's three passes as one batched forward, and several clips generated as one batch,
each equal (within float rounding) to what the separate, one-at-a-time computation gives."""
from __future__ import annotations

import pytest
import torch

from float.config import get_preset
from float.model import FloatMotionModel
from float.sampler import generate_motion, generate_motion_clips

CFG = get_preset("tiny", dim_w=16, dim_a=16, dim_h=32, depth=2, num_heads=2, audio_input_dim=8)


def random_model(seed: int = 0) -> FloatMotionModel:
    """The tiny model with every weight random: adaLN-Zero's zeroed layers would make the field constant."""
    torch.manual_seed(seed)
    model = FloatMotionModel(CFG).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.2)
    model.set_motion_stats(torch.full((CFG.dim_w,), 0.3), torch.full((CFG.dim_w,), 0.5))
    return model


def window_inputs(batch: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    N, P = CFG.num_frames, CFG.num_prev_frames
    return {"t": torch.tensor([0.4]), "x": torch.randn(batch, N, CFG.dim_w, generator=g),
            "wa": torch.randn(batch, N, CFG.dim_a, generator=g), "wr": torch.randn(batch, CFG.dim_w, generator=g),
            "we": torch.rand(batch, 7, generator=g), "prev_x": torch.randn(batch, P, CFG.dim_w, generator=g),
            "prev_wa": torch.randn(batch, P, CFG.dim_a, generator=g)}


def test_guidance_is_one_batched_forward_equal_to_its_three_separate_passes(one_thread):
    fmt = random_model().fmt
    inputs = window_inputs(batch=2)
    calls = []
    forward = fmt.forward

    def counting(t, x, *rest):
        calls.append(x.shape[0])
        return forward(t, x, *rest)

    fmt.forward = counting
    guided = fmt.forward_with_cfv(**inputs, a_cfg_scale=2.0, e_cfg_scale=1.5)
    assert calls == [6]  # one forward of 3 x batch 2: unconditional, all conditions, audio only

    with torch.no_grad():
        i = inputs
        uncond = forward(i["t"], i["x"], torch.zeros_like(i["wa"]), i["wr"], torch.zeros_like(i["we"]),
                         i["prev_x"], i["prev_wa"])
        audio_only = forward(i["t"], i["x"], i["wa"], i["wr"], torch.zeros_like(i["we"]), i["prev_x"], i["prev_wa"])
        everything = forward(i["t"], i["x"], i["wa"], i["wr"], i["we"], i["prev_x"], i["prev_wa"])
    separate = uncond + 2.0 * (audio_only - uncond) + 1.5 * (everything - audio_only)
    assert separate.abs().mean() > 0.1  # a field worth comparing
    torch.testing.assert_close(guided, separate, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("official_grid", [False, True])
def test_clips_of_different_lengths_batched_equal_each_clip_alone(one_thread, official_grid):
    model = random_model()
    g = torch.Generator().manual_seed(2)
    lengths = [37, 120, 50]  # a short last window, three windows, exactly one window
    audios = [torch.randn(n, CFG.audio_input_dim, generator=g) for n in lengths]
    wr = 0.3 + 0.5 * torch.randn(3, CFG.dim_w, generator=g)
    we = torch.rand(3, 7, generator=g)
    options = dict(nfe=4, a_cfg_scale=2.0, e_cfg_scale=1.5, seed=7, official_grid=official_grid)

    batched = generate_motion_clips(model, audios, wr, we, **options)
    alone = [generate_motion(model, a[None], wr[i:i + 1], we[i:i + 1], **options)[0] for i, a in enumerate(audios)]
    assert [len(m) for m in batched] == lengths
    for together, single in zip(batched, alone):
        torch.testing.assert_close(together, single, atol=1e-4, rtol=1e-4)
    # The clips differ (their own audio, reference and emotion), so equality is not a coincidence of zeros.
    assert (batched[0][:37] - batched[1][:37]).abs().mean() > 1e-2
    silent = generate_motion_clips(model, audios, wr, we, drop_audio=True, **options)
    torch.testing.assert_close(silent[1], generate_motion(model, audios[1][None], wr[1:2], we[1:2], drop_audio=True,
                                                          **options)[0], atol=1e-4, rtol=1e-4)


def test_no_clips_is_an_empty_list():
    assert generate_motion_clips(random_model(), [], torch.zeros(0, CFG.dim_w), torch.zeros(0, 7)) == []
