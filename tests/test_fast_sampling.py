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


# ---------------------------------------------------------------- on a CUDA GPU (benchmarks/gpu_session.sh runs these)
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_batched_clips_on_the_gpu_match_the_cpu_compiled_or_not(compiled):
    from trainer.sample.generate import compile_fmt

    model = random_model()
    g = torch.Generator().manual_seed(5)
    audios = [torch.randn(n, CFG.audio_input_dim, generator=g) for n in (37, 120)]
    wr, we = 0.3 + 0.5 * torch.randn(2, CFG.dim_w, generator=g), torch.rand(2, 7, generator=g)
    options = dict(nfe=4, a_cfg_scale=2.0, e_cfg_scale=1.5, seed=7)
    on_cpu = generate_motion_clips(model, audios, wr, we, **options)
    gpu_model = random_model().cuda()
    notes = []
    if compiled:
        compile_fmt(gpu_model, torch.device("cuda"), notes.append)
        assert "compiled" in notes[0]
    on_gpu = generate_motion_clips(gpu_model, [a.cuda() for a in audios], wr.cuda(), we.cuda(), **options)
    for cpu, gpu in zip(on_cpu, on_gpu):
        # TF32 matmuls and another noise stream on the GPU: compare statistics, not frames.
        assert gpu.shape == cpu.shape and torch.isfinite(gpu).all()
        assert abs(gpu.std().item() - cpu.std().item()) < 0.25 * cpu.std().item()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_the_bf16_decoder_on_the_gpu_is_close_to_fp32_on_the_cpu():
    import numpy as np

    from float.motion_autoencoder import MotionAutoEncoder
    from trainer.sample.render import encode_reference, render_motion

    torch.manual_seed(0)
    autoencoder = MotionAutoEncoder(32).eval()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    motion = 0.3 * torch.randn(8, 512, generator=torch.Generator().manual_seed(1))
    cpu = render_motion(autoencoder, encode_reference(autoencoder, image), motion, 4)
    autoencoder = autoencoder.cuda()
    gpu = render_motion(autoencoder, encode_reference(autoencoder, image), motion, 4, precision="auto")
    assert np.abs(gpu.astype(int) - cpu.astype(int)).mean() < 4
