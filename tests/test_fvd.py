"""FVD: the I3D TorchScript of the common FVD code, its loader, and StyleGAN-V's statistics.

The detector is a seeded Inception-I3D (tests/i3d_net.py) scripted and saved as TorchScript, with the real
file's call ``detector(videos, rescale=True, resize=True, return_features=True)``; it resizes to 32 px here
instead of 224 to stay fast. The reference is written out: 16-frame clips cut by hand, the detector called
directly, StyleGAN-V's FeatureStats (sums of x and x x^T, covariance divided by N), and the Frechet distance
in closed form (tr sqrtm(S1 S2) is the nuclear norm of A B^T, A and B the centred features over sqrt(N)).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from i3d_net import seeded_i3d
from trainer.errors import TrainerError
from trainer.eval.fvd import clip_features, fvd_score, video_clips
from trainer.eval.i3d import I3D_FILE, load_i3d
from weight_file_cases import code_running_pickle, one_line, truncated_copy


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fvd") / I3D_FILE
    torch.jit.script(seeded_i3d(seed=0, resize_to=32)).save(str(path))
    return path


def stylegan_v_stats(features: np.ndarray):
    x = features.astype(np.float64)
    mean = x.sum(0) / len(x)
    return mean, (x.T @ x) / len(x) - np.outer(mean, mean)


def closed_form_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, cov_a = stylegan_v_stats(a)
    mu_b, cov_b = stylegan_v_stats(b)
    ca, cb = (a - a.mean(0)) / np.sqrt(len(a)), (b - b.mean(0)) / np.sqrt(len(b))
    assert np.allclose(ca.T @ ca, cov_a, atol=1e-9) and np.allclose(cb.T @ cb, cov_b, atol=1e-9)
    nuclear = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * nuclear)


def test_fvd_score_matches_the_reference_formula(i3d_file, one_thread):
    model = load_i3d(i3d_file)
    rng = np.random.default_rng(0)
    real = [rng.integers(0, 256, (33, 48, 48, 3), dtype=np.uint8)]  # two 16-frame clips, the last frame left out
    fake = [rng.integers(0, 160, (16, 48, 48, 3), dtype=np.uint8) for _ in range(2)]
    score = fvd_score(model, real, fake)

    detector = model  # the TorchScript module as torch.jit.load gives it, called directly

    def direct_features(clips):  # StyleGAN-V: uint8 (B, 3, T, H, W) into the detector
        videos = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).contiguous()
        with torch.no_grad():
            return detector(videos, rescale=True, resize=True, return_features=True).numpy()

    real_feats = direct_features([real[0][:16], real[0][16:32]])
    fake_feats = direct_features(fake)
    assert real_feats.shape == (2, 400)
    reference = closed_form_frechet(real_feats, fake_feats)
    assert reference > 1.0  # features that differ (BatchNorm calibrated: weight_file_cases.calibrate_batchnorm)
    assert score == pytest.approx(reference, rel=1e-4, abs=1e-6)


def test_videos_are_cut_into_16_frame_clips(i3d_file):
    assert video_clips(np.zeros((40, 8, 8, 3), np.uint8)).shape == (2, 16, 8, 8, 3)  # the last 8 frames left out
    assert video_clips(np.zeros((15, 8, 8, 3), np.uint8)).shape == (0, 16, 8, 8, 3)
    ramp = np.arange(32, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    assert video_clips(ramp)[1, 0, 0, 0, 0] == 16  # consecutive, not overlapping
    model = load_i3d(i3d_file, probe=False)
    short = [np.zeros((15, 8, 8, 3), np.uint8), np.zeros((20, 8, 8, 3), np.uint8)]
    with pytest.raises(TrainerError, match="1 real clips of 16 frames"):
        clip_features(model, short, "real")
    with pytest.raises(TrainerError, match="different frame sizes"):
        clip_features(model, [np.zeros((16, 8, 8, 3), np.uint8), np.zeros((16, 9, 9, 3), np.uint8)], "real")


class WrongFeatures(nn.Module):
    def forward(self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> Tensor:
        return x.float().flatten(1).mean(1, keepdim=True).repeat(1, 10)


def _refusal(path) -> str:
    with pytest.raises(TrainerError) as e:
        load_i3d(path)
    message = str(e.value)
    assert one_line(message) and str(path) in message and "FVD I3D TorchScript" in message
    return message


def test_i3d_loader_refuses_wrong_files(i3d_file, tmp_path):
    assert "no such file" in _refusal(tmp_path / "absent.pt")

    state_dict = tmp_path / "i3d_state_dict.pt"  # pytorch-i3d's rgb_imagenet.pt is this kind of file
    torch.save(seeded_i3d(resize_to=32).state_dict(), state_dict)
    assert "not a TorchScript archive" in _refusal(state_dict)

    assert "not a TorchScript archive" in _refusal(truncated_copy(i3d_file, tmp_path / "cut.pt"))

    marker = tmp_path / "code_ran"
    assert "not a TorchScript archive" in _refusal(code_running_pickle(tmp_path / "hostile.pt", marker))
    assert not marker.exists()

    plain = tmp_path / "linear.pt"
    torch.jit.script(nn.Linear(3, 3)).save(str(plain))
    message = _refusal(plain)
    assert "forward takes (input)" in message and I3D_FILE in message

    wrong = tmp_path / "ten_features.pt"
    torch.jit.script(WrongFeatures()).save(str(wrong))
    assert "features are (1, 10)" in _refusal(wrong)
