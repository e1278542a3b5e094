"""S3FD, the face detector the official FLOAT crop uses (face_alignment's "sfd"), in plain torch, loading
face_alignment's weights file s3fd-619a316812.pth that the user gives (``floatctl sample float.pth --s3fd``).

Same parameter names as face_alignment's net_s3fd.py, so its state dict loads as it is; detection behaves as
face_alignment's SFDDetector.detect_from_image does on an RGB image:
  input     the image turned to BGR, minus the per-channel means (104, 117, 123), as float;
  network   VGG-16 trunk, L2-normalised conv3_3 / conv4_3 / conv5_3 (scales 10, 8, 5), fc6-fc7, two extra
            stages; six heads (conv3_3, conv4_3, conv5_3, fc7, conv6_2, conv7_2), each a 3x3 class and a
            3x3 box convolution; the first class head has 3 background channels, max-ed into one
            ("max-out background");
  anchors   head i has stride 2 ** (i + 2) (4 ... 128); the prior of cell (row, col) is centred at
            (stride / 2 + col * stride, stride / 2 + row * stride) with side 4 * stride;
  decode    centre = prior centre + loc[:2] * 0.1 * prior side, size = prior side * exp(loc[2:] * 0.2),
            as (x1, y1, x2, y2);
  keep      softmax face probability > 0.05, then greedy NMS at IoU 0.3 (areas with the +1 pixel
            convention), then score > 0.5; highest score first.
``official_crop_box`` then does what the official DataProcessor.process_img does with it (see there).
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from preprocess.errors import PreprocessError
from preprocess.face import CropBox

WEIGHTS_FILE = "s3fd-619a316812.pth"  # face_alignment's public file (adrianbulat.com/downloads/python-fan/)
BGR_MEAN = (104.0, 117.0, 123.0)
VARIANCES = (0.1, 0.2)
CANDIDATE_SCORE = 0.05
NMS_IOU = 0.3
KEEP_SCORE = 0.5
OFFICIAL_SCORE = 0.95  # FLOAT's process_img keeps boxes above this and takes the first
DETECT_HEIGHT = 360.0
CROP_SCALE = 1.6


class S3fdError(PreprocessError, ValueError):
    """An S3FD weights file that cannot be used; the message names the file and why."""


class L2Norm(nn.Module):
    """Per-position L2 normalisation over channels, times a learned per-channel scale."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10) * self.weight.view(1, -1, 1, 1)


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, padding)


# (name, in, out) of the trunk; a max-pool follows the last conv of each of the first five blocks.
TRUNK = (("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
         ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
         ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
         ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512))
POOL_AFTER = {"conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"}
# (head name, feature channels, class channels)
HEADS = (("conv3_3_norm", 256, 4), ("conv4_3_norm", 512, 2), ("conv5_3_norm", 512, 2),
         ("fc7", 1024, 2), ("conv6_2", 512, 2), ("conv7_2", 256, 2))


