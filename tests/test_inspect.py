"""shards/inspect.py and `floatctl inspect`: a valid folder passes; each kind of damage is named."""
from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from preprocess.clip import PreparedClip
from preprocess.command import inspect as inspect_command
from preprocess.discover import ClipSource
from preprocess.encode import EncodedClip
from preprocess.pipeline import sample_members
from shards.manifest import build_manifest
from shards.format import AUDIO, EMOTION, EMOTION_PROBS, MANIFEST, META, MOTION, decode_npy, encode_json, encode_npy
from shards.inspect import file_sha256, format_report, inspect_shards, iter_samples, list_shards, scan_shard
from shards.manifest import fingerprint_inputs, settings_fingerprint, write_manifest
from shards.writer import ShardWriter

SETTINGS = {"input_size": 8, "crop": "none", "audio_features": "mel"}
ENCODERS = {"motion": "m-fp", "audio": "a-fp", "emotion": None}
FP = settings_fingerprint(SETTINGS, ENCODERS)
# (key, actor, split, frames, emotion)
CLIPS = [("c-01-a", "01", "train", 12, "happy"), ("c-01-b", "01", "train", 9, None),
         ("c-02-a", "02", "train", 10, "sad"), ("c-03-a", "03", "val", 11, "angry")]


def members_for(key, actor, split, frames, emotion, seed=0, probs=False) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    src = ClipSource(key, f"/data/{key}.mp4", None, actor, emotion, {})
    prepared = PreparedClip(src, rng.integers(0, 255, (frames, 8, 8, 3), dtype=np.uint8),
                            np.zeros(frames * 640, np.float32), None, 29.97, "ab" * 32)
    p = rng.random(7).astype(np.float32)
    encoded = EncodedClip(rng.normal(size=(frames, 512)).astype(np.float32),
                          rng.normal(size=(frames, 20)).astype(np.float32),
                          rng.normal(size=(frames, 80)).astype(np.float16), p / p.sum() if probs else None)
    return sample_members(key, split, prepared, encoded, FP, ENCODERS)


def base_manifest(probs=False) -> dict:
    return {
        "format_version": 1, "created_by": "test",
        "features": {"motion": {"dim": 512, "dtype": "float32"}, "lambdas": {"dim": 20, "dtype": "float32"},
                     "audio": {"dim": 80, "dtype": "float16", "kind": "mel", "layers": None},
                     "emotion": {"dim": 7, "dtype": "float32", "probs": probs}},
        "fps": 25, "sampling_rate": 16000, "input_size": 8,
        "encoders": {"motion": {"fingerprint": "m-fp", "source": "random-seed-0", "random": True},
                     "audio": {"fingerprint": "a-fp", "source": "logmel", "random": False}, "emotion": None},
        "crop": {"mode": "none", "scale": None, "detector": None}, "settings": dict(SETTINGS),
        "fingerprint_inputs": fingerprint_inputs(SETTINGS, ENCODERS), "fingerprint": FP,
    }


def write_folder(folder, samples_by_split, probs=False):
    for split, samples in samples_by_split.items():
        with ShardWriter(folder, split, max_bytes=1 << 30, max_samples=2) as w:
            for key, members in samples:
                w.add(key, members)
    rebuild_manifest(folder, probs)


def rebuild_manifest(folder, probs=False):
    scans = [scan_shard(p) for p in list_shards(folder)]
    hashes = {s.name: file_sha256(folder / s.name) for s in scans}
    write_manifest(folder, build_manifest(scans, hashes, base_manifest(probs)))


def good_samples(probs=False):
    out = {}
    for i, (key, actor, split, frames, emotion) in enumerate(CLIPS):
        out.setdefault(split, []).append((key, members_for(key, actor, split, frames, emotion, i, probs)))
    return out


def problems_after(tmp_path, change) -> list[str]:
    """Write the good folder, then rewrite its first train shard with one sample altered by
    ``change(members)``; the manifest gets the new size and sha256 so only the damage shows."""
    samples = good_samples()
    write_folder(tmp_path, samples)
    (tmp_path / "train-000000.tar").unlink()
    with ShardWriter(tmp_path, "train", max_bytes=1 << 30) as w:
        for i, (key, members) in enumerate(samples["train"][:2]):
            w.add(key, change(dict(members)) if i == 0 else members)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    entry.update(bytes=w.completed[0].bytes, sha256=w.completed[0].sha256)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    return inspect_shards(tmp_path).problems


def test_valid_folder_passes_and_summary_shows_labels(tmp_path):
    write_folder(tmp_path, good_samples(probs=True), probs=True)
    report = inspect_shards(tmp_path)
    assert report.problems == []
    assert (report.splits["train"].clips, report.splits["train"].frames, report.splits["train"].shards) == (3, 31, 2)
    assert report.splits["val"].clips == 1 and report.splits["test"].clips == 0
    text = format_report(report)
    assert "motion: RANDOM weights (random-seed-0)" in text and "audio: real weights" in text
    assert not inspect_shards(tmp_path, manifest_name="manifest.part-1-of-2.json").ok
    assert "audio (80) float16 mel" in text and "SER probs" in text and text.endswith("OK: shards match the manifest")


