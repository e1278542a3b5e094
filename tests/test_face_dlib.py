"""The dlib face crop (preprocess/face_dlib.py) and the detector choice of the shard stage: calibration onto the
official SFD box, crops centred on the shared portrait and the synthetic set, the manifest's record, Haar kept
for folders made with it, a refused --detector, and a dlib default that needs no OpenCV cascades."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from preprocess import face, face_dlib, face_pick
from preprocess.clip import prepare_clip
from preprocess.discover import discover
from preprocess.errors import PipelineError, PreprocessError
from preprocess.face_pick import check_available, detector_kind, image_crop_box
from preprocess.media import iter_video_frames
from preprocess.pipeline import run_shards
from preprocess.settings import ShardSettings, resolve_detector
from preprocess.synthetic import actor_look, make_synthetic_ravdess
from shards.format import MANIFEST

SHARED = Path(__file__).resolve().parents[2] / "shared" / "samples"
PORTRAIT = SHARED / "portrait_512.jpg"
CLIP = SHARED / "talking_head_512_25fps.mp4"
needs_samples = pytest.mark.skipif(not (PORTRAIT.is_file() and CLIP.is_file()), reason=f"{SHARED} not found")
quiet = dict(log=lambda m: None)


def _portrait() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(PORTRAIT)), cv2.COLOR_BGR2RGB)


@needs_samples
def test_calibration_onto_the_sfd_box():
    """Re-derive the landmark -> SFD factors on the portrait and every 25th frame of the official-crop clip, whose
    SFD box is the centred 320 px square (preprocess/face_dlib.py)."""
    images = [_portrait()] + [f for i, f in enumerate(iter_video_frames(str(CLIP))[0]) if i % 25 == 0]
    ratios = []
    for image in images:
        det = face_dlib.detect_scored(image)
        x, y, w, h = det.boxes[0]
        ratios.append((320 / w, (256 - (x + w / 2)) / w, (256 - (y + h / 2)) / w))
    side, shift_x, shift_y = np.mean(ratios, axis=0)
    assert side == pytest.approx(face_dlib.LANDMARK_TO_SFD_SIDE, abs=0.06)
    assert shift_y == pytest.approx(face_dlib.LANDMARK_TO_SFD_SHIFT_Y, abs=0.03)
    assert abs(shift_x) < 0.06
    assert np.std([r[0] for r in ratios]) / side < 0.04  # the landmark box's size is steady


@needs_samples
def test_dlib_crop_of_the_shared_portrait_is_the_official_framing():
    box = image_crop_box(_portrait(), "dlib")
    # The portrait is an official crop: its crop is the whole 512 square.
    assert abs(box.cx - 256) < 0.04 * box.side and abs(box.cy - 256) < 0.04 * box.side
    assert box.side == pytest.approx(512, rel=0.06)


@pytest.fixture(scope="module")
def synthetic_clip(tmp_path_factory):
    root = make_synthetic_ravdess(tmp_path_factory.mktemp("synth"), actors=(5,), statements=(1,), emotions=(1,), seed=3)
    return root, discover(root)[0][0]


def test_dlib_crop_of_the_synthetic_set_is_centred_on_the_face(synthetic_clip):
    _, clip = synthetic_clip
    prepared = prepare_clip(clip, 32, detector="dlib")
    x, y, side = actor_look(3, 5).face_in_frame()
    box = prepared.box
    assert abs(box.cx - x) < 0.05 * box.side and abs(box.cy - y) < 0.08 * box.side
    assert side < box.side < 3 * side


def _run(root: Path, out: Path, **kw):
    logs = []
    settings = ShardSettings(ravdess=root, out=out, input_size=8, workers=0, progress=False, **kw)
    return run_shards(settings, log=logs.append), logs


def test_manifest_records_the_detector_and_a_haar_folder_stays_haar(synthetic_clip, tmp_path):
    root, _ = synthetic_clip
    summary, _ = _run(root, tmp_path / "dlib")
    manifest = json.loads((tmp_path / "dlib" / MANIFEST).read_text())
    assert summary.written["train"] == 1
    assert manifest["settings"]["detector"] == "dlib" and manifest["crop"]["detector"].startswith("dlib-")
    crops = json.loads((tmp_path / "dlib-crops" / MANIFEST).read_text())
    assert crops["crop"]["detector"] == manifest["crop"]["detector"]

    haar = tmp_path / "haar"
    _run(root, haar, detector="haar")
    made = json.loads((haar / MANIFEST).read_text())
    assert made["settings"]["detector"] == "haar" and made["crop"]["detector"].startswith("opencv-")
    assert made["fingerprint"] != manifest["fingerprint"]  # the detector changes the content
    again, logs = _run(root, haar)  # no --detector: the folder's own, so it resumes instead of refusing
    assert sum(again.written.values()) == 0 and any("haar, as recorded" in line for line in logs)
    rebuilt, _ = _run(root, haar, overwrite=True)  # rebuilding keeps it too
    assert sum(rebuilt.written.values()) == 1
    assert json.loads((haar / MANIFEST).read_text())["fingerprint"] == made["fingerprint"]
    with pytest.raises(PipelineError, match="different settings"):
        _run(root, haar, detector="dlib")  # a different detector on purpose: the usual refusal


def test_a_manifest_naming_no_detector_means_haar(tmp_path, monkeypatch):
    assert detector_kind(None) == "haar" and detector_kind("opencv-4.10-x.xml+scored-tracks-v1") == "haar"
    assert detector_kind("dlib-20.0-hog+face_recognition_models-0.3.0+landmark-box-v1") == "dlib"
    out = tmp_path / "old"
    out.mkdir()
    (out / MANIFEST).write_text("{}")  # unreadable as a manifest: ignored, the default applies
    assert resolve_detector(ShardSettings(out=out, crops=False), log=lambda m: None).detector == "dlib"
    import shards.manifest as manifest_module

    real = manifest_module.read_manifest

    def old_manifest(folder, name=MANIFEST):
        if Path(folder) == out:
            return {"crop": {"mode": "auto", "scale": 1.6}}  # written before the detector was recorded
        return real(folder, name)

    logs = []
    monkeypatch.setattr(manifest_module, "read_manifest", old_manifest)
    chosen = resolve_detector(ShardSettings(out=out, crops=False), log=logs.append)
    assert chosen.detector == "haar" and "as recorded" in logs[0]


def test_an_unknown_detector_is_refused_in_one_line(tmp_path):
    from preprocess.command import shards
    import typer

    with pytest.raises(PipelineError, match=r"--detector must be one of dlib, haar, got 'hog'"):
        run_shards(ShardSettings(out=tmp_path / "x", detector="hog", workers=0), **quiet)
    app = typer.Typer()
    app.command()(shards)
    app.command()(lambda: None)  # two commands: the first argument names one
    result = CliRunner().invoke(app, ["shards", "--detector", "hog", "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "--detector must be one of dlib, haar" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(PreprocessError, match="unknown face detector 'hog'"):
        face_pick.get_detector("hog")


def test_dlib_default_works_when_opencv_has_no_cascades(synthetic_clip, monkeypatch, tmp_path):
    """OpenCV 5 (on many GPU images) has no CascadeClassifier: the default crops anyway, Haar is refused clearly."""
    _, clip = synthetic_clip
    monkeypatch.delattr(cv2, "CascadeClassifier")
    face._cascade.cache_clear()
    try:
        with pytest.raises(PreprocessError, match="no Haar cascades"):
            check_available("haar")
        with pytest.raises(PipelineError, match="--detector haar: OpenCV .* no Haar cascades"):
            run_shards(ShardSettings(out=tmp_path / "x", detector="haar", workers=0), **quiet)
        assert resolve_detector(ShardSettings(out=tmp_path / "y"), log=lambda m: None).detector == "dlib"
        prepared = prepare_clip(clip, 16)  # the default detector
        x, y, _ = actor_look(3, 5).face_in_frame()
        assert abs(prepared.box.cx - x) < 0.05 * prepared.box.side
        from trainer.sample.media_input import crop_face

        frame = next(iter(iter_video_frames(clip.video)[0]))
        assert crop_face(frame, 16).shape == (16, 16, 3)  # sample --image
    finally:
        face._cascade.cache_clear()


def test_small_faces_are_found_by_upsampling(synthetic_clip):
    """A face of ~50 px at the 360 detection rows: HOG alone misses it, the doubled image finds it."""
    from preprocess import face_models

    _, clip = synthetic_clip
    frame = next(iter(iter_video_frames(clip.video)[0]))
    small = cv2.resize(frame, None, fx=0.42, fy=0.42, interpolation=cv2.INTER_AREA)
    canvas = np.full((360, 640, 3), 90, np.uint8)
    canvas[40:40 + small.shape[0], 60:60 + small.shape[1]] = small
    assert len(face_models.detect(canvas, upsample=0)[0]) == 0
    det = face_dlib.detect_scored(canvas)
    x, y, side = actor_look(3, 5).face_in_frame()
    fx, fy = 60 + 0.42 * x, 40 + 0.42 * y
    cx, cy, s = det.boxes[0][0] + det.boxes[0][2] / 2, det.boxes[0][1] + det.boxes[0][3] / 2, det.boxes[0][2]
    assert len(det.boxes) == 1 and np.hypot(cx - fx, cy - fy) < 0.3 * face_dlib.LANDMARK_TO_SFD_SIDE * s
