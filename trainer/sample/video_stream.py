"""mp4 encoding overlapped with decoding: a writer thread fed frame batches through a bounded queue.

`floatctl sample` decodes a clip in batches on the GPU and encodes it with x264 on the CPU. Done one after
the other, the clip costs decoding + encoding; with the encoder in its own thread (PyAV and torch both
release the GIL in their heavy calls) it costs about the longer of the two. The queue is bounded, so a
slow encoder holds the decoder back instead of piling decoded frames up in memory.

Failure is never a hang: ``put`` and ``close`` wait on the queue in short slices and raise as soon as
the writer thread has died, as one SampleError naming the file and the encoder's reason; an error on the
decoding side (``abort`` / leaving the ``with`` block by an exception) stops the thread, and the partial
file is discarded (preprocess/mp4.py writes atomically).
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np

from trainer.errors import SampleError

POLL_S = 0.05  # how often a blocked put / close looks whether the writer thread has died
QUEUE_BATCHES = 4  # decoded batches waiting for the encoder at most
_END, _ABORT = object(), object()


class _Aborted(Exception):
    """Raised inside the writer thread to stop the encoder when the decoding side gave up."""


class Mp4Stream:
    """Frames in, an mp4 out: ``put`` (T, H, W, 3) uint8 batches as they are decoded, then ``close()``.

    ``write(path, frames)`` is the encoder call run in the thread: it must consume the ``frames``
    iterable of single (H, W, 3) frames and return the written path (trainer/sample/render.py
    passes its mp4 writer with the audio fitted to the clip)."""

    def __init__(self, path: str | Path, write, max_batches: int = QUEUE_BATCHES):
        self.path = Path(path)
        self._queue: queue.Queue = queue.Queue(maxsize=max_batches)
        self._error: BaseException | None = None
        self._result: Path | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(write,), name=f"mp4 {self.path.name}", daemon=True)
        self._thread.start()

    def _frames(self):
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if item is _ABORT:
                raise _Aborted()
            yield from item

    def _run(self, write) -> None:
        try:
            self._result = write(self.path, self._frames())
        except BaseException as error:  # kept for the producer's next put / close
            self._error = error
        finally:
            # The encoder stopped early (an error) or ran to its end: nobody reads the queue any more.
            self._drain()

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def _failure(self) -> SampleError:
        error = self._error
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        first = reason.strip().splitlines()[0] if reason.strip() else reason
        return SampleError(f"{self.path}: the mp4 encoder failed ({first})")

    def _offer(self, item) -> None:
        """Queue ``item``, waiting while the queue is full, unless the writer has died."""
        while True:
            if self._error is not None or not self._thread.is_alive():
                if self._error is not None and not isinstance(self._error, _Aborted):
                    raise self._failure()
                raise SampleError(f"{self.path}: the mp4 encoder stopped before the last frame")
            try:
                self._queue.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def put(self, frames: np.ndarray) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: put after close")
        self._offer(frames)

    def close(self) -> Path:
        """Wait for the encoder to finish the file; its path, or one SampleError naming it."""
        if not self._closed:
            self._closed = True
            if self._thread.is_alive():
                try:
                    self._offer(_END)
                except SampleError:
                    pass  # reported below, from the thread's own error
            self._thread.join()
        if self._error is not None:
            raise self._failure()
        return self._result

    def abort(self) -> None:
        """Stop the encoder without finishing the file (the decoding side failed); never raises."""
        if self._closed:
            return
        self._closed = True
        self._drain()
        while self._thread.is_alive():
            try:
                self._queue.put(_ABORT, timeout=POLL_S)
                break
            except queue.Full:
                self._drain()
        self._thread.join()

    def __enter__(self) -> "Mp4Stream":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()
        else:
            self.close()
