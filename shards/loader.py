"""The training loader whose position can be saved and restored: ``WindowLoader`` over a
``TrainWindows`` stream (shards/dataset.py; the pair stream of shards/pairs.py is one too).

Exact resume. Every batch carries its stream's position after its last window;
``WindowLoader`` records it per stream as batches are consumed, and its
``state_dict()`` holds those positions plus the number of batches consumed. A
new loader given that state restarts each stream at its block, re-reads that
one block and drops the windows already used, so the resumed stream equals the
uninterrupted one window for window (cost: at most one block re-read per worker).
DataLoader workers hand out batches round robin, so after ``k`` batches worker
``j`` of the new loader runs stream ``(k + j) % num_workers``: batch ``i`` always
comes from stream ``i % num_workers``, as in the uninterrupted run. Positions
depend on the data (corrupt clips are skipped), which is why they are recorded
rather than computed from the step: under DDP every rank has its own state
(gather them with ``torch.distributed.all_gather_object``).

Where windows are cut. ``cut="host"`` (the default): the workers hand out collated batches.
``cut="device"``: they hand out clip records (shards/clip_records.py: each row a batch uses
once, audio float16 as stored) and the consumer calls ``finish(batch)`` after moving the batch
to its device, which cuts the same batch there; ``finish`` is the identity for "host". The
window stream, and so the exact resume, is the same either way.
"""
from __future__ import annotations

import logging
from typing import Iterator

import torch
from torch.utils.data import DataLoader

from shards.clip_records import cut_records, pack_records
from shards.dataset import TrainWindows
from shards.windows import WindowSpec, collate

log = logging.getLogger(__name__)

STATE_VERSION = 1
CUTS = ("host", "device")


class _CollateWithPosition:
    """The dataset's collate plus the stream position of the batch's last item (picklable)."""

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, windows: list[dict]) -> dict:
        batch = self.collate_fn(windows)
        batch["_stream"] = windows[-1]["_pos"]
        return batch


class WindowLoader:
    """Iterable of collated training batches whose position can be saved and restored.

    Each ``iter()`` continues from the last consumed batch (batches prefetched
    but not consumed are read again). ``state_dict()`` after ``k`` batches +
    ``load_state_dict()`` on a fresh loader gives the same batches from ``k`` on.
    """

    def __init__(self, dataset: TrainWindows, batch_size: int, num_workers: int = 0,
                 pin_memory: bool | None = None, prefetch_factor: int = 2, cut: str = "host"):
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if cut not in CUTS:
            raise ValueError(f"cut must be one of {CUTS}, got {cut!r}")
        windows = dataset.collate is collate  # not the pair stream (shards/pairs.py), which batches its own way
        if cut == "device" and not windows:
            raise ValueError(f"cut='device' needs a stream of training windows; {type(dataset).__name__} "
                             "batches its items with its own collate (host only)")
        if windows:  # records carry the audio as stored (the cut converts it); collate wants it float32
            dataset.keep_audio_dtype = cut == "device"
        self.cut = cut
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch_factor = prefetch_factor
        self.batches = 0
        self.streams: list | None = None  # per stream [block, offset, skipped at block start, skipped now]
        self.restart = 0

    def finish(self, batch: dict) -> dict:
        """The training batch, from what this loader yielded once it is on its device (identity for "host")."""
        if self.cut == "host":
            return batch
        spec = self.dataset.spec
        return cut_records(batch, spec.num_prev_frames, spec.num_frames)

    @property
    def num_streams(self) -> int:
        return max(1, self.num_workers)

    @property
    def skipped(self) -> int:
        """Clips skipped as corrupt or too short by the consumed part of the stream (this rank)."""
        return sum(s[3] for s in self.streams) if self.streams else 0

    def __iter__(self) -> Iterator[dict]:
        self.dataset.resume = (self.batches, self.streams, self.restart)
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, num_workers=self.num_workers,
            collate_fn=_CollateWithPosition(pack_records if self.cut == "device" else self.dataset.collate),
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if self.num_workers else None)
        for batch in loader:
            stream, *position = batch.pop("_stream")
            if self.streams is None:
                self.streams = [[0, 0, 0, 0] for _ in range(self.num_streams)]
            self.streams[stream] = list(position)
            self.batches += 1
            yield batch

    def _identity(self) -> dict:
        d = self.dataset
        return {"seed": d.seed, "rank": d.rank, "world_size": d.world_size, "num_streams": self.num_streams,
                "urls": len(d.urls), "spec": d.spec_state(),
                "shuffle_buffer": d.shuffle_buffer, "shards_per_block": d.shards_per_block,
                "resampled": d.resampled, "weights": d.weights}

    def state_dict(self) -> dict:
        """JSON-able position: batches consumed and each stream's (block, offset, skip counts)."""
        return {"version": STATE_VERSION, "batches": self.batches, "restart": self.restart,
                "streams": [list(s) for s in self.streams] if self.streams else None, **self._identity()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Continue the stream saved in ``state``.

        If the stream settings differ (seed, rank, world size, workers, shard count...)
        the saved positions mean nothing: ``strict`` raises ValueError naming the
        differences, otherwise fresh streams start with a new salt (``restart`` =
        batches consumed), so the run does not replay the windows it began with.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} != {STATE_VERSION}")
        mine = self._identity()
        diffs = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        self.batches = int(state["batches"])
        if not diffs:
            self.restart = int(state.get("restart", 0))
            self.streams = [list(s) for s in state["streams"]] if state.get("streams") else None
            return
        message = "saved data stream differs from this loader: " + ", ".join(
            f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diffs.items())
        if strict:
            raise ValueError(message)
        log.warning("%s; starting fresh streams (restart salt %d)", message, self.batches)
        self.restart, self.streams = self.batches, None


def make_loader(urls: list[str], spec: WindowSpec, batch_size: int, num_workers: int = 0, seed: int = 0,
                rank: int = 0, world_size: int = 1, pin_memory: bool | None = None, *,
                state: dict | None = None, prefetch_factor: int = 2, cut: str = "host",
                **dataset_kwargs) -> WindowLoader:
    """A WindowLoader over TrainWindows(urls, spec, seed, rank, world_size, **dataset_kwargs).

    ``pin_memory`` defaults to ``torch.cuda.is_available()``; ``state`` is a saved
    ``WindowLoader.state_dict()`` to continue from (strict); ``cut``: "host" or "device"
    (clip records cut by ``finish``, see the module docstring).
    """
    dataset = TrainWindows(urls, spec, seed=seed, rank=rank, world_size=world_size, **dataset_kwargs)
    return loader_over(dataset, batch_size, num_workers, pin_memory, prefetch_factor, state, cut)


def loader_over(dataset: TrainWindows, batch_size: int, num_workers: int, pin_memory: bool | None,
                prefetch_factor: int, state: dict | None, cut: str = "host") -> WindowLoader:
    """A WindowLoader over any TrainWindows stream, continued from ``state`` (strict) when given."""
    loader = WindowLoader(dataset, batch_size, num_workers, pin_memory, prefetch_factor, cut)
    if state is not None:
        loader.load_state_dict(state)
    return loader
