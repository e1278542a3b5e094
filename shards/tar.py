"""The one tar reader: shard samples as (key, {member suffix: bytes}), from a path or a URL
(opened by shards/remote.py: WebDataset's gopen, plus a stall guard).

Training reads leniently (a tar cut short keeps the samples before the cut, a
foreign member is passed over); ``strict=True`` is for ``floatctl inspect``,
which wants every irregularity named. ``check_local_shards`` opens each local
shard's first member only, so a run stops at its start on a file that is not a
shard instead of at some later step.
"""
from __future__ import annotations

import logging
import re
import tarfile
from pathlib import Path
from typing import Collection, Iterator

from shards.errors import ShardError
from shards.format import KNOWN_MEMBERS, TRAINING_MEMBERS
from shards.remote import open_location

log = logging.getLogger(__name__)

_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's key / suffix split


def split_member_name(name: str) -> tuple[str, str]:
    """(sample key, member suffix) of a tar member name, as WebDataset splits it ("" suffix when none)."""
    m = _MEMBER_RE.match(name)
    return (m.group(1), m.group(2)) if m else (name, "")


def iter_tar_samples(url: str | Path, read: Collection[str] | None = TRAINING_MEMBERS, strict: bool = False,
                     known_members: Collection[str] = KNOWN_MEMBERS) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) for each sample of a tar, members grouped by WebDataset key.

    Only the members in ``read`` are read (default: what training needs; None: all);
    the others are present with empty bytes. ShardError names the file when it is
    not a tar or holds no shard member at all. Lenient (default): a tar cut short
    after some samples ends the iteration with a warning (the samples before it are
    kept). ``strict``: a member that is not a regular file or not named KEY.SUFFIX, a
    suffix twice in one sample, or a damaged tar raise ShardError. ``known_members``: the
    suffixes that make a tar a shard of the expected kind (crop shards pass their own).
    """
    url = str(url)
    try:
        stream = open_location(url)  # WebDataset's gopen handlers (shards/remote.py)
    except OSError as e:
        if strict:
            raise ShardError(f"{url}: unreadable shard ({e})") from e
        raise
    finished = False
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*")
        except tarfile.TarError as e:
            failure = _close_error(stream)
            if failure:  # the download command failed: an I/O problem, not a foreign file
                raise OSError(f"{url}: could not be read ({failure})") from e
            raise ShardError(f"{url}: {'unreadable shard' if strict else 'not a tar file'} ({e})") from e
        key, members, known, foreign = None, {}, 0, []
        try:
            for info in tar:
                if not info.isfile():
                    if strict:
                        raise ShardError(f"{url}: member {info.name!r} is not a regular file")
                    continue
                if strict and ("." not in info.name or "/" in info.name):
                    raise ShardError(f"{url}: member {info.name!r} is not named KEY.SUFFIX")
                k, suffix = split_member_name(info.name)
                if k != key:
                    if key is not None:
                        yield key, members
                    key, members = k, {}
                if strict and suffix in members:
                    raise ShardError(f"{url}: sample {k!r} has {suffix!r} twice")
                if suffix in known_members:
                    known += 1
                elif len(foreign) < 5:
                    foreign.append(info.name)
                if read is None or suffix in read:
                    members[suffix] = tar.extractfile(info).read()
                else:
                    members.setdefault(suffix, b"")  # present, not read
        except (tarfile.TarError, EOFError) as e:
            if strict:
                raise ShardError(f"{url}: unreadable shard ({e})") from e
            if known == 0:
                raise ShardError(f"{url}: unreadable tar ({e})") from e
            log.warning("%s: tar is cut short (%s); using the samples before that point", url, e)
            key = None  # the last sample may be incomplete
        if known == 0 and not strict:
            raise ShardError(f"{url}: not a FLOAT shard of this kind: no member named *.{' / *.'.join(known_members)} "
                             f"(first members: {foreign})")
        if key is not None:
            yield key, members
        finished = True
    finally:
        try:
            stream.close()
        except Exception as e:  # a pipe whose command failed; only worth raising if we read to the end
            if finished:
                raise OSError(f"{url}: {e}") from e


def _close_error(stream) -> str:
    """Close the stream; the error closing reports (a pipe command's exit status), or ""."""
    try:
        stream.close()
    except Exception as e:
        return str(e)
    return ""


def check_shard_file(path: str | Path, known_members: Collection[str] = KNOWN_MEMBERS) -> None:
    """ShardError unless ``path`` is a tar whose first member is a FLOAT shard member (reads one header)."""
    path = Path(path)
    try:
        with tarfile.open(path, mode="r|*") as tar:
            first = tar.next()
    except (tarfile.TarError, OSError) as e:
        raise ShardError(f"{path}: not a shard (not a readable tar: {e})") from None
    suffix = split_member_name(first.name.split("/")[-1])[1] if first is not None else ""
    if suffix not in known_members:
        raise ShardError(f"{path}: not a FLOAT shard of this kind (first member {first.name if first else 'none'!r}; "
                         f"expected *.{' / *.'.join(known_members)})")


def check_local_shards(urls: list[str], known_members: Collection[str] = KNOWN_MEMBERS) -> None:
    """check_shard_file for every URL that is a local file (pipe:/URL shards are checked when read)."""
    for url in urls:
        if Path(url).is_file():
            check_shard_file(url, known_members)
