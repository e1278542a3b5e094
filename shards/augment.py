"""Augmentation of stage-1 (source, driving) pairs, one draw shared by both frames of a pair.

Why shared: the auto-encoder learns the motion from source to driving. A transform drawn once and
applied to both frames leaves that motion unchanged, but shows the model more faces: another skin tone
and light (colour), the other side of the face (flip), another face size and place in the crop (affine).
With a few training people the motion encoder otherwise learns their faces rather than their motion,
and held-out people are rebuilt barely better than copying the source (README, real data).

Transforms, each named in ``--augment`` (comma-separated) and drawn per pair from the stream's
generator, so a resumed run draws the same ones:
  flip    mirror left-right with probability 1/2;
  colour  brightness x[0.75, 1.25], contrast x[0.75, 1.25], saturation x[0.6, 1.4], per-channel gain
          x[0.9, 1.1];
  affine  scale x[0.9, 1.1] about the centre and a shift of up to 5 % of the side each way (edges
          reflected, so no black border for the model to learn).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TRANSFORMS = ("flip", "colour", "affine")
BRIGHTNESS, CONTRAST, SATURATION, CHANNEL_GAIN = 0.25, 0.25, 0.4, 0.1
SCALE, SHIFT = 0.1, 0.05
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class PairAugment:
    flip: bool = False
    colour: bool = False
    affine: bool = False

    @classmethod
    def parse(cls, text: str | None) -> "PairAugment":
        """'none' (or empty) -> nothing; 'all' -> every transform; else a comma list of TRANSFORMS."""
        names = [] if not text or text.strip() in ("none", "") else \
            list(TRANSFORMS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
        unknown = sorted(set(names) - set(TRANSFORMS))
        if unknown:
            raise ValueError(f"--augment: unknown transform(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(TRANSFORMS)}, 'all' or 'none'")
        return cls(**{n: True for n in names})

    @property
    def active(self) -> bool:
        return self.flip or self.colour or self.affine

    def names(self) -> list[str]:
        return [n for n in TRANSFORMS if getattr(self, n)]

    def draw(self, rng: np.random.Generator) -> dict:
        """This pair's parameters. Every number is drawn whatever is switched on, so switching one
        transform on or off does not change the others' draws."""
        u = rng.random(9)
        return {
            "flip": bool(self.flip and u[0] < 0.5),
            "brightness": 1 + BRIGHTNESS * (2 * u[1] - 1) if self.colour else 1.0,
            "contrast": 1 + CONTRAST * (2 * u[2] - 1) if self.colour else 1.0,
            "saturation": 1 + SATURATION * (2 * u[3] - 1) if self.colour else 1.0,
            "gain": 1 + CHANNEL_GAIN * (2 * u[4:7] - 1) if self.colour else np.ones(3),
            "scale": 1 + SCALE * (2 * u[7] - 1) if self.affine else 1.0,
            "shift": SHIFT * (2 * rng.random(2) - 1) if self.affine else np.zeros(2),
        }


def apply(frame: np.ndarray, p: dict) -> np.ndarray:
    """One (S,S,3) RGB uint8 frame transformed by the parameters ``p`` of PairAugment.draw."""
    out = frame
    if p["flip"]:
        out = out[:, ::-1]
    if p["scale"] != 1.0 or np.any(p["shift"]):
        side = out.shape[0]
        matrix = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), 0.0, float(p["scale"]))
        matrix[:, 2] += p["shift"] * side
        out = cv2.warpAffine(np.ascontiguousarray(out), matrix, (side, out.shape[1]), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
    if p["brightness"] != 1.0 or p["contrast"] != 1.0 or p["saturation"] != 1.0 or np.any(p["gain"] != 1.0):
        x = out.astype(np.float32) * (p["brightness"] * p["gain"]).astype(np.float32)
        grey = x @ _LUMA
        x = grey[..., None] + p["saturation"] * (x - grey[..., None])  # saturation about each pixel's grey
        mean = float(grey.mean())
        x = mean + p["contrast"] * (x - mean)  # contrast about the frame's mean
        out = np.clip(x, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(out)


def augment_pairs(pairs: list[dict], spec: PairAugment, rng: np.random.Generator) -> list[dict]:
    """Each pair's source and driving frames transformed alike (new arrays; the clip's stay as they are)."""
    if not spec.active:
        return pairs
    out = []
    for pair in pairs:
        p = spec.draw(rng)
        out.append({**pair, "source": apply(pair["source"], p), "driving": apply(pair["driving"], p)})
    return out
