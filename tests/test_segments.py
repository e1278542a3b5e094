"""Long videos are cut into bounded segments: one speaker, one split, faceless stretches and scene cuts
ending a segment, keys and meta that say where each segment sits, resume and determinism kept."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from preprocess import segments
from preprocess.clip import PreparedClip
from preprocess.segments import prepare_source
from preprocess.discover import discover, flat_folder_warning
from preprocess.errors import PipelineError
from preprocess.pipeline import _samples_of, run_shards
from preprocess.segments import SegmentPlan
from preprocess.settings import ShardSettings
from preprocess.splits import assign_splits
from shards.format import ERRORS, META, REFERENCE
from shards.inspect import file_sha256, inspect_shards, iter_samples, list_shards

sys.path.insert(0, str(Path(__file__).parent))
from long_video import SIZE, write_long_video  # noqa: E402


def test_ten_minute_video_in_a_flat_folder(tmp_path, monkeypatch):
    # One detection per 10 s instead of per second keeps the test quick; the rules are the same.
    monkeypatch.setattr(segments, "SAMPLE_STRIDE", 250)
    flat = tmp_path / "flat"
    flat.mkdir()
    write_long_video(flat / "interview.mp4", 600, black=(300, 330), cut_at=450.5)
    clips, rejected = discover(flat)
    assert rejected == [] and len(clips) == 1
    src = clips[0]
    assert "identity leak" in flat_folder_warning(flat, clips)  # a flat folder: the risk is named
    plan = prepare_source(src, 16, "auto", min_seconds=2.0, segment_seconds=15.0)
    assert isinstance(plan, SegmentPlan) and plan.n_frames == 15000
    out = list(_samples_of(src, plan, None, 16))
    kept = [p for _, p, e in out if e is None]
    errors = [e["reason"] for _, p, e in out if e is not None]
    # bounded segments at frame boundaries, unique stable keys, one speaker and so one split
    assert len(kept) >= 36
    assert all(isinstance(p, PreparedClip) and 2 * 25 <= p.n_frames <= 15 * 25 for p in kept)
    keys = [p.source.clip_id for p in kept]
    assert len(set(keys)) == len(keys) and all(re.fullmatch(r"interview-s\d{3}", k) for k in keys)
    assert {p.source.actor for p in kept} == {"interview"}
    split_of = assign_splits([p.source.actor for p in kept])
    assert len({split_of[p.source.actor] for p in kept}) == 1
    spans = [(p.segment["start_frame"], p.segment["end_frame"]) for p in kept]
    assert spans == sorted(spans) and all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:]))
    for p, (a, b) in zip(kept, spans):
        assert p.n_frames == b - a and len(p.audio) == (b - a) * 640
        assert p.audio.tobytes() == plan.audio[a * 640:b * 640].tobytes()
        assert p.segment["start_s"] == a / 25
    # the black stretch (no face) is left out and named; no segment spans it or the scene cut
    assert not any(a < 330 * 25 and b > 300 * 25 + 250 for a, b in spans)
    assert any("no face detected" in r for r in errors)
    cut = int(np.ceil(450.6 * 25))
    assert not any(a < cut - 5 and b > cut + 5 for a, b in spans)
    assert sum(b - a for a, b in spans) > 15000 - 30 * 25 - 2 * 375
    # every crop follows the face: left of centre in the first shot, right of it after the cut
    for p, (a, b) in zip(kept, spans):
        expected = SIZE[0] * (0.5 + (0.12 if a >= cut else -0.12))
        assert abs(p.box.cx - expected) < 0.1 * p.box.side, (p.source.clip_id, p.box)


def _settings(root: Path, out: Path, **kw) -> ShardSettings:
    base = dict(input=root, out=out, input_size=8, workers=0, progress=False, segment_seconds=15.0,
                shard_samples=2, audio_features="mel")
    return ShardSettings(**(base | kw))


def _samples(folder: Path) -> dict:
    return {k: m for p in list_shards(folder) for k, m in iter_samples(p)}


def test_pipeline_writes_segments_resumes_and_repeats(tmp_path):
    root = tmp_path / "speakers"
    write_long_video(root / "anna" / "talk.mp4", 40)
    write_long_video(root / "ben" / "talk.mp4", 6)  # short: one sample with its plain key
    out = tmp_path / "shards"
    summary = run_shards(_settings(root, out), log=lambda m: None)
    assert summary.exit_code == 0
    samples = _samples(out)
    assert sorted(samples) == ["anna__talk-s000", "anna__talk-s001", "anna__talk-s002", "ben__talk"]
    metas = {k: json.loads(m[META]) for k, m in samples.items()}
    assert [metas[f"anna__talk-s00{i}"]["segment"]["start_frame"] for i in range(3)] == [0, 333, 667]
    assert metas["anna__talk-s002"]["n_frames"] == 333 and "segment" not in metas["ben__talk"]
    assert len({metas[k]["split"] for k in metas if k.startswith("anna")}) == 1
    assert inspect_shards(out).problems == []
    ref = cv2.imdecode(np.frombuffer(samples["ben__talk"][REFERENCE], np.uint8), cv2.IMREAD_COLOR)
    assert ref.shape == (8, 8, 3)  # the reference is kept at the crop size
    crops = _samples(Path(str(out) + "-crops"))
    assert json.loads(crops["anna__talk-s001"][META])["segment"]["start_frame"] == 333
    before = {p.name: file_sha256(p) for p in list_shards(out)}

    # resume after a killed run: the last shard is lost, its segments are redone, the rest kept
    last = list_shards(out)[-1]
    lost = [k for k, _ in iter_samples(last)]
    last.unlink()
    again = run_shards(_settings(root, out), log=lambda m: None)
    assert sum(again.written.values()) == len(lost) >= 1
    assert {p.name: file_sha256(p) for p in list_shards(out)} == before
    # the same inputs and settings elsewhere give the same bytes
    other = tmp_path / "other"
    run_shards(_settings(root, other), log=lambda m: None)
    assert {p.name: file_sha256(p) for p in list_shards(other)} == before
    assert (out / ERRORS).read_text() == ""


def test_segment_option_is_checked(tmp_path):
    with pytest.raises(PipelineError, match="--segment-seconds"):
        run_shards(_settings(tmp_path, tmp_path / "o", segment_seconds=1.0), log=lambda m: None)
