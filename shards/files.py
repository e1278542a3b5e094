"""Crash-safe file writing and hashing: the one home of temporary names, fsync and rename.

Every file this project writes for others to read (shards, manifests, error
lists, checkpoints, videos, latents) is written under a temporary name next to
its final one, flushed to disk, then renamed over it: a crash, even SIGKILL,
leaves the old file or the new one, never a torn one. The temporary name is
``.NAME.tmp-PID`` so a later run can tell a dead writer's leftovers from its own.

One rule for a write that fails for want of room or rights (ENOSPC, EDQUOT, EROFS,
EACCES, EPERM): ``StorageError``, one line naming the folder, its free space, the file
being written and the reason; the temporary file is deleted, so no half-written file is
left under a final name and the previous version stays. Every writer of a run's files
(checkpoints, logs, TensorBoard, samples, manifests, shards, exports) goes through
``atomic_*`` here or wraps its writes in ``writing(path)``. ``check_writable`` is the
start-up probe of an output folder.
"""
from __future__ import annotations

import errno
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from shards.errors import StorageError

TMP_MARK = ".tmp-"
# Failures of the storage, not of the data: the user must make room or pick another folder.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def free_space(path: str | Path) -> str:
    """Free space (for an unprivileged writer) of the file system holding ``path``, e.g. "12.3 MB"."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return "unknown"
    return _human(st.f_bavail * st.f_frsize)


def storage_error(e: OSError, path: str | Path) -> StorageError:
    """The one-line StorageError for a failed write of ``path``."""
    path = Path(path)
    final = Path(path.name[1:].split(TMP_MARK)[0]) if TMP_MARK in path.name else Path(path.name)
    reason = os.strerror(e.errno).lower() if e.errno else str(e)
    return StorageError(f"cannot write {final} in {path.parent}: {reason} ({free_space(path.parent)} free there)")


def is_storage_failure(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in STORAGE_ERRNOS


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a full disk, a read-only folder, a quota or missing rights while writing ``path`` into StorageError."""
    try:
        yield
    except OSError as e:
        if is_storage_failure(e) and not isinstance(e, StorageError):
            raise storage_error(e, path) from None
        raise


class _RecordingFile:
    """A binary file whose write errors are remembered: torch.save reports a failed write as a RuntimeError
    ("[enforce fail at inline_container.cc]"), which hides the errno; the recorded OSError keeps it."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()

    def __getattr__(self, name):
        return getattr(self._f, name)


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


def discard(path: Path) -> None:
    """Delete a temporary file if there is one (on a read-only file system there is none to delete)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to (by any means: numpy, PyAV...);
    on success it is fsync'ed and renamed over ``path``, on failure deleted (StorageError for a full disk,
    a read-only folder...)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with writing(path):
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            replace_durably(tmp, path)
    finally:
        discard(tmp)


def atomic_write_bytes(path: str | Path, write: Callable[[object], None]) -> None:
    """Write ``path`` through ``write(binary file)`` atomically (see the module docstring)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        recording = _RecordingFile(f)
        try:
            write(recording)
            f.flush()
        except Exception as e:
            if recording.error is not None and not isinstance(e, OSError):
                raise recording.error from None  # the errno behind torch.save's RuntimeError
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_image(path: str | Path, rgb) -> None:
    """An RGB uint8 image (H, W, 3) as PNG or JPEG (by the suffix), written by the one rule above."""
    import cv2

    suffix = Path(path).suffix.lower() or ".png"
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: the image could not be encoded as {suffix}")
    atomic_write_bytes(path, lambda f: f.write(buf.tobytes()))


def atomic_write_figure(path: str | Path, figure, **savefig) -> None:
    """A matplotlib figure as PNG, written by the one rule above (``savefig`` options pass through)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **savefig)
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))


def check_writable(folder: str | Path, option: str = "--out") -> None:
    """Create ``folder`` and write, sync and delete a probe file in it: StorageError (naming ``option``) before
    any work is done when it cannot be written."""
    folder = Path(folder)
    try:
        with writing(folder / ".write-probe"):
            folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / ".write-probe", lambda f: f.write(b"probe"))
        discard(folder / ".write-probe")
    except StorageError as e:
        raise StorageError(f"{option} {folder} cannot be written: {e}") from None


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
