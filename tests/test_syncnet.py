"""LSE-C / LSE-D: SyncNet v2 rebuilt from syncnet_python, its weights file, our MFCC, and evaluate()'s scores.

The weights are seeded and saved as ``syncnet_v2.model`` is (a torch.save state dict of syncnet_python's
``S`` in torch's legacy, pre-zip format, without BatchNorm step counters, as a 2017 file), loaded through
``load_syncnet``.
The reference is syncnet_python's evaluate() written out with numpy loops: BGR 224x224 frames unscaled,
python_speech_features' MFCC (a frame-by-frame numpy/scipy version below), 5-frame and 20-step windows,
each video feature against audio features at offsets -vshift..vshift with zero vectors past the ends,
the norm of the difference plus 1e-6, the mean per offset, its minimum and median.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.fftpack import dct
from torch import nn

from trainer.errors import TrainerError
from trainer.eval.mfcc import mfcc
from trainer.eval.syncnet import SYNCNET_FILE, SyncNetV2, load_syncnet, lse_scores, syncnet_frames
from weight_file_cases import calibrate_batchnorm, code_running_pickle, one_line, truncated_copy


def seeded_syncnet() -> SyncNetV2:
    torch.manual_seed(0)
    net = SyncNetV2()
    g = torch.Generator().manual_seed(1)
    lips, mfcc = torch.rand(4, 3, 5, 224, 224, generator=g) * 255, torch.randn(4, 1, 13, 20, generator=g) * 10
    return calibrate_batchnorm(net, lambda n: (n.forward_lip(lips), n.forward_aud(mfcc)))


@pytest.fixture(scope="module")
def syncnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("syncnet") / SYNCNET_FILE
    state = {k: v for k, v in seeded_syncnet().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path, _use_new_zipfile_serialization=False)  # the 2017 file predates torch's zip format
    return path


def reference_mfcc(signal: np.ndarray, rate: int = 16000) -> np.ndarray:
    """python_speech_features.mfcc with its defaults, one frame at a time."""
    x = np.append(signal[0], signal[1:] - 0.97 * signal[:-1]).astype(np.float64)
    frame, step, nfft = 400, 160, 512
    count = 1 if len(x) <= frame else 1 + math.ceil((len(x) - frame) / step)
    x = np.concatenate([x, np.zeros((count - 1) * step + frame - len(x))])
    mel = np.linspace(0, 2595 * np.log10(1 + (rate / 2) / 700.0), 28)
    bins = np.floor((nfft + 1) * (700 * (10 ** (mel / 2595.0) - 1)) / rate)
    bank = np.zeros((26, nfft // 2 + 1))
    for j in range(26):
        for i in range(int(bins[j]), int(bins[j + 1])):
            bank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            bank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    rows = []
    for f in range(count):
        power = np.abs(np.fft.rfft(x[f * step:f * step + frame], nfft)) ** 2 / nfft
        energy = power.sum() or np.finfo(float).eps
        filtered = bank @ power
        filtered[filtered == 0] = np.finfo(float).eps
        cep = dct(np.log(filtered), type=2, norm="ortho")[:13]
        cep = cep * (1 + 11 * np.sin(np.pi * np.arange(13) / 22))
        cep[0] = np.log(energy)
        rows.append(cep)
    return np.array(rows)


def reference_lse(model: SyncNetV2, frames: np.ndarray, waveform: np.ndarray, vshift: int) -> dict:
    """syncnet_python's evaluate() on 224x224 RGB frames and float audio, with numpy loops."""
    audio = np.clip(np.round(waveform.astype(np.float64) * 32768), -32768, 32767)  # the int16 wav it reads
    video = torch.from_numpy(frames[..., ::-1].astype(np.float32).copy()).permute(3, 0, 1, 2)[None]  # BGR
    cct = torch.from_numpy(reference_mfcc(audio).T.astype(np.float32))[None, None]
    lastframe = min(len(frames), len(audio) // 640) - 5
    with torch.no_grad():
        vid = np.stack([model.forward_lip(video[:, :, i:i + 5])[0].numpy() for i in range(lastframe)])
        aud = np.stack([model.forward_aud(cct[:, :, :, 4 * i:4 * i + 20])[0].numpy() for i in range(lastframe)])
    means = []
    for k in range(2 * vshift + 1):
        d = []
        for i in range(lastframe):
            j = i + k - vshift
            a = aud[j] if 0 <= j < lastframe else np.zeros_like(aud[0])
            d.append(np.linalg.norm(vid[i] - a + 1e-6))
        means.append(np.mean(d))
    means = np.array(means)
    return {"lse_d": means.min(), "lse_c": np.median(means) - means.min(), "offset": vshift - int(means.argmin())}


def test_syncnet_names_and_shapes_are_syncnet_python_s():
    weights = {k: v for k, v in SyncNetV2().state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(weights) == 88  # 12 convs, 4 linears (weight, bias), 14 BatchNorms (4 tensors each)
    expected = {"netcnnaud.0.weight": (64, 1, 3, 3), "netcnnaud.18.weight": (512, 256, 5, 4),
                "netcnnaud.19.running_var": (512,), "netfcaud.3.weight": (1024, 512), "netfclip.1.weight": (512,),
                "netcnnlip.0.weight": (96, 3, 5, 7, 7), "netcnnlip.4.weight": (256, 96, 1, 5, 5),
                "netcnnlip.18.weight": (512, 256, 1, 6, 6), "netcnnlip.19.running_mean": (512,)}
    assert {k: tuple(weights[k].shape) for k in expected} == expected


def test_mfcc_matches_python_speech_features_formula():
    rng = np.random.default_rng(0)
    t = np.arange(5931) / 16000
    signal = np.round(3000 * np.sin(2 * np.pi * 220 * t) + rng.normal(0, 500, t.size))
    ours, ref = mfcc(signal).numpy(), reference_mfcc(signal)
    assert ours.shape == ref.shape == (36, 13)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)
    short = np.ones(300) * 100.0  # shorter than one frame: one zero-padded frame
    np.testing.assert_allclose(mfcc(short).numpy(), reference_mfcc(short), rtol=1e-9, atol=1e-9)
    silence = mfcc(np.zeros(800)).numpy()  # log(eps) instead of -inf, as python_speech_features
    assert np.isfinite(silence).all()


@pytest.mark.parametrize("vshift", [2, 15])
def test_lse_scores_match_syncnet_python_evaluate(syncnet_file, one_thread, vshift):
    model = load_syncnet(syncnet_file)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (12, 224, 224, 3), dtype=np.uint8)
    waveform = (0.3 * rng.standard_normal(12 * 640 + 100)).astype(np.float32)
    ours, ref = lse_scores(model, frames, waveform, vshift=vshift), reference_lse(model, frames, waveform, vshift)
    assert ours["offset"] == ref["offset"]
    assert ours["lse_d"] == pytest.approx(ref["lse_d"], rel=1e-4)
    assert ours["lse_c"] == pytest.approx(ref["lse_c"], rel=1e-4, abs=1e-4)
    if vshift == 2:
        assert ours["lse_c"] > 0  # the minimum is one real offset, not a tie with the median


