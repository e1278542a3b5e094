"""Perceptual losses: torchvision-compatible VGG19 names, loading/refusing weight
files, LIA's pyramid VGG loss and the weight-free fallback."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from float.perceptual import (
    VGG19_TAPS,
    PerceptualWeightsError,
    StructureLoss,
    VGG19Features,
    VGGPerceptualLoss,
    build_perceptual,
    gaussian_downsample,
    image_pyramid,
    load_vgg19_features,
    vgg19_feature_shapes,
)

# torchvision vgg19 `features`: the conv layers' indices and (out, in) channels,
# written out from the architecture (conv+ReLU pairs, one index per max pool)
TORCHVISION_VGG19_CONVS = [
    (0, 64, 3), (2, 64, 64),
    (5, 128, 64), (7, 128, 128),
    (10, 256, 128), (12, 256, 256), (14, 256, 256), (16, 256, 256),
    (19, 512, 256), (21, 512, 512), (23, 512, 512), (25, 512, 512),
    (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512),
]
EXPECTED = [entry for i, o, c in TORCHVISION_VGG19_CONVS
            for entry in ((f"features.{i}.weight", (o, c, 3, 3)), (f"features.{i}.bias", (o,)))]
# vgg16's convs: a wrong architecture whose first 7 convs coincide with vgg19's
VGG16_CONVS = [(0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128),
               (12, 256, 256), (14, 256, 256), (17, 512, 256), (19, 512, 512),
               (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: extra OpenMP threads only spin on the shared CPUs."""


@pytest.fixture(scope="module")
def seeded_vgg():
    torch.manual_seed(0)
    return VGG19Features().eval()


@pytest.fixture(scope="module")
def vgg_file(seeded_vgg, tmp_path_factory):
    """The seeded weights as a full torchvision-model state dict (classifier included)."""
    state = dict(seeded_vgg.state_dict())
    # the classifier is ignored; small stand-ins keep the file at the features' size
    state["classifier.0.weight"] = torch.randn(8, 4)
    state["classifier.6.bias"] = torch.randn(3)
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(state, path)
    return path


def test_state_dict_names_and_shapes_are_torchvision_vgg19():
    got = [(k, tuple(v.shape)) for k, v in VGG19Features().state_dict().items()]
    assert got == EXPECTED
    assert vgg19_feature_shapes() == EXPECTED
    assert len(VGG19Features().features) == 37  # torchvision: 16 convs, 16 ReLUs, 5 pools


def test_taps_are_the_first_relu_of_each_block():
    layers = list(VGG19Features().features)
    for block, (name, index) in enumerate(VGG19_TAPS.items(), start=1):
        assert name == f"relu{block}_1"
        assert isinstance(layers[index], nn.ReLU)
        assert isinstance(layers[index - 1], nn.Conv2d)
        assert sum(isinstance(m, nn.MaxPool2d) for m in layers[:index]) == block - 1
        # the first conv after the block's pool
        assert index - 1 == 0 or isinstance(layers[index - 2], nn.MaxPool2d)


def test_loaded_weights_give_identical_features(seeded_vgg, vgg_file):
    loaded = load_vgg19_features(vgg_file).eval()
    x = torch.randn(2, 3, 16, 16)
    for a, b in zip(seeded_vgg(x), loaded(x)):
        assert torch.equal(a, b)
    assert [f.shape[1] for f in loaded(x)] == [64, 128, 256, 512, 512]


def test_features_only_file_loads(seeded_vgg, tmp_path):
    path = tmp_path / "features.pt"
    torch.save({k: v for k, v in seeded_vgg.state_dict().items()}, path)
    loaded = load_vgg19_features(path)
    assert torch.equal(loaded.features[34].weight, seeded_vgg.features[34].weight)


def test_vgg16_state_dict_is_refused(tmp_path):
    path = tmp_path / "vgg16.pth"
    state = {}
    for i, o, c in VGG16_CONVS:
        state[f"features.{i}.weight"] = torch.zeros(o, c, 3, 3)
        state[f"features.{i}.bias"] = torch.zeros(o)
    torch.save(state, path)
    with pytest.raises(PerceptualWeightsError, match="features.16.weight") as err:
        load_vgg19_features(path)
    assert str(path) in str(err.value)


