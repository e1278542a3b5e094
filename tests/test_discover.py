"""Discovery reads only names and zip indexes, so these tests use placeholder files."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from preprocess.discover import ClipSource, discover, looks_like_ravdess, parse_ravdess_name, split_zip_member_path
from preprocess.media import open_bytes
from shards.format import EMOTIONS


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def by_id(clips: list[ClipSource]) -> dict[str, ClipSource]:
    return {c.clip_id: c for c in clips}


def test_parse_all_seven_fields():
    fields = parse_ravdess_name("02-02-06-02-01-02-12")
    assert fields == {"modality": "video-only", "vocal_channel": "song", "emotion_code": 6,
                      "intensity": "strong", "statement": 1, "repetition": 2, "actor": 12}
    assert parse_ravdess_name("01-01-01-01-02-01-03")["modality"] == "audio-video"
    assert parse_ravdess_name("03-01-01-01-02-01-03")["modality"] == "audio-only"


@pytest.mark.parametrize("stem, field", [("01-01-05-01-01-01", "seven"), ("04-01-05-01-01-01-12", "modality"),
                                         ("01-03-05-01-01-01-12", "vocal"), ("01-01-09-01-01-01-12", "emotion"),
                                         ("01-01-05-03-01-01-12", "intensity"), ("01-01-05-01-03-01-12", "statement"),
                                         ("01-01-05-01-01-00-12", "repetition"), ("01-01-05-01-01-01-00", "actor"),
                                         ("1-01-05-01-01-01-12", "seven"), ("clip", "seven")])
def test_parse_rejects_bad_names_naming_the_field(stem, field):
    with pytest.raises(ValueError, match=field):
        parse_ravdess_name(stem)


def test_ravdess_folder(tmp_path):
    a1, a2 = tmp_path / "Actor_01", tmp_path / "Actor_02"
    touch(a1 / "01-01-02-01-01-01-01.mp4")  # calm -> neutral, own audio track
    touch(a1 / "01-02-05-02-02-01-01.mp4")  # song, angry
    touch(a1 / "02-01-03-01-01-02-01.mp4")  # video-only, paired below
    touch(a1 / "03-01-03-01-01-02-01.wav")
    touch(a1 / "03-01-04-01-01-01-01.wav")  # audio-only alone: not a clip, not an error
    touch(a2 / "02-01-08-01-01-01-02.mp4")  # video-only without its wav
    touch(a2 / "01-01-06-01-01-01-02.mp4")  # fearful -> fear
    touch(a2 / "02-01-06-01-01-01-02.mp4")  # the same recording muted: skipped, 01 is used
    touch(a2 / "badname.mp4")
    touch(a2 / "01-01-05-01-01-01-07.mp4")  # actor 07 in Actor_02
    touch(a2 / "01-01-05-01-01-01-02.wav")  # a wav must be modality 03
    touch(a2 / "notes.txt")  # not media: ignored
    clips, rejected = discover(tmp_path)
    assert [c.clip_id for c in clips] == sorted(c.clip_id for c in clips)
    got = by_id(clips)
    assert set(got) == {"01-01-02-01-01-01-01", "01-02-05-02-02-01-01", "02-01-03-01-01-02-01", "01-01-06-01-01-01-02"}
    calm = got["01-01-02-01-01-01-01"]
    assert (calm.emotion, calm.actor, calm.audio, calm.video) == ("neutral", "01", None, str(a1 / calm.clip_id) + ".mp4")
    assert calm.fields["emotion_code"] == 2 and calm.fields["modality"] == "audio-video"
    paired = got["02-01-03-01-01-02-01"]
    assert paired.audio == str(a1 / "03-01-03-01-01-02-01.wav") and paired.emotion == "happy"
    assert got["01-01-06-01-01-01-02"].emotion == "fear"
    assert got["01-02-05-02-02-01-01"].fields["vocal_channel"] == "song"
    assert all(c.emotion in EMOTIONS for c in clips)
    reasons = {Path(r.path).name: r.reason for r in rejected}
    assert set(reasons) == {"02-01-08-01-01-01-02.mp4", "badname.mp4", "01-01-05-01-01-01-07.mp4",
                            "01-01-05-01-01-01-02.wav"}
    assert reasons["badname.mp4"].startswith("name does not parse as RAVDESS")
    assert "03-01-08-01-01-01-02.wav" in reasons["02-01-08-01-01-01-02.mp4"]
    assert "Actor_02" in reasons["01-01-05-01-01-01-07.mp4"]
    assert "modality" in reasons["01-01-05-01-01-01-02.wav"]

    speech, _ = discover(tmp_path, vocal_channels=("speech",))
    assert "01-02-05-02-02-01-01" not in by_id(speech) and len(speech) == 3
    assert discover(tmp_path) == (clips, rejected)  # deterministic


def test_zips_read_in_place_and_escaping_members_rejected(tmp_path):
    video_zip = tmp_path / "Video_Speech_Actor_03.zip"
    with zipfile.ZipFile(video_zip, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Actor_03/01-01-05-01-01-01-03.mp4", b"video-bytes-1")
        zf.writestr("Actor_03/02-01-04-02-02-02-03.mp4", b"video-bytes-2")
        zf.writestr("Actor_03/", b"")
        zf.writestr("__MACOSX/Actor_03/._01-01-05-01-01-01-03.mp4", b"fork")
        zf.writestr("../evil.mp4", b"evil")
        zf.writestr("/abs/01-01-05-01-01-01-03.mp4", b"evil")
    with zipfile.ZipFile(tmp_path / "Audio_Speech_Actors_01-24.zip", "w") as zf:
        zf.writestr("Actor_03/03-01-04-02-02-02-03.wav", b"audio-bytes")
    touch(tmp_path / "unrelated.zip", b"not a zip at all")  # not a RAVDESS archive name: ignored
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert looks_like_ravdess(tmp_path)
    clips, rejected = discover(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing extracted
    got = by_id(clips)
    assert set(got) == {"01-01-05-01-01-01-03", "02-01-04-02-02-02-03"}
    av_clip, paired = got["01-01-05-01-01-01-03"], got["02-01-04-02-02-02-03"]
    assert av_clip.video == f"zip:{video_zip.resolve()}::Actor_03/01-01-05-01-01-01-03.mp4"
    assert split_zip_member_path(av_clip.video) == (str(video_zip.resolve()), "Actor_03/01-01-05-01-01-01-03.mp4")
    assert paired.audio.endswith("Audio_Speech_Actors_01-24.zip::Actor_03/03-01-04-02-02-02-03.wav")
    with open_bytes(av_clip.video) as f:
        assert f.read() == b"video-bytes-1"
    with open_bytes(paired.audio) as f:
        assert f.read() == b"audio-bytes"
    escaped = [r for r in rejected if "escape" in r.reason]
    assert {r.path.rpartition("::")[2] for r in escaped} == {"../evil.mp4", "/abs/01-01-05-01-01-01-03.mp4"}
    assert "'..'" in next(r.reason for r in escaped if r.path.endswith("../evil.mp4"))
    assert not any("MACOSX" in r.path for r in rejected)


def test_corrupt_ravdess_zip_is_rejected_not_fatal(tmp_path):
    touch(tmp_path / "Video_Song_Actor_05.zip", b"PK garbage")
    touch(tmp_path / "Actor_05" / "01-02-03-01-01-01-05.mp4")
    clips, rejected = discover(tmp_path)
    assert [c.clip_id for c in clips] == ["01-02-03-01-01-01-05"]
    assert len(rejected) == 1 and "zip" in rejected[0].reason


def test_folder_discovery(tmp_path):
    touch(tmp_path / "speaker a" / "take.1.mp4")
    touch(tmp_path / "speaker a" / "take.1.wav")
    touch(tmp_path / "speaker_b" / "x.MOV")
    touch(tmp_path / "top.mkv")
    touch(tmp_path / "readme.txt")
    touch(tmp_path / "speaker_b" / ".hidden.mp4")
    clips, rejected = discover(tmp_path)  # auto: no Actor_NN folders, no RAVDESS zips
    assert rejected == []
    got = {Path(c.video).name: c for c in clips}
    assert set(got) == {"take.1.mp4", "x.MOV", "top.mkv"}
    assert got["take.1.mp4"].audio == str(tmp_path / "speaker a" / "take.1.wav")
    assert got["take.1.mp4"].actor == "speaker a"
    assert got["x.MOV"].audio is None and got["x.MOV"].actor == "speaker_b"
    assert got["top.mkv"].actor == "top"
    assert all(c.emotion is None and c.fields == {} for c in clips)
    for clip in clips:  # keys become tar member names: no dots, no slashes
        assert re.fullmatch(r"[A-Za-z0-9_-]+", clip.clip_id), clip.clip_id
    assert len({c.clip_id for c in clips}) == 3
    # RAVDESS-named files in a plain folder are just videos when kind="folder"
    touch(tmp_path / "Actor_01" / "01-01-05-01-01-01-01.mp4")
    assert len(discover(tmp_path, kind="folder")[0]) == 4
    assert len(discover(tmp_path)[0]) == 1  # auto now sees RAVDESS


def test_folder_key_collisions_are_rejected(tmp_path):
    touch(tmp_path / "a b" / "c.mp4")
    touch(tmp_path / "a_b" / "c.mp4")
    clips, rejected = discover(tmp_path, kind="folder")
    assert len(clips) == 1 and len(rejected) == 1 and "collides" in rejected[0].reason


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover(tmp_path / "missing")
    with pytest.raises(NotADirectoryError):
        discover(touch(tmp_path / "file.mp4"))
    with pytest.raises(ValueError, match="kind"):
        discover(tmp_path, kind="voxceleb")
    with pytest.raises(ValueError, match="vocal channel"):
        discover(tmp_path, vocal_channels=("shout",))
