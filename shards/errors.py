"""The shards package's errors: one base, ``ShardsError``, that every one of them is.

``except ShardsError`` catches anything this package raises about the data on disk.
The specific classes stay because callers treat them differently:

- ``CorruptSample``: one sample is unusable (a bad .npy, missing members, wrong
  widths). Training streams and validation sets *skip* it, count it and go on;
  ``CropSampleError`` is the same thing for a crop-shard sample (so skipping
  code catches ``CorruptSample`` and gets both).
- ``ShardError``: a whole file is not a usable shard (not a tar, no shard members,
  malformed). Fatal where it is raised for a file the run was told to read.
- ``ManifestError``: a manifest is missing, unreadable or inconsistent. Fatal: the
  folder's table of contents cannot be trusted.
- ``StorageError``: a file could not be written (full disk, read-only file system, no
  permission, quota); raised by the one writer, shards/files.py. Fatal, exit code 1.
- ``DamagedShardsError``: local shards that differ from their manifest (size, early end);
  refused at a run's start unless the run accepts a damaged set knowingly.

All are ``ValueError`` (as each was before the base existed).
"""
from __future__ import annotations


class ShardsError(ValueError):
    """Something in a shard folder cannot be used; the message names the file (or the caller adds it)."""


class ShardError(ShardsError):
    """A file that is not a usable shard (not a tar, no shard members, malformed); names the file."""


class ManifestError(ShardsError):
    """A manifest that is missing, unreadable or inconsistent; the message names the file."""


class CorruptSample(ShardsError):
    """A shard sample that cannot be used; the message says why (the caller adds shard and key)."""


class CropSampleError(CorruptSample):
    """A crop sample that cannot be used; the message says why (the caller adds shard and key)."""


class StorageError(ShardsError):
    """A file could not be written: names the folder, its free space, the file and the reason (one line)."""


class DamagedShardsError(ShardsError):
    """Local shards that differ from their manifest; the message names each and both sizes."""
