"""Crash-safe file writing and hashing: the one home of temporary names, fsync and rename.

Every file this project writes for others to read (shards, manifests, error
lists, checkpoints, videos, latents) is written under a temporary name next to
its final one, flushed to disk, then renamed over it: a crash, even SIGKILL,
leaves the old file or the new one, never a torn one. The temporary name is
``.NAME.tmp-PID`` so a later run can tell a dead writer's leftovers from its own.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

TMP_MARK = ".tmp-"


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename itself durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename a complete, fsync'ed temporary file over ``path`` and make the rename durable."""
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to (by any means: numpy, PyAV...);
    on success it is fsync'ed and renamed over ``path``, on failure deleted."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, write: Callable[[object], None]) -> None:
    """Write ``path`` through ``write(binary file)`` atomically (see the module docstring)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def remove_stale_temporaries(folder: str | Path, pattern: str = "*") -> list[Path]:
    """Delete ``.NAME.tmp-PID`` files of writers that were killed (other process ids); returns them."""
    mine = f"{TMP_MARK}{os.getpid()}"
    removed = []
    for p in Path(folder).glob(f".{pattern}{TMP_MARK}*"):
        if not p.name.endswith(mine):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
