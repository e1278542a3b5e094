"""Atomic, size-capped, byte-deterministic tar shard writer.

Each shard is written as ``{split}-NNNNNN.tar.tmp``, flushed, fsync'ed and only
then renamed to ``{split}-NNNNNN.tar``; a process killed half-way therefore
leaves a ``.tmp`` (discarded by the next run), never a truncated ``.tar``.

Tar headers are fixed (mtime, uid/gid, owner names, mode) and the members of a
sample are written in sorted order, so the same samples added in the same order
give the same bytes on every machine.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shards.files import replace_durably, writing
from shards.format import SPLITS

TMP_SUFFIX = ".tmp"
FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z: any constant works; 0 upsets some tar tools
FIXED_MODE = 0o644
MAX_INDEX = 10**6  # six digits in the shard name
# A WebDataset key ends at the first "." of the member name, and "/" would make
# a folder: keys may hold neither.
# 80 characters leave room for the longest suffix in a 100-byte ustar name.
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]{1,80}$")
_SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{6})\.tar$")


def shard_name(split: str, index: int) -> str:
    if not 0 <= index < MAX_INDEX:
        raise ValueError(f"shard index {index} out of range 0..{MAX_INDEX - 1}")
    return f"{split}-{index:06d}.tar"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    """("train", 3) for "train-000003.tar"; None for anything else (including .tmp)."""
    m = _SHARD_RE.match(name)
    if not m or m["split"] not in SPLITS:
        return None
    return m["split"], int(m["index"])


def check_key(key: str) -> None:
    if not _KEY_RE.match(key):
        raise ValueError(
            f"sample key {key!r} is not usable in a shard: 1 to 80 letters, digits, '-' or '_' "
            "(a '.' would end the WebDataset key early, a '/' would make a folder)")


@dataclass
class ShardInfo:
    """What the manifest records about one complete shard."""
    name: str
    samples: int
    bytes: int
    sha256: str
    keys: list[str] = field(default_factory=list)

    def manifest_entry(self) -> dict:
        return {"name": self.name, "samples": self.samples, "bytes": self.bytes, "sha256": self.sha256}


class _HashingFile(io.RawIOBase):
    """Write-through file wrapper that hashes and counts every byte written."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._f.write(b)
        self.sha.update(b)
        self.count += len(b)
        return len(b)

    def tell(self) -> int:
        return self.count


def sample_tar_bytes(members: dict[str, bytes]) -> int:
    """Bytes a sample occupies inside a tar: one 512-byte header per member plus padded data."""
    return sum(512 + -(-len(d) // 512) * 512 for d in members.values())


def closed_tar_bytes(content_bytes: int) -> int:
    """Final file size once the end-of-archive blocks and record padding are added."""
    return -(-(content_bytes + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class ShardWriter:
    """Writes samples of one split into consecutive shards capped by size and count.

    ``on_complete(info)`` is called after each shard has been renamed into place
    (the pipeline uses it to keep the manifest current). A sample larger than
    the cap gets a shard of its own rather than being refused.
    """

    def __init__(self, folder: Path, split: str, max_bytes: int, max_samples: int | None = None,
                 start_index: int = 0, end_index: int = MAX_INDEX,
                 on_complete: Callable[[ShardInfo], None] | None = None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if max_bytes <= 0:
            raise ValueError(f"shard size cap must be positive, got {max_bytes} bytes")
        if max_samples is not None and max_samples <= 0:
            raise ValueError(f"samples per shard must be positive, got {max_samples}")
        self.folder = Path(folder)
        self.split = split
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.next_index = start_index
        self.end_index = end_index
        self.on_complete = on_complete
        self.completed: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._raw = None
        self._hasher: _HashingFile | None = None
        self._name = ""
        self._keys: list[str] = []

    # -- public -------------------------------------------------------------
    def add(self, key: str, members: dict[str, bytes]) -> None:
        """Append one sample: ``members`` maps suffix (e.g. "motion.npy") to bytes (StorageError when the
        disk is full or the folder read-only: the unfinished shard keeps its temporary name)."""
        with writing(self.folder / (shard_name(self.split, self.next_index) + TMP_SUFFIX)):
            self._add(key, members)

    def _add(self, key: str, members: dict[str, bytes]) -> None:
        check_key(key)
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        size = sample_tar_bytes(members)
        if self._tar is not None and self._keys and (
                closed_tar_bytes(self._hasher.count + size) > self.max_bytes
                or (self.max_samples is not None and len(self._keys) >= self.max_samples)):
            self._finish()
        if self._tar is None:
            self._open()
        for suffix in sorted(members):
            data = members[suffix]
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = FIXED_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._keys.append(key)

    def close(self) -> list[ShardInfo]:
        """Finish the open shard (if any); returns every shard this writer completed."""
        if self._tar is not None:
            with writing(self.folder / (self._name + TMP_SUFFIX)):
                self._finish()
        return self.completed

    def abort(self) -> None:
        """Drop the open shard without renaming it (used when the run fails)."""
        if self._tar is not None:
            tmp = self.folder / (self._name + TMP_SUFFIX)
            try:
                self._raw.close()
            except OSError:
                pass  # a full disk: the unfinished shard is deleted below anyway
            finally:
                self._tar = None
                tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals ----------------------------------------------------------
    def _open(self) -> None:
        if self.next_index >= self.end_index:
            raise RuntimeError(
                f"{self.folder}: no free shard index left for split {self.split!r} "
                f"(range ends at {self.end_index}); use a larger --shard-size-mb")
        self._name = shard_name(self.split, self.next_index)
        final = self.folder / self._name
        if final.exists():
            raise FileExistsError(f"{final}: shard already exists; refusing to overwrite it")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._raw = open(self.folder / (self._name + TMP_SUFFIX), "wb")
        self._hasher = _HashingFile(self._raw)
        # USTAR: fixed-size headers with no pax timestamps, so bytes are stable.
        self._tar = tarfile.open(fileobj=self._hasher, mode="w", format=tarfile.USTAR_FORMAT)
        self._keys = []

    def _finish(self) -> None:
        self._tar.close()  # writes the end-of-archive blocks
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        tmp = self.folder / (self._name + TMP_SUFFIX)
        final = self.folder / self._name
        replace_durably(tmp, final)
        info = ShardInfo(self._name, len(self._keys), self._hasher.count,
                         self._hasher.sha.hexdigest(), list(self._keys))
        self._tar = None
        self.next_index += 1
        self.completed.append(info)
        if self.on_complete is not None:
            self.on_complete(info)