def test_wrong_shape_is_refused_naming_key_and_shapes(seeded_vgg, tmp_path):
    state = dict(seeded_vgg.state_dict())
    state["features.0.weight"] = torch.zeros(32, 3, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(PerceptualWeightsError) as err:
        load_vgg19_features(path)
    msg = str(err.value)
    assert str(path) in msg and "features.0.weight" in msg
    assert "(32, 3, 3, 3)" in msg and "(64, 3, 3, 3)" in msg


def test_extra_feature_key_is_refused(seeded_vgg, tmp_path):
    state = dict(seeded_vgg.state_dict())
    state["features.37.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pt"
    torch.save(state, path)
    with pytest.raises(PerceptualWeightsError, match="features.37.weight"):
        load_vgg19_features(path)


@pytest.mark.parametrize("content", ["garbage", "list", "random_dict"])
def test_non_state_dict_files_are_refused(tmp_path, content):
    path = tmp_path / f"{content}.pth"
    if content == "garbage":
        path.write_bytes(b"\x00not a pickle at all" * 10)
    elif content == "list":
        torch.save([torch.zeros(3)], path)
    else:
        torch.save({"a": torch.zeros(3)}, path)
    with pytest.raises(PerceptualWeightsError) as err:
        load_vgg19_features(path)
    assert str(path) in str(err.value)


def test_arbitrary_pickle_is_not_executed(tmp_path):
    # weights_only loading refuses arbitrary objects instead of unpickling them
    path = tmp_path / "object.pkl"
    with open(path, "wb") as f:
        pickle.dump({"features.0.weight": object()}, f, protocol=2)
    with pytest.raises(PerceptualWeightsError, match=str(path)):
        load_vgg19_features(path)


def test_missing_file_is_reported(tmp_path):
    path = tmp_path / "nowhere" / "vgg19.pth"
    with pytest.raises(PerceptualWeightsError, match=f"{path}: no such file"):
        load_vgg19_features(path)
    with pytest.raises(PerceptualWeightsError, match="takes torchvision's vgg19"):
        build_perceptual(str(path), "cpu")


def test_gaussian_pyramid_sizes_and_constant_images():
    x = torch.randn(1, 3, 64, 64)
    assert [p.shape[-1] for p in image_pyramid(x, 4, min_size=16)] == [64, 32, 16]
    assert [p.shape[-1] for p in image_pyramid(x, 4)] == [64, 32, 16, 8]
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(gaussian_downsample(flat, 8), torch.full((1, 3, 4, 4), 0.3), atol=1e-6)
    # low-pass: a checkerboard averages out instead of aliasing to one colour
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1
    down = gaussian_downsample(checker.expand(1, 3, 32, 32), 4)
    assert down[..., 1:-1, 1:-1].abs().max() < 0.01  # the replicated border is not a checkerboard


def test_vgg_loss_zero_for_identical_positive_and_differentiable_otherwise(seeded_vgg):
    loss = VGGPerceptualLoss(seeded_vgg)
    torch.manual_seed(1)
    target = torch.rand(2, 3, 16, 16) * 2 - 1
    assert loss(target, target).item() == 0.0
    recon = (target + 0.3 * torch.randn_like(target)).clamp(-1, 1).requires_grad_(True)
    value = loss(recon, target)
    assert value.item() > 0
    value.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in loss.parameters())
    loss.train()
    assert not loss.training and not loss.vgg.training


def test_vgg_loss_uses_every_pyramid_level(seeded_vgg):
    torch.manual_seed(2)
    target = torch.rand(1, 3, 32, 32) * 2 - 1
    recon = target + 0.2 * torch.randn_like(target)
    one = VGGPerceptualLoss(seeded_vgg, levels=1)(recon, target)
    two = VGGPerceptualLoss(seeded_vgg, levels=2)(recon, target)
    assert two > one  # the 16 px level adds its own positive term
    # 32 px has no 8 px level: VGG needs 16 px, so levels 2 and 4 agree
    assert torch.allclose(VGGPerceptualLoss(seeded_vgg, levels=4)(recon, target), two)


def test_vgg_loss_layer_weights_and_input_checks(seeded_vgg):
    target = torch.zeros(1, 3, 16, 16)
    recon = torch.rand(1, 3, 16, 16)
    off = VGGPerceptualLoss(seeded_vgg, layer_weights=(0, 0, 0, 0, 0))
    assert off(recon, target).item() == 0.0
    with pytest.raises(ValueError, match="one weight per tap"):
        VGGPerceptualLoss(seeded_vgg, layer_weights=(1, 1))
    loss = VGGPerceptualLoss(seeded_vgg)
    with pytest.raises(ValueError, match="at least 16"):
        loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="equal shape"):
        loss(torch.zeros(1, 3, 16, 16), torch.zeros(2, 3, 16, 16))


def _smooth_image(size=32, seed=3):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 4, size // 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_structure_loss_behaviour():
    loss = StructureLoss()
    img = _smooth_image()
    assert loss(img, img).item() == 0.0
    shifted = torch.roll(img, shifts=3, dims=-1)
    noisy = img + 0.02 * torch.randn(img.shape, generator=torch.Generator().manual_seed(4))
    assert loss(shifted, img) > 2 * loss(noisy, img)
    recon = noisy.clone().requires_grad_(True)
    loss(recon, img).backward()
    assert recon.grad.abs().sum() > 0
    # the gradient term ignores a uniform brightness change but sees moved edges
    no_grad_term = StructureLoss(gradient_weight=0.0)
    brighter = img + 0.1
    assert torch.allclose(loss(brighter, img), no_grad_term(brighter, img))
    assert loss(shifted, img) > no_grad_term(shifted, img)


def test_build_perceptual_picks_and_describes(vgg_file):
    module, desc = build_perceptual(None, "cpu")
    assert isinstance(module, StructureLoss) and "weight-free" in desc and "VGG19" in desc
    module, desc = build_perceptual(str(vgg_file), "cpu")
    assert isinstance(module, VGGPerceptualLoss)
    assert desc.startswith("VGG19 perceptual") and str(vgg_file) in desc