@pytest.mark.parametrize("change, expected", [
    (lambda m: m | {MOTION: encode_npy(np.full((12, 512), np.nan, np.float32))}, "motion.npy holds NaN"),
    (lambda m: m | {AUDIO: encode_npy(np.zeros((12, 80), np.float32))}, "audio.npy has dtype float32"),
    (lambda m: m | {AUDIO: encode_npy(np.zeros((11, 80), np.float16))}, "frame counts disagree"),
    (lambda m: m | {MOTION: encode_npy(np.zeros((12, 64), np.float32))}, "motion.npy has shape (12, 64)"),
    (lambda m: {k: v for k, v in m.items() if k != EMOTION}, "missing members ['emotion.npy']"),
    (lambda m: m | {"extra.bin": b"x"}, "unexpected members ['extra.bin']"),
    (lambda m: m | {EMOTION: encode_npy(np.full(7, 0.5, np.float32))}, "not a one-hot"),
    (lambda m: m | {META: encode_json(json.loads(m[META]) | {"n_frames": 5})}, "n_frames 5 but arrays have 12"),
    (lambda m: m | {META: encode_json(json.loads(m[META]) | {"settings_fingerprint": "f" * 64})},
     "written with settings fingerprint ffffffffffff"),
    (lambda m: m | {META: b"{oops"}, "meta.json is not JSON"),
    (lambda m: m | {"ref.jpg": b"not a jpeg"}, "ref.jpg is not a decodable JPEG"),
    (lambda m: m | {MOTION: b"garbage"}, "motion.npy is not a readable .npy"),
])
def test_each_damaged_sample_is_reported(tmp_path, change, expected):
    problems = problems_after(tmp_path, change)
    assert any(expected in p and "c-01-a" in p for p in problems), problems


def test_actor_in_two_splits_and_duplicate_keys(tmp_path):
    samples = good_samples()
    samples["val"].append(("c-01-c", members_for("c-01-c", "01", "val", 8, None)))  # actor 01 also trains
    samples["val"].append(("c-02-a", members_for("c-02-a", "02", "val", 8, None)))  # key already in train
    write_folder(tmp_path, samples)
    problems = inspect_shards(tmp_path).problems
    assert any("actor 01 appears in both train and val" in p for p in problems)
    assert any("c-02-a: key also in train-" in p for p in problems)


def test_file_level_damage(tmp_path):
    write_folder(tmp_path, good_samples())
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    # Flip one byte inside a shard's data: size unchanged, hash differs.
    shard = tmp_path / manifest["splits"]["train"]["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    (tmp_path / "test-000009.tar").write_bytes((tmp_path / "val-000000.tar").read_bytes())
    (tmp_path / "val-000000.tar").unlink()
    (tmp_path / "train-000005.tar.tmp").write_bytes(b"partial")
    report = inspect_shards(tmp_path)
    assert any(f"{shard}: sha256 differs" in p for p in report.problems)
    assert any("val-000000.tar: listed in the manifest but missing" in p for p in report.problems)
    assert any("test-000009.tar: shard in the folder but not in manifest.json" in p for p in report.problems)
    assert any("train-000005.tar.tmp" in n for n in report.notes)
    assert not inspect_shards(tmp_path / "nope").ok
    manifest["splits"]["train"]["shards"][1]["samples"] += 1
    manifest["splits"]["train"]["clips"] += 1
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    problems = inspect_shards(tmp_path, check_hash=False).problems
    assert any("train-000001.tar: 1 samples, manifest says 2" in p for p in problems)


def test_empty_manifest_is_not_valid(tmp_path):
    write_folder(tmp_path, {})
    assert any("lists no samples" in p for p in inspect_shards(tmp_path).problems)


def test_probs_required_when_manifest_says_so(tmp_path):
    write_folder(tmp_path, good_samples(probs=False), probs=True)
    assert any(f"missing members ['{EMOTION_PROBS}']" in p for p in inspect_shards(tmp_path).problems)


def test_truncated_shard_is_reported_not_crashing(tmp_path):
    write_folder(tmp_path, good_samples())
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    problems = inspect_shards(tmp_path, check_hash=False).problems
    assert any("train-000000.tar" in p for p in problems)


def test_iter_samples_groups_members_by_key(tmp_path):
    write_folder(tmp_path, good_samples())
    got = list(iter_samples(tmp_path / "train-000000.tar"))
    assert [k for k, _ in got] == ["c-01-a", "c-01-b"]
    assert decode_npy(got[0][1][MOTION]).shape == (12, 512)


def test_cli_exit_codes(tmp_path):
    app = typer.Typer()
    app.command()(inspect_command)
    write_folder(tmp_path, good_samples())
    ok = CliRunner().invoke(app, [str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert "train" in ok.output and "OK" in ok.output
    (tmp_path / "val-000000.tar").unlink()
    bad = CliRunner().invoke(app, [str(tmp_path)])
    assert bad.exit_code == 1
    assert "INVALID" in bad.output and "val-000000.tar: listed in the manifest but missing" in bad.output
    missing = CliRunner().invoke(app, [str(tmp_path / "none")])
    assert missing.exit_code == 1 and "no such folder" in missing.output


def test_a_shard_folder_on_a_web_server_is_inspected_like_a_local_one(tmp_path):
    from shards.http_serve import serve_folder

    folder = tmp_path / "served shards"
    folder.mkdir()
    write_folder(folder, good_samples(probs=True), probs=True)
    local = inspect_shards(folder)
    with serve_folder(tmp_path) as server:
        url = f"{server.url}/served shards"
        remote = inspect_shards(url)
        assert remote.problems == [] and remote.splits["train"].clips == local.splits["train"].clips == 3
        assert remote.splits["train"].bytes == local.splits["train"].bytes
        (folder / "train-000001.tar").unlink()  # a listed shard the server no longer has
        broken = inspect_shards(url)
        assert any("train-000001.tar: listed in the manifest but missing" in p and p.startswith("http://127.0.0.1")
                   for p in broken.problems)
        result = CliRunner().invoke(_app(), [url])
        assert result.exit_code == 1 and "missing" in result.output
    gone = inspect_shards("http://127.0.0.1:9/nothing")  # nothing listens on the discard port
    assert gone.problems and "manifest.json" in gone.problems[0]


def _app():
    app = typer.Typer()
    app.command()(inspect_command)
    return app
