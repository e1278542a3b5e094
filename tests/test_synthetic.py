"""The synthetic RAVDESS set: format, determinism, and audio that really drives the face."""
from __future__ import annotations

import hashlib
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from preprocess.discover import discover
from preprocess.media import SAMPLES_PER_FRAME, align, decode_audio, decode_video
from preprocess.synthetic import actor_look, make_synthetic_ravdess

ACTORS, STATEMENTS, EMOTIONS = (1, 4), (2,), (1, 5)


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.mp4"))}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_synthetic_ravdess(tmp_path_factory.mktemp("a"), actors=ACTORS, statements=STATEMENTS,
                                  emotions=EMOTIONS, seed=0)


def test_layout_and_format_match_ravdess(root):
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert names == ["Actor_01/01-01-01-01-02-01-01.mp4", "Actor_01/01-01-05-01-02-01-01.mp4",
                     "Actor_04/01-01-01-01-02-01-04.mp4", "Actor_04/01-01-05-01-02-01-04.mp4"]
    clips, rejected = discover(root)
    assert rejected == [] and len(clips) == 4
    assert {(c.actor, c.emotion) for c in clips} == {("01", "neutral"), ("01", "angry"), ("04", "neutral"),
                                                     ("04", "angry")}
    with av.open(str(root / names[0])) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and (video.width, video.height) == (640, 360)
        assert float(video.average_rate) == pytest.approx(29.97, abs=0.01)
        assert audio.codec_context.name == "aac" and audio.rate == 48000 and audio.channels == 2
        seconds = float(video.duration * video.time_base)
    assert 3.0 <= seconds <= 4.0


def test_deterministic_given_the_seed(root, tmp_path):
    again = make_synthetic_ravdess(tmp_path / "b", actors=ACTORS, statements=STATEMENTS, emotions=EMOTIONS, seed=0)
    assert digests(again) == digests(root)
    other = make_synthetic_ravdess(tmp_path / "c", actors=(1,), statements=(2,), emotions=(1,), seed=1)
    name = "Actor_01/01-01-01-01-02-01-01.mp4"
    assert digests(other)[name] != digests(root)[name]
    assert not list(tmp_path.rglob(".*partial*"))  # temporary files renamed away


def test_mouth_follows_the_speech_envelope(root):
    path = root / "Actor_04" / "01-01-05-01-02-01-04.mp4"
    frames, _ = decode_video(str(path))
    frames, audio = align(frames, decode_audio(str(path)))
    loudness = np.sqrt((audio.reshape(len(frames), SAMPLES_PER_FRAME) ** 2).mean(axis=1))
    mx, my = actor_look(0, 4).mouth_in_frame()
    x, y = int(mx), int(my)
    darkness = np.array([255 - f[y - 4:y + 6, x - 6:x + 7].mean() for f in frames])
    assert np.corrcoef(loudness, darkness)[0, 1] > 0.6
    assert loudness[:5].max() < 0.02 < loudness.max()  # leading silence, then speech


def test_head_sways_and_emotion_is_visible(root):
    neutral, _ = decode_video(str(root / "Actor_01" / "01-01-01-01-02-01-01.mp4"))
    angry, _ = decode_video(str(root / "Actor_01" / "01-01-05-01-02-01-01.mp4"))
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in (neutral[0], neutral[len(neutral) // 2])]
    (dx, dy), _ = cv2.phaseCorrelate(gray[0], gray[1])
    assert 0.5 < np.hypot(dx, dy) < 20  # the whole head moved a little
    x, y, side = actor_look(0, 1).face_in_frame()
    face = (slice(int(y - side / 3), int(y + side / 3)), slice(int(x - side / 3), int(x + side / 3)))

    def redness(frame):
        r, g, b = frame[face].reshape(-1, 3).mean(axis=0)
        return r / (g + b)

    assert redness(angry[0]) > 1.1 * redness(neutral[0])


def test_actors_differ(root):
    one, four = actor_look(0, 1), actor_look(0, 4)
    assert one.face_in_frame() != four.face_in_frame() and one.background != four.background
    first_1, _ = decode_video(str(root / "Actor_01" / "01-01-01-01-02-01-01.mp4"))
    first_4, _ = decode_video(str(root / "Actor_04" / "01-01-01-01-02-01-04.mp4"))
    assert np.abs(first_1[0].astype(int) - first_4[0].astype(int)).mean() > 10


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="emotion"):
        make_synthetic_ravdess(tmp_path, emotions=(9,))
    with pytest.raises(ValueError, match="even"):
        make_synthetic_ravdess(tmp_path, size=(641, 360))