def test_frames_are_fed_as_bgr_224():
    rgb = np.zeros((2, 224, 224, 3), np.uint8)
    rgb[..., 0] = 200  # red
    x = syncnet_frames(rgb)
    assert x.shape == (3, 2, 224, 224) and float(x[2].min()) == 200 and float(x[0].max()) == 0  # red is last
    small = syncnet_frames(np.full((3, 128, 128, 3), 77, np.uint8))  # our 128 px crops are resized
    assert small.shape == (3, 3, 224, 224) and torch.all(small == 77)


def test_lse_needs_six_frames_and_their_audio(syncnet_file):
    model = load_syncnet(syncnet_file)
    frames = np.zeros((10, 224, 224, 3), np.uint8)
    with pytest.raises(TrainerError, match="at least 6 frames"):
        lse_scores(model, frames, np.zeros(5 * 640, np.float32))
    with pytest.raises(TrainerError, match="expected uint8"):
        lse_scores(model, frames.astype(np.float32), np.zeros(10 * 640, np.float32))


def _refusal(path) -> str:
    with pytest.raises(TrainerError) as e:
        load_syncnet(path)
    message = str(e.value)
    assert one_line(message) and str(path) in message and "SyncNet v2 weights" in message
    return message


def test_syncnet_loader_refuses_wrong_files(syncnet_file, tmp_path):
    assert "no such file" in _refusal(tmp_path / "absent.model")

    other = tmp_path / "other.model"
    torch.save(nn.Conv2d(3, 8, 3).state_dict(), other)
    assert "not the expected network" in _refusal(other) and SYNCNET_FILE in _refusal(other)

    assert "truncated" in _refusal(truncated_copy(syncnet_file, tmp_path / "cut.model"))

    marker = tmp_path / "code_ran"
    assert "refused" in _refusal(code_running_pickle(tmp_path / "hostile.model", marker))
    assert not marker.exists()

    state = torch.load(syncnet_file, weights_only=True)
    del state["netfclip.3.bias"]
    torch.save(state, tmp_path / "missing.model")
    assert "missing 1 keys: netfclip.3.bias" in _refusal(tmp_path / "missing.model")

    state = torch.load(syncnet_file, weights_only=True)
    state["netfcaud.3.weight"] = torch.zeros(512, 512)  # a 512-d embedding head is another model
    torch.save(state, tmp_path / "head512.model")
    assert "netfcaud.3.weight (512, 512) (expected (1024, 512))" in _refusal(tmp_path / "head512.model")
