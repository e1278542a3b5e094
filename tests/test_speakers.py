"""Who the speaker of a plain-folder clip is (the split goes by it), and the warning when the folder cannot tell."""
from __future__ import annotations

from pathlib import Path

import pytest

from preprocess.discover import discover, flat_folder_warning
from preprocess.splits import assign_splits


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_default_speaker_is_the_first_folder_even_when_nested(tmp_path):
    touch(tmp_path / "alice" / "2019" / "talk1.mp4")
    touch(tmp_path / "alice" / "2021" / "talk2.mp4")
    touch(tmp_path / "bob" / "talk.mp4")
    clips, rejected = discover(tmp_path)
    assert rejected == [] and {c.clip_id: c.actor for c in clips} == {
        "alice__2019__talk1": "alice", "alice__2021__talk2": "alice", "bob__talk": "bob"}
    assert flat_folder_warning(tmp_path, clips) is None
    # one speaker's two sessions can never be split apart
    split = assign_splits([c.actor for c in clips], 1, 0)
    assert len({split[c.actor] for c in clips if c.actor == "alice"}) == 1


def test_speaker_pattern_on_the_path(tmp_path):
    touch(tmp_path / "WDA_BarackObama_000.mp4")
    touch(tmp_path / "WDA_BarackObama_001.mp4")
    touch(tmp_path / "RD_Radio11_000.mp4")
    touch(tmp_path / "noise.mp4")
    clips, rejected = discover(tmp_path, speaker_pattern=r"^[A-Z]+_([A-Za-z0-9]+)_\d+")
    assert {c.actor for c in clips} == {"BarackObama", "Radio11"}
    assert sum(c.actor == "BarackObama" for c in clips) == 2
    assert [Path(r.path).name for r in rejected] == ["noise.mp4"] and "speaker-pattern" in rejected[0].reason
    with pytest.raises(ValueError, match="no group"):
        discover(tmp_path, speaker_pattern=r"WDA_\w+")
    with pytest.raises(ValueError, match="not a regular expression"):
        discover(tmp_path, speaker_pattern=r"(unclosed")


def test_flat_folder_warns_of_the_identity_leak(tmp_path):
    touch(tmp_path / "clip_a.mp4")
    touch(tmp_path / "clip_b.mp4")
    touch(tmp_path / "carol" / "x.mp4")
    clips, _ = discover(tmp_path)
    assert {c.actor for c in clips} == {"clip_a", "clip_b", "carol"}  # each loose file its own speaker
    warning = flat_folder_warning(tmp_path, clips)
    assert "2 of 3" in warning and "identity leak" in warning and "--speaker-pattern" in warning


def test_speaker_pattern_is_refused_for_ravdess(tmp_path):
    touch(tmp_path / "Actor_01" / "01-01-01-01-01-01-01.mp4")
    with pytest.raises(ValueError, match="RAVDESS actors come from the file names"):
        discover(tmp_path, speaker_pattern=r"(\d+)")
