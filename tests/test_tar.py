"""The one tar reader's first-member check, which the training loop runs on local shards before step 0."""
from __future__ import annotations

import io
import tarfile

import pytest

from shards.tar import ShardError, check_local_shards, check_shard_file


def _tar(path, names):
    with tarfile.open(path, "w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return path


def test_a_shard_passes_and_foreign_files_are_named(tmp_path):
    check_shard_file(_tar(tmp_path / "train-000000.tar", ["clip1.motion.npy", "clip1.meta.json"]))
    with pytest.raises(ShardError, match="not a FLOAT shard.*notes.txt"):
        check_shard_file(_tar(tmp_path / "other.tar", ["notes.txt"]))
    (tmp_path / "text.tar").write_text("not a tar at all")
    with pytest.raises(ShardError, match="not a readable tar"):
        check_shard_file(tmp_path / "text.tar")
    with pytest.raises(ShardError, match="none"):
        check_shard_file(_tar(tmp_path / "empty.tar", []))


def test_only_local_files_are_checked(tmp_path):
    check_local_shards(["pipe:curl -s https://example.invalid/x.tar", str(tmp_path / "absent.tar")])
    bad = _tar(tmp_path / "bad.tar", ["readme"])
    with pytest.raises(ShardError, match="bad.tar"):
        check_local_shards([str(bad)])
