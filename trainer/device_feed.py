"""Batches onto the device one step ahead, keeping the loader's position of the batches handed out.

On CUDA the next batch's host-to-device copy (from pinned memory, ``non_blocking``) is issued on a side
stream while the current step runs on the default stream, so the step never waits for a copy; the
consuming stream waits for the side stream's event before it reads the batch, and each tensor is
recorded on the consuming stream so the caching allocator does not reuse its memory early. On the CPU
(``ahead=False``, the default there) it is a plain pass-through: each batch is moved when it is asked for.

After the copy the loader's ``finish`` makes the training batch of what was copied (shards/loader.py:
with ``cut="device"`` it cuts the windows from clip records; the identity otherwise). On CUDA it runs in
the side stream right after the copy, so the records it reads were allocated and used on that stream only
and may be freed when it ends; the tensors it makes are what the consuming stream waits for and records.

Exact resume. Reading one batch ahead moves the loader's own position one batch past the batches the
loop has trained on; a checkpoint must record the position of the batches handed out, so ``state_dict``
is the loader's state taken just before the batch still held back was read.
"""
from __future__ import annotations

from typing import Iterator

import torch

from trainer.run import to_device


class DeviceFeed:
    """Iterate batches of ``loader`` on ``device``; ``state_dict()`` is the position after the last one
    handed out (``loader`` has ``state_dict`` and ``skipped``, as shards/loader.py WindowLoader)."""

    def __init__(self, loader, device: torch.device, ahead: bool | None = None):
        self.loader, self.device = loader, device
        self.finish = getattr(loader, "finish", None) or (lambda batch: batch)
        self.ahead = device.type == "cuda" if ahead is None else ahead
        self.stream = torch.cuda.Stream(device) if self.ahead and device.type == "cuda" else None
        self._held_state: dict | None = None  # the loader's state before the batch held back was read

    def state_dict(self) -> dict:
        return self._held_state if self._held_state is not None else self.loader.state_dict()

    @property
    def skipped(self) -> int:
        streams = self.state_dict().get("streams")
        return sum(s[3] for s in streams) if streams else 0

    def _copy(self, batch: dict) -> tuple[dict, object]:
        if self.stream is None:
            return self.finish(to_device(batch, self.device)), None
        with torch.cuda.stream(self.stream):
            moved = self.finish(to_device(batch, self.device))
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return moved, ready

    def _hand_out(self, moved: dict, ready) -> dict:
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            for value in moved.values():
                if torch.is_tensor(value):
                    value.record_stream(current)
        return moved

    def __iter__(self) -> Iterator[dict]:
        self._held_state = None
        batches = iter(self.loader)
        if not self.ahead:
            for batch in batches:
                yield self.finish(to_device(batch, self.device))
            return
        try:
            held = self._copy(next(batches))
        except StopIteration:
            return
        while True:
            before_next = self.loader.state_dict()  # the position after ``held``
            try:
                following = next(batches)
            except StopIteration:
                self._held_state = None
                yield self._hand_out(*held)
                return
            self._held_state = before_next  # ``following`` is read but not handed out yet
            out, held = self._hand_out(*held), self._copy(following)
            yield out