class S3FD(nn.Module):
    """face_alignment's s3fd network: forward gives [cls1, reg1, ..., cls6, reg6] (class logits, box offsets)."""

    def __init__(self):
        super().__init__()
        for name, cin, cout in TRUNK:
            setattr(self, name, _conv(cin, cout))
        self.fc6 = _conv(512, 1024, 3, 1, 3)
        self.fc7 = _conv(1024, 1024, 1, 1, 0)
        self.conv6_1 = _conv(1024, 256, 1, 1, 0)
        self.conv6_2 = _conv(256, 512, 3, 2, 1)
        self.conv7_1 = _conv(512, 128, 1, 1, 0)
        self.conv7_2 = _conv(128, 256, 3, 2, 1)
        self.conv3_3_norm = L2Norm(256, 10)
        self.conv4_3_norm = L2Norm(512, 8)
        self.conv5_3_norm = L2Norm(512, 5)
        for name, channels, classes in HEADS:
            setattr(self, f"{name}_mbox_conf", _conv(channels, classes))
            setattr(self, f"{name}_mbox_loc", _conv(channels, 4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = {}
        for name, _, _ in TRUNK:
            x = F.relu(getattr(self, name)(x))
            if name in POOL_AFTER:
                taps[name] = x
                x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.fc7(F.relu(self.fc6(x))))
        taps["fc7"] = x
        x = F.relu(self.conv6_2(F.relu(self.conv6_1(x))))
        taps["conv6_2"] = x
        x = F.relu(self.conv7_2(F.relu(self.conv7_1(x))))
        taps["conv7_2"] = x
        features = [self.conv3_3_norm(taps["conv3_3"]), self.conv4_3_norm(taps["conv4_3"]),
                    self.conv5_3_norm(taps["conv5_3"]), taps["fc7"], taps["conv6_2"], taps["conv7_2"]]
        out = []
        for (name, _, _), f in zip(HEADS, features):
            out += [getattr(self, f"{name}_mbox_conf")(f), getattr(self, f"{name}_mbox_loc")(f)]
        background = out[0][:, :3].max(dim=1, keepdim=True).values  # max-out background
        out[0] = torch.cat([background, out[0][:, 3:]], dim=1)
        return out


def load_s3fd(path: str | Path) -> S3FD:
    """The network with face_alignment's S3FD weights from ``path``; S3fdError (one line, naming the file) when the
    file is missing, not a safe torch file, or not S3FD's state dict (missing, extra or misshaped tensors)."""
    from float.safe_load import CheckpointError, safe_torch_load

    try:
        state = safe_torch_load(path, label="--s3fd ")
    except CheckpointError as e:
        raise S3fdError(str(e)) from None
    net = S3FD()
    expected = net.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise S3fdError(f"--s3fd {path}: not a state dict of tensors (face_alignment's {WEIGHTS_FILE} is one)")
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or shapes:
        what = (f"{len(missing)} tensors missing (e.g. {missing[0]})" if missing else
                f"{len(extra)} unexpected tensors (e.g. {extra[0]})" if extra else
                f"{shapes[0]} is {tuple(state[shapes[0]].shape)}, S3FD's is {tuple(expected[shapes[0]].shape)}")
        raise S3fdError(f"--s3fd {path}: not face_alignment's S3FD weights ({WEIGHTS_FILE}): {what}")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()


@functools.lru_cache(maxsize=2)
def cached_s3fd(path: str) -> S3FD:
    return load_s3fd(path)


def decode(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Box offsets (N, 4) against priors (N, 4: cx, cy, w, h) -> boxes (N, 4: x1, y1, x2, y2)."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCES[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def candidates(outputs: list[torch.Tensor]) -> np.ndarray:
    """Every anchor whose face probability is over CANDIDATE_SCORE, decoded: (N, 5) x1, y1, x2, y2, score,
    in head order then row-major cell order (as face_alignment lists them)."""
    rows = []
    for i in range(len(outputs) // 2):
        probs = F.softmax(outputs[2 * i], dim=1)[0, 1]
        loc = outputs[2 * i + 1][0]
        stride = 2 ** (i + 2)
        hits = torch.nonzero(probs > CANDIDATE_SCORE)
        if len(hits) == 0:
            continue
        r, c = hits[:, 0], hits[:, 1]
        priors = torch.stack([stride / 2 + c * stride, stride / 2 + r * stride,
                              torch.full_like(r, 4 * stride), torch.full_like(r, 4 * stride)], dim=1).double()
        boxes = decode(loc[:, r, c].T.double(), priors)
        rows.append(torch.cat([boxes, probs[r, c].double()[:, None]], dim=1))
    return torch.cat(rows).numpy() if rows else np.zeros((0, 5))


def nms(dets: np.ndarray, threshold: float = NMS_IOU) -> list[int]:
    """Greedy non-maximum suppression, highest score first; areas count the end pixel (+1), as face_alignment's."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        overlap = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[1:][overlap <= threshold]
    return keep


@torch.no_grad()
def detect(net: S3FD, image: np.ndarray) -> np.ndarray:
    """Faces of an RGB uint8 image: (N, 5) x1, y1, x2, y2, score, highest score first (module doc)."""
    bgr = image[..., ::-1].astype(np.float32) - np.array(BGR_MEAN, np.float32)
    x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]
    dets = candidates(net(x))
    if len(dets) == 0:
        return dets
    dets = dets[nms(dets)]
    return dets[dets[:, 4] > KEEP_SCORE]


def official_crop_box(net: S3FD, image: np.ndarray) -> CropBox | None:
    """The crop the official DataProcessor.process_img makes: S3FD on a copy scaled to 360 rows (INTER_AREA when
    shrinking, else INTER_CUBIC), boxes scaled back and truncated to int, the first box over 0.95, half-side
    int(1.6 * max(int(half width), int(half height))) around the box's int centre. None when no face passes."""
    mult = DETECT_HEIGHT / image.shape[0]
    resized = cv2.resize(image, dsize=(0, 0), fx=mult, fy=mult,
                         interpolation=cv2.INTER_AREA if mult < 1.0 else cv2.INTER_CUBIC)
    boxes = [(int(x1 / mult), int(y1 / mult), int(x2 / mult), int(y2 / mult))
             for x1, y1, x2, y2, score in detect(net, resized) if score > OFFICIAL_SCORE]
    if not boxes:
        return None
    x1, y1, x2, y2 = boxes[0]
    half = int(max(int((y2 - y1) / 2), int((x2 - x1) / 2)) * CROP_SCALE)
    return CropBox(cx=float(int((x1 + x2) / 2)), cy=float(int((y1 + y2) / 2)), side=2 * half)
