"""S3FD in plain torch (preprocess/s3fd.py) on seeded weights of face_alignment's architecture: the weights file
loads through the safe loader, a wrong file is refused in one line, detection equals a direct, anchor-by-anchor
implementation of face_alignment's decode and NMS, and the official crop's integer arithmetic."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from preprocess import s3fd
from preprocess.face import crop_frame
from preprocess.s3fd import S3FD, S3fdError, detect, load_s3fd, official_crop_box
from trainer.sample.official import official_reference
from test_sample import face_png  # noqa: F401  (a fixture)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def seeded_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("s3fd") / "s3fd-seeded.pth"
    torch.save(S3FD().state_dict(), path)
    return path


def test_state_dict_has_face_alignments_names_and_shapes():
    state = S3FD().state_dict()
    assert len(state) == 2 * (13 + 6 + 12) + 3  # 13 trunk convs, fc6/fc7/conv6_x/conv7_x, 12 heads; 3 L2Norms
    assert state["conv3_3_norm.weight"].shape == (256,) and float(state["conv3_3_norm.weight"][0]) == 10.0
    assert state["conv3_3_norm_mbox_conf.weight"].shape == (4, 256, 3, 3)  # max-out background: 3 + 1
    assert state["fc6.weight"].shape == (1024, 512, 3, 3) and state["fc7_mbox_loc.weight"].shape == (4, 1024, 3, 3)
    assert state["conv7_2_mbox_conf.weight"].shape == (2, 256, 3, 3)


def test_seeded_weights_load_and_a_wrong_file_is_refused_in_one_line(seeded_file, tmp_path):
    net = load_s3fd(seeded_file)
    saved = torch.load(seeded_file, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    wrong = tmp_path / "float.pth"
    torch.save({"motion_autoencoder.enc.weight": torch.zeros(2)}, wrong)
    text = tmp_path / "notes.pth"
    text.write_text("not a torch file")
    shaped = dict(saved, **{"fc7_mbox_conf.weight": torch.zeros(3, 1024, 3, 3)})
    misshaped = tmp_path / "misshaped.pth"
    torch.save(shaped, misshaped)
    for path, reason in ((wrong, "tensors missing"), (text, "unreadable|refused"), (misshaped, r"fc7_mbox_conf.weight is \(3,"),
                         (tmp_path / "absent.pth", "no such file")):
        with pytest.raises(S3fdError, match=reason) as info:
            load_s3fd(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message


def _direct_detect(net: S3FD, image: np.ndarray) -> np.ndarray:
    """face_alignment's detect + _filter_bboxes written out anchor by anchor (bboxloginv's formula)."""
    bgr = image[..., ::-1].astype(np.float64) - np.array([104.0, 117.0, 123.0])
    with torch.no_grad():
        outputs = net(torch.from_numpy(bgr.transpose(2, 0, 1).copy()).float()[None])
    found = []
    for i in range(6):
        logits, loc = outputs[2 * i][0].double().numpy(), outputs[2 * i + 1][0].double().numpy()
        stride = 2 ** (i + 2)
        for row in range(logits.shape[1]):
            for col in range(logits.shape[2]):
                e = np.exp(logits[:, row, col] - logits[:, row, col].max())
                score = e[1] / e.sum()
                if score <= 0.05:
                    continue
                axc, ayc, side = stride / 2 + col * stride, stride / 2 + row * stride, 4.0 * stride
                dx, dy, dw, dh = loc[:, row, col]
                xc, yc = dx * 0.1 * side + axc, dy * 0.1 * side + ayc
                ww, hh = math.exp(dw * 0.2) * side, math.exp(dh * 0.2) * side
                found.append([xc - ww / 2, yc - hh / 2, xc + ww / 2, yc + hh / 2, score])
    found.sort(key=lambda b: -b[4])
    kept = []
    for box in found:  # greedy NMS at IoU 0.3, areas with the +1 pixel convention
        def iou(a, b):
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
            h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
            area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
            return w * h / (area(a) + area(b) - w * h)
        if all(iou(k, box) <= 0.3 for k in kept):
            kept.append(box)
    return np.array([b for b in kept if b[4] > 0.5]).reshape(-1, 5)


def test_detection_matches_the_direct_decode_on_a_fixed_input(seeded_file):
    net = load_s3fd(seeded_file)
    image = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    ours, direct = detect(net, image), _direct_detect(net, image)
    assert len(direct) > 0  # the seeded net fires somewhere: the comparison is not vacuous
    assert ours.shape == direct.shape
    np.testing.assert_allclose(ours, direct, rtol=0, atol=1e-4)


def test_official_crop_arithmetic(monkeypatch):
    """process_img: boxes at 360 rows scaled back and truncated, first one over 0.95, int half sides x 1.6."""
    image = np.zeros((720, 600, 3), np.uint8)  # mult = 0.5
    monkeypatch.setattr(s3fd, "detect", lambda net, img: np.array([[10, 10, 20, 20, 0.9],  # under 0.95: skipped
                                                                   [100.7, 50.2, 180.9, 170.4, 0.97]]))
    box = official_crop_box(None, image)
    # (201, 100, 361, 340): half sides int(120), int(80); int(120 * 1.6) = 192; centre (int(281), int(220))
    assert (box.cx, box.cy, box.side) == (281.0, 220.0, 384)
    region = crop_frame(np.arange(720 * 600 * 3, dtype=np.uint32).reshape(720, 600, 3) % 251, box, box.side)
    assert region.shape == (384, 384, 3)
    monkeypatch.setattr(s3fd, "detect", lambda net, img: np.array([[10, 10, 20, 20, 0.9]]))
    assert official_crop_box(None, image) is None


def test_official_reference_crops_with_s3fd_when_given(tmp_path, face_png):
    """A net made to fire only on its fc7 head (stride 32, prior side 128, no offsets) crops the astronaut
    around the best fc7 prior, and says it used S3FD."""
    net = S3FD()
    with torch.no_grad():
        for name, module in net.named_children():
            if name.endswith("_mbox_conf") or name.endswith("_mbox_loc"):
                module.weight.zero_()
                module.bias.zero_()
        net.conv3_3_norm_mbox_conf.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -20.0]))
        for name in ("conv4_3_norm", "conv5_3_norm", "conv6_2", "conv7_2"):
            getattr(net, f"{name}_mbox_conf").bias.copy_(torch.tensor([20.0, -20.0]))
        net.fc7_mbox_conf.bias.copy_(torch.tensor([-20.0, 20.0]))
    path = tmp_path / "s3fd-crafted.pth"
    torch.save(net.state_dict(), path)
    logs = []
    crop = official_reference(face_png, 64, s3fd=path, log=logs.append)
    assert crop.shape == (64, 64, 3) and any("S3FD" in line for line in logs)
    box = official_crop_box(load_s3fd(path), np.zeros((512, 512, 3), np.uint8))
    # an fc7 prior: 128 px at 360 rows -> 182 px at 512 (corners truncated: 181-183); half-side int(~91 * 1.6)
    assert 2 * int(90 * 1.6) <= box.side <= 2 * int(92 * 1.6)
    fallback = []
    official_reference(face_png, 64, log=fallback.append)
    assert any("mapped onto S3FD's box" in line for line in fallback)
