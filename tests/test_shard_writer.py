"""ShardWriter (atomic, size-capped, deterministic tars) and shards/manifest.py."""
from __future__ import annotations

import hashlib
import json
import tarfile

import numpy as np
import pytest

from shards.format import MANIFEST, encode_npy
from shards.manifest import (ManifestError, diff_settings, fingerprint_inputs, merge_parts, part_manifest_name,
                             read_manifest, settings_fingerprint, validate_manifest, write_manifest)
from shards.writer import FIXED_MTIME, ShardWriter, check_key, parse_shard_name, shard_name


def sample(i: int, frames: int = 10, width: int = 64) -> dict[str, bytes]:
    rng = np.random.default_rng(i)
    return {"motion.npy": encode_npy(rng.normal(size=(frames, width)).astype(np.float32)),
            "meta.json": json.dumps({"i": i}).encode(), "a.bin": bytes([i % 256]) * (i * 37 % 700)}


def write_all(folder, n=6, **kw):
    with ShardWriter(folder, "train", **kw) as w:
        for i in range(n):
            w.add(f"clip-{i:03d}", sample(i))
    return w.completed


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_members_sorted_headers_fixed_and_info_matches_file(tmp_path):
    infos = write_all(tmp_path, n=3, max_bytes=1 << 30)
    assert [i.name for i in infos] == ["train-000000.tar"]
    path = tmp_path / "train-000000.tar"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["clip-000.a.bin", "clip-000.meta.json", "clip-000.motion.npy"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(FIXED_MTIME, 0, 0, "", "", 0o644)}
    assert infos[0].sha256 == sha(path) and infos[0].bytes == path.stat().st_size
    assert infos[0].keys == ["clip-000", "clip-001", "clip-002"] and infos[0].samples == 3


def test_same_samples_give_same_bytes(tmp_path):
    a = write_all(tmp_path / "a", max_bytes=8000)
    b = write_all(tmp_path / "b", max_bytes=8000)
    assert len(a) > 1
    assert [(i.name, i.sha256) for i in a] == [(i.name, i.sha256) for i in b]
    # Member order within a sample does not depend on the dict order it was given in.
    with ShardWriter(tmp_path / "c", "train", max_bytes=1 << 30) as w:
        w.add("k", dict(reversed(list(sample(1).items()))))
    with ShardWriter(tmp_path / "d", "train", max_bytes=1 << 30) as w:
        w.add("k", sample(1))
    assert sha(tmp_path / "c" / "train-000000.tar") == sha(tmp_path / "d" / "train-000000.tar")


def test_size_cap_and_sample_cap(tmp_path):
    cap = 12000
    infos = write_all(tmp_path / "size", n=8, max_bytes=cap)
    assert len(infos) >= 3 and sum(i.samples for i in infos) == 8
    for info in infos:
        assert info.bytes <= cap or info.samples == 1  # a single oversized sample gets its own shard
    assert [i.name for i in infos] == [shard_name("train", k) for k in range(len(infos))]
    infos = write_all(tmp_path / "count", n=7, max_bytes=1 << 30, max_samples=3)
    assert [i.samples for i in infos] == [3, 3, 1]
    # A sample bigger than the cap is written, alone, not refused.
    with ShardWriter(tmp_path / "big", "val", max_bytes=1024) as w:
        w.add("big", {"x.bin": b"x" * 5000})
        w.add("small", {"x.bin": b"y"})
    assert [i.samples for i in w.completed] == [1, 1]


def test_written_under_tmp_and_renamed_only_when_complete(tmp_path):
    done = []
    w = ShardWriter(tmp_path, "test", max_bytes=1 << 30, start_index=7, on_complete=done.append)
    w.add("a", sample(0))
    assert [p.name for p in tmp_path.iterdir()] == ["test-000007.tar.tmp"]
    assert done == []
    w.close()
    assert [p.name for p in tmp_path.iterdir()] == ["test-000007.tar"]
    assert [i.name for i in done] == ["test-000007.tar"]


def test_failure_inside_with_leaves_no_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "train", max_bytes=1 << 30) as w:
            w.add("a", sample(0))
            raise RuntimeError("encoder crashed")
    assert list(tmp_path.iterdir()) == []


def test_refuses_bad_keys_existing_shards_and_bad_caps(tmp_path):
    for bad in ("a.b", "a/b", "", "x" * 81, "sp ace"):
        with pytest.raises(ValueError, match="sample key"):
            check_key(bad)
    (tmp_path / "train-000000.tar").write_bytes(b"")
    with pytest.raises(FileExistsError, match="train-000000.tar"):
        ShardWriter(tmp_path, "train", max_bytes=100).add("a", sample(0))
    with pytest.raises(ValueError, match="split"):
        ShardWriter(tmp_path, "dev", max_bytes=100)
    with pytest.raises(ValueError, match="positive"):
        ShardWriter(tmp_path, "train", max_bytes=0)
    with pytest.raises(RuntimeError, match="no free shard index"):
        ShardWriter(tmp_path / "r", "train", max_bytes=100, start_index=5, end_index=5).add("a", sample(0))


