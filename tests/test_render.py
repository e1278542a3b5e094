"""Rendering: batched motion-decoder frames, mp4 with AAC audio via PyAV, side-by-side, the motion plot."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from float.motion_autoencoder import MotionAutoEncoder
from trainer.eval.lipsync import frame_energy
from trainer.plot import pca_components, plot_motion
from trainer.render import (
    encode_reference, image_to_tensor, render_motion, side_by_side, tensor_to_frames, write_mp4,
)


def moving_gradient(frames: int, h: int, w: int) -> np.ndarray:
    """Smooth frames (a gradient that shifts each frame): survive H.264 with small error."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        out[t, ..., 0] = (x * 255 / w + 4 * t) % 256
        out[t, ..., 1] = y * 255 / h
        out[t, ..., 2] = 128
    return out


def probe(path):
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        info = {"fps": float(video.average_rate), "width": video.codec_context.width,
                "height": video.codec_context.height, "audio": None}
        if c.streams.audio:
            a = c.streams.audio[0]
            info["audio"] = {"codec": a.codec_context.name, "rate": a.sample_rate, "channels": a.channels}
    with av.open(str(path)) as c:
        info["frames"] = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    if info["audio"] is not None:
        with av.open(str(path)) as c:
            samples = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        info["audio"]["samples"] = samples
    return info


def test_mp4_has_every_frame_at_25fps_and_the_audio_as_aac_16k(tmp_path):
    frames = moving_gradient(30, 48, 64)
    t = np.arange(30 * 640 + 500) / 16000  # longer than the video: cut to 1.2 s
    audio = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    path = write_mp4(tmp_path / "a.mp4", frames, audio=audio)
    info = probe(path)
    assert info["fps"] == 25 and (info["width"], info["height"]) == (64, 48)
    assert len(info["frames"]) == 30
    assert np.abs(info["frames"].astype(int) - frames.astype(int)).mean() < 6
    a = info["audio"]
    assert a["codec"] == "aac" and a["rate"] == 16000 and a["channels"] == 1
    # AAC adds encoder delay/padding of about one 1024-sample frame; the duration is the video's.
    assert abs(len(a["samples"]) - 30 * 640) <= 2048
    rms = np.sqrt(np.mean(a["samples"][2048:-2048] ** 2))
    assert 0.3 < rms < 0.4  # 0.5 / sqrt(2): the sine survived
    assert not list(tmp_path.glob(".*tmp*"))


def test_mp4_without_audio_and_odd_size_is_padded_even(tmp_path):
    info = probe(write_mp4(tmp_path / "b.mp4", moving_gradient(5, 33, 31)))
    assert info["audio"] is None
    assert (info["width"], info["height"]) == (32, 34) and len(info["frames"]) == 5


def test_mp4_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "c.mp4", np.zeros((3, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        write_mp4(tmp_path / "c.mp4", np.zeros((0, 8, 8, 3), np.uint8))
    assert not (tmp_path / "c.mp4").exists()


@pytest.fixture(scope="module")
def autoencoder():
    torch.manual_seed(0)
    return MotionAutoEncoder(16).eval()


def test_batched_rendering_equals_one_decoder_pass_per_frame(autoencoder):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ref = encode_reference(autoencoder, image)
    with torch.no_grad():
        appearance, lambdas, feats = autoencoder.encode(image_to_tensor(image))
        assert torch.allclose(ref.appearance, appearance)
        assert torch.allclose(ref.motion, autoencoder.motion_from_lambdas(lambdas))
        motion = ref.motion + 0.3 * torch.randn(7, 512)
        one_by_one = np.concatenate([tensor_to_frames(autoencoder.decode(appearance, m[None], feats))
                                     for m in motion])
    batched = render_motion(autoencoder, ref, motion, batch_size=3)
    assert batched.shape == (7, 16, 16, 3) and batched.dtype == np.uint8
    assert np.abs(batched.astype(int) - one_by_one.astype(int)).max() <= 1
    # Different motion -> different frames: the motion actually drives the decoder.
    assert np.abs(batched[0].astype(int) - batched[1].astype(int)).mean() > 0.5


def test_rendering_checks_shapes_and_resizes_the_reference(autoencoder):
    big = np.full((40, 40, 3), 100, np.uint8)
    ref = encode_reference(autoencoder, big)
    assert ref.image.shape == (16, 16, 3)
    with pytest.raises(ValueError, match="motion must be"):
        render_motion(autoencoder, ref, torch.zeros(4, 20))
    with pytest.raises(ValueError, match="batch_size"):
        render_motion(autoencoder, ref, torch.zeros(4, 512), batch_size=0)


def test_side_by_side_puts_ground_truth_left_and_generated_right():
    left = np.zeros((4, 32, 32, 3), np.uint8)
    right = np.full((5, 32, 32, 3), 255, np.uint8)
    plain = side_by_side(left, right, labels=None)
    assert plain.shape == (4, 32, 64, 3)
    assert (plain[:, :, :32] == 0).all() and (plain[:, :, 32:] == 255).all()
    labelled = side_by_side(left, right)
    assert (labelled != plain).any()  # captions drawn
    with pytest.raises(ValueError, match="differ"):
        side_by_side(left, np.zeros((4, 16, 16, 3), np.uint8))


def test_frame_energy_is_rms_per_video_frame():
    t = np.arange(3 * 640) / 16000
    wave = np.concatenate([0.8 * np.sin(2 * np.pi * 500 * t[:1280]), np.zeros(640)])
    energy = frame_energy(wave, frames=4)
    assert energy.shape == (4,)
    assert np.allclose(energy[:2], 0.8 / np.sqrt(2), atol=1e-3)
    assert energy[2] == 0 and energy[3] == 0  # silence, then past the end


def test_plot_finds_the_audio_driven_component(tmp_path):
    rng = np.random.default_rng(1)
    frames = 120
    energy = np.abs(np.sin(np.arange(frames) / 6.0))
    sway = np.sin(np.arange(frames) / 40.0)  # a larger, slower motion unrelated to the audio
    d_sway, d_mouth = rng.normal(size=64), rng.normal(size=64)
    target = 4 * sway[:, None] * d_sway + energy[:, None] * d_mouth + 0.02 * rng.normal(size=(frames, 64))
    good = target + 0.05 * rng.normal(size=target.shape)
    info = plot_motion(tmp_path / "p.png", good, energy, target, title="t")
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert info["energy_component"] == 2  # PC1 is the sway; the audio-driven one is found anyway
    assert abs(info["corr_target_energy"]) > 0.95 and abs(info["corr_energy"]) > 0.95
    assert info["corr_target"] > 0.95 and info["explained"][0] > info["explained"][1]
    # Generated motion that ignores the audio: the same component no longer follows the energy.
    noise = 4 * sway[:, None] * d_sway + rng.normal(size=(frames, 64))
    bad = plot_motion(tmp_path / "n.png", noise, energy, target)
    assert bad["energy_component"] == 2 and abs(bad["corr_energy"]) < 0.4 and bad["corr_target"] < 0.4


def test_pca_sign_convention_is_stable_and_plot_rejects_one_frame(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 8))
    _, comps, _ = pca_components(x, 3)
    _, comps_neg, _ = pca_components(-x, 3)
    largest = np.abs(comps).argmax(axis=1)
    assert (comps[np.arange(3), largest] > 0).all()
    assert np.allclose(np.abs(comps), np.abs(comps_neg))
    with pytest.raises(ValueError, match="frames >= 2"):
        plot_motion(tmp_path / "x.png", np.zeros((1, 8)))
