"""FID: pytorch-fid's InceptionV3 rebuilt without torchvision, its weights file, and the Frechet distance.

The weights here are seeded (the real file is the user's), saved as the real file is (a torch.save state
dict), loaded through ``load_inception`` and scored; the reference is written out in the test: features
from the network's forward on [0, 1] images, the unbiased covariance, and the Frechet distance in closed
form (with A, B the centred features over sqrt(N - 1): tr sqrtm(S1 S2) is the nuclear norm of A B^T).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from trainer.errors import TrainerError
from trainer.eval.fid import fid_score, frechet_distance, frechet_of_features
from trainer.eval.inception import FID_WEIGHTS_FILE, FIDInceptionV3, load_inception
from weight_file_cases import calibrate_batchnorm, code_running_pickle, one_line, truncated_copy


def seeded_inception() -> FIDInceptionV3:
    torch.manual_seed(0)
    net = FIDInceptionV3()
    images = torch.rand(6, 3, 299, 299, generator=torch.Generator().manual_seed(1))
    return calibrate_batchnorm(net, lambda n: n(images))


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / FID_WEIGHTS_FILE
    state = {k: v for k, v in seeded_inception().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)  # as the published file: a plain state dict (here without BN step counters)
    return path


def closed_form_frechet(a: np.ndarray, b: np.ndarray, ddof: int) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    ca = (a - a.mean(0)) / np.sqrt(len(a) - ddof)
    cb = (b - b.mean(0)) / np.sqrt(len(b) - ddof)
    nuclear = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (ca ** 2).sum() + (cb ** 2).sum() - 2 * nuclear)


def test_inception_names_and_shapes_are_pytorch_fid_s():
    state = FIDInceptionV3().state_dict()
    weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    # 94 conv+BN units (5 keys each) and the 1008-class fc: torchvision's Inception3 without AuxLogits.
    assert len(weights) == 472
    # torchvision's inception_v3 has 27,161,264 parameters; less its aux head (3,326,696), plus 8 classes (16,392).
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 23_850_960
    expected = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.bn.running_var": (192,),
                "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1), "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
                "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3), "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
                "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
                "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3), "Mixed_7b.branch1x1.conv.weight": (320, 1280, 1, 1),
                "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1), "fc.weight": (1008, 2048), "fc.bias": (1008,)}
    assert {k: tuple(weights[k].shape) for k in expected} == expected
    assert not any(k.startswith("AuxLogits") for k in weights)


def test_fid_score_matches_the_reference_formula(inception_file, one_thread):
    model = load_inception(inception_file)
    rng = np.random.default_rng(0)
    real = [rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8) for _ in range(2)]
    fake = [rng.integers(0, 128, (3, 40, 40, 3), dtype=np.uint8)]
    score = fid_score(model, real, fake)

    def direct_features(frames):  # pytorch-fid's contract: (N, 3, H, W) in [0, 1] in, pool3 (N, 2048) out
        with torch.no_grad():
            return model(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0).numpy()

    reference = closed_form_frechet(direct_features(np.concatenate(real)), direct_features(fake[0]), ddof=1)
    assert reference > 1.0  # features that differ (BatchNorm calibrated: weight_file_cases.calibrate_batchnorm)
    assert score == pytest.approx(reference, rel=1e-4, abs=1e-4)


def test_frechet_distance_is_pytorch_fid_s_formula():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(60, 5)), rng.normal(size=(70, 5)) * 1.5 + 0.3
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    # tr sqrtm(S1 S2) = sum of the square roots of the eigenvalues of sqrt(S1) S2 sqrt(S1)
    r = linalg.sqrtm(s1).real
    trace_sqrt = np.sqrt(np.linalg.eigvalsh(r @ s2 @ r)).sum()
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-6)
    assert frechet_of_features(a, b) == pytest.approx(reference, rel=1e-6)
    # A singular product (fewer samples than dimensions) stays finite: pytorch-fid's eps retry.
    few_a, few_b = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    full = frechet_distance(few_a.mean(0), np.cov(few_a, rowvar=False), few_b.mean(0), np.cov(few_b, rowvar=False))
    assert np.isfinite(full)
    assert frechet_of_features(few_a, few_b) == pytest.approx(closed_form_frechet(few_a, few_b, 1), rel=1e-4)


def test_frechet_in_the_samples_span_equals_the_full_space_figure():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(12, 64)), rng.normal(size=(9, 64)) * 0.7 + 0.1
    full = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_of_features(a, b) == pytest.approx(full, rel=1e-4)
    assert frechet_of_features(a, b) == pytest.approx(closed_form_frechet(a, b, 1), rel=1e-6)


def test_fid_needs_two_frames_a_side(inception_file):
    model = load_inception(inception_file)
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(TrainerError, match="1 real frames"):
        fid_score(model, [frames], [frames, frames])
    with pytest.raises(TrainerError, match="expected uint8"):
        fid_score(model, [frames.astype(np.float32)] * 2, [frames] * 2)


def _refusal(path) -> str:
    with pytest.raises(TrainerError) as e:
        load_inception(path)
    message = str(e.value)
    assert one_line(message) and str(path) in message and "FID InceptionV3 weights" in message
    return message


def test_inception_loader_refuses_wrong_files(inception_file, tmp_path):
    assert "no such file" in _refusal(tmp_path / "absent.pth")

    other = tmp_path / "other_network.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 2)).state_dict(), other)
    assert "not the expected network" in _refusal(other) and FID_WEIGHTS_FILE in _refusal(other)

    assert "truncated" in _refusal(truncated_copy(inception_file, tmp_path / "cut.pth"))

    marker = tmp_path / "code_ran"
    assert "refused" in _refusal(code_running_pickle(tmp_path / "hostile.pth", marker))
    assert not marker.exists()

    state = torch.load(inception_file, weights_only=True, mmap=True)
    kept = state.pop("Mixed_7c.branch_pool.bn.running_var")
    torch.save(state, tmp_path / "missing.pth")
    assert "missing 1 keys: Mixed_7c.branch_pool.bn.running_var" in _refusal(tmp_path / "missing.pth")

    state["Mixed_7c.branch_pool.bn.running_var"] = kept
    state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / "imagenet_1000.pth")
    assert "fc.weight (1000, 2048) (expected (1008, 2048))" in _refusal(tmp_path / "imagenet_1000.pth")

    torch.save([torch.zeros(2)], tmp_path / "a_list.pth")
    assert "not a state dict" in _refusal(tmp_path / "a_list.pth")