def test_shard_names_parse():
    assert parse_shard_name("val-000012.tar") == ("val", 12)
    assert parse_shard_name("val-000012.tar.tmp") is None
    assert parse_shard_name("dev-000001.tar") is None
    with pytest.raises(ValueError):
        shard_name("train", 10**6)


# --------------------------------------------------------------------------- manifest
def make_manifest(shards_by_split=None, settings=None, encoders=None) -> dict:
    settings = settings or {"input_size": 8, "crop": "none"}
    encoders = encoders or {"motion": "m1", "audio": "a1", "emotion": None}
    shards_by_split = shards_by_split if shards_by_split is not None else {
        "train": [{"name": "train-000000.tar", "samples": 2, "bytes": 10240, "sha256": "0" * 64}]}
    return {
        "format_version": 1, "created_by": "test",
        "splits": {s: {"clips": sum(x["samples"] for x in v), "frames": 10 * sum(x["samples"] for x in v), "shards": v}
                   for s, v in shards_by_split.items()},
        "features": {"motion": {"dim": 512, "dtype": "float32"}, "lambdas": {"dim": 20, "dtype": "float32"},
                     "audio": {"dim": 80, "dtype": "float16", "kind": "mel"}, "emotion": {"dim": 7, "probs": False}},
        "fps": 25, "sampling_rate": 16000, "input_size": 8, "encoders": {}, "crop": {"mode": "none"},
        "settings": dict(settings), "fingerprint_inputs": fingerprint_inputs(settings, encoders),
        "fingerprint": settings_fingerprint(settings, encoders),
    }


def test_manifest_round_trip_is_atomic_and_readable(tmp_path):
    m = make_manifest()
    write_manifest(tmp_path, m)
    assert read_manifest(tmp_path) == m
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]  # no temporary left behind
    assert (tmp_path / MANIFEST).stat().st_mode & 0o444 == 0o444


def test_read_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(ManifestError, match=str(tmp_path / MANIFEST) + ".*not found"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="manifest.json: not a readable JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ManifestError, match="missing key 'splits'"):
        read_manifest(tmp_path)


def test_validate_catches_inconsistent_counts_and_edited_fingerprint():
    m = make_manifest()
    assert validate_manifest(m) == []
    m["splits"]["train"]["clips"] = 3
    assert any("clips says 3" in p for p in validate_manifest(m))
    m = make_manifest()
    m["fingerprint_inputs"]["settings"]["input_size"] = 16
    assert any("fingerprint does not match" in p for p in validate_manifest(m))
    m = make_manifest({"train": [{"name": "val-000000.tar", "samples": 1, "bytes": 1, "sha256": "x"}]})
    assert any("listed under split 'train'" in p for p in validate_manifest(m))
    with pytest.raises(ManifestError, match="refusing to write"):
        write_manifest("/nonexistent-never-created", {"format_version": 1})


def test_fingerprint_and_diff_name_the_changed_settings():
    a = make_manifest(settings={"input_size": 8, "crop": "none"})
    b = make_manifest(settings={"input_size": 16, "crop": "none"}, encoders={"motion": "m2", "audio": "a1", "emotion": None})
    assert a["fingerprint"] != b["fingerprint"]
    assert diff_settings(a, b) == {"input_size": (8, 16), "motion encoder": ("m1", "m2")}
    assert settings_fingerprint({"x": 1, "y": 2}, {}) == settings_fingerprint({"y": 2, "x": 1}, {})


def test_merge_parts(tmp_path):
    p1 = make_manifest({"train": [{"name": "train-000000.tar", "samples": 2, "bytes": 1, "sha256": "a"}]})
    p2 = make_manifest({"train": [{"name": "train-500000.tar", "samples": 3, "bytes": 1, "sha256": "b"}],
                        "val": [{"name": "val-500000.tar", "samples": 1, "bytes": 1, "sha256": "c"}]})
    write_manifest(tmp_path, p1, part_manifest_name(1, 2))
    with pytest.raises(ManifestError, match=r"parts \[2\] of 2"):
        merge_parts(tmp_path)
    write_manifest(tmp_path, p2, part_manifest_name(2, 2))
    with pytest.raises(ManifestError, match="train-000000.tar: listed by a part manifest but not in the folder"):
        merge_parts(tmp_path)
    for name in ("train-000000.tar", "train-500000.tar", "val-500000.tar"):
        (tmp_path / name).write_bytes(b"")
    merged = merge_parts(tmp_path)
    assert merged["splits"]["train"]["clips"] == 5 and merged["splits"]["val"]["clips"] == 1
    assert [s["name"] for s in merged["splits"]["train"]["shards"]] == ["train-000000.tar", "train-500000.tar"]
    assert read_manifest(tmp_path)["splits"]["train"]["frames"] == 50
    other = make_manifest(settings={"input_size": 16, "crop": "none"})
    write_manifest(tmp_path, other, part_manifest_name(2, 2))
    with pytest.raises(ManifestError, match=r"settings differ.*input_size: 8 -> 16"):
        merge_parts(tmp_path)
