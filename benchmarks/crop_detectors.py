"""Haar against dlib as the shard stage's face detector: which gives steadier, better-centred crops, and how fast.

Two sources, each decoded at 25 fps as the shard stage decodes:
  real       ../shared/samples/talking_head_512_25fps.mp4: frames of an official crop, so the SFD box the
             official framing is built on is the centred 320 px square (preprocess/face.py);
  synthetic  the synthetic RAVDESS-format set (preprocess/synthetic.py, seed 0, 640x360), where each
             actor's face centre and size are known (ActorLook.face_in_frame; the head sways a few pixels).
Per detector and source, every frame is searched and its best box (Haar: highest level weight, dlib: highest
HOG score) mapped onto the SFD box by the detector's calibration:
  found       frames with a face / frames;
  jitter c/s  frame-to-frame change of the box centre / of the box side, as a fraction of the side
              (mean over consecutive frames that both have a face): lower is steadier;
  off-centre  distance of the box centre from the true face centre / side (mean over frames);
  crop off    the clip's crop (face_pick.choose_crop_box on 12 sampled frames, as the shard stage does):
              its centre's distance from the true centre / crop side (mean over clips);
  face share  true face side / crop side (official framing: 320 / 512 = 0.625 on the real clip);
  ms/frame    detection time per frame (one thread, this machine).
    PYTHONPATH=. .venv/bin/python benchmarks/crop_detectors.py [--actors 4] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cv2  # noqa: E402

from preprocess.discover import discover  # noqa: E402
from preprocess.face import sample_indices  # noqa: E402
from preprocess.face_pick import DETECTORS, choose_crop_box, get_detector  # noqa: E402
from preprocess.media import iter_video_frames  # noqa: E402
from preprocess.synthetic import actor_look, make_synthetic_ravdess  # noqa: E402

REAL_CLIP = Path(__file__).resolve().parents[2] / "shared" / "samples" / "talking_head_512_25fps.mp4"
SFD_REAL = (256.0, 256.0, 320.0)  # the official SFD box of the real clip's frames: centre x, y and side


def best_sfd_box(detector, frame: np.ndarray) -> np.ndarray | None:
    """The frame's most confident box mapped onto the SFD box: (cx, cy, side), or None."""
    det = detector.detect(frame)
    if len(det.boxes) == 0:
        return None
    x, y, w, h = det.boxes[int(np.argmax(det.weights))]
    side = max(w, h)
    m = detector.mapping
    return np.array([x + w / 2 + m.shift_x * side, y + h / 2 + m.shift_y * side, m.side * side])


def measure_clip(kind: str, frames: list[np.ndarray], truth: tuple[float, float, float]) -> dict:
    detector = get_detector(kind)
    boxes, seconds = [], 0.0
    for frame in frames:
        start = time.perf_counter()
        boxes.append(best_sfd_box(detector, frame))
        seconds += time.perf_counter() - start
    centre_jitter, side_jitter = [], []
    for a, b in zip(boxes[:-1], boxes[1:]):
        if a is not None and b is not None:
            centre_jitter.append(np.hypot(*(b[:2] - a[:2])) / a[2])
            side_jitter.append(abs(b[2] - a[2]) / a[2])
    found = [b for b in boxes if b is not None]
    off = [np.hypot(b[0] - truth[0], b[1] - truth[1]) / b[2] for b in found]
    crop = choose_crop_box([frames[i] for i in sample_indices(len(frames), 12)], detector=kind)
    return {"frames": len(frames), "found": len(found), "centre_jitter": centre_jitter, "side_jitter": side_jitter,
            "off_centre": off, "crop_off": float(np.hypot(crop.cx - truth[0], crop.cy - truth[1]) / crop.side),
            "face_share": truth[2] / crop.side, "seconds": seconds}


def summarise(rows: list[dict]) -> dict:
    def mean(key):
        values = [v for r in rows for v in r[key]]
        return float(np.mean(values)) if values else float("nan")

    frames = sum(r["frames"] for r in rows)
    return {"clips": len(rows), "frames": frames, "found": sum(r["found"] for r in rows) / frames,
            "centre_jitter": mean("centre_jitter"), "side_jitter": mean("side_jitter"),
            "off_centre": mean("off_centre"), "crop_off": float(np.mean([r["crop_off"] for r in rows])),
            "face_share": float(np.mean([r["face_share"] for r in rows])),
            "ms_per_frame": 1000 * sum(r["seconds"] for r in rows) / frames}


def sources(actors: int, workdir: Path) -> dict[str, list[tuple[list[np.ndarray], tuple]]]:
    out = {}
    if REAL_CLIP.is_file():
        frames = list(iter_video_frames(str(REAL_CLIP))[0])
        out["real"] = [(frames, SFD_REAL)]
    else:
        print(f"note: {REAL_CLIP} not found; the real clip is left out", file=sys.stderr)
    root = make_synthetic_ravdess(workdir / "synthetic", actors=tuple(range(1, actors + 1)), statements=(1,),
                                  emotions=(1,), seed=0)
    clips, _ = discover(root)
    out["synthetic"] = [(list(iter_video_frames(c.video)[0]), actor_look(0, int(c.actor)).face_in_frame())
                        for c in clips]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--actors", type=int, default=4, help="synthetic actors (one clip each)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, clips in sources(args.actors, Path(tmp)).items():
            for kind in DETECTORS:
                results[f"{name}/{kind}"] = summarise([measure_clip(kind, frames, truth) for frames, truth in clips])
    print("| source / detector | clips | frames | found | jitter centre | jitter side | off-centre | crop off "
          "| face share | ms/frame |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, r in results.items():
        print(f"| {key} | {r['clips']} | {r['frames']} | {100 * r['found']:.1f} % | {r['centre_jitter']:.4f} | "
              f"{r['side_jitter']:.4f} | {r['off_centre']:.3f} | {r['crop_off']:.3f} | {r['face_share']:.3f} | "
              f"{r['ms_per_frame']:.1f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
