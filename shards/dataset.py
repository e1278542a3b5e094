"""Streaming training windows over tar shards (local folders or URLs).

Stream layout. Every (rank, DataLoader worker) pair runs one *stream*. A stream
is a sequence of *blocks*; block ``b`` is a pure function of
(seed, rank, stream id, number of streams, block index, restart):
its own ``np.random.Generator`` picks ``shards_per_block`` shards of the stream's
shard set (with replacement across blocks when ``resampled``), reads them
interleaved, decodes each clip once, cuts up to ``windows_per_clip`` windows from
it, and passes the windows through a shuffle buffer that is drained at the end
of the block. Nothing is carried from one block to the next, so a position in
the stream is just (block, windows already taken from it).

Every window carries its stream's position after it (``_pos``); the loader records it
for an exact resume (shards/loader.py).

Shard split. With at least ``world_size * num_workers`` shards every stream
reads a disjoint set; with at least ``world_size`` shards ranks stay disjoint
and the workers of a rank share their rank's set; with fewer shards than ranks
every stream reads all shards. Streams are seeded differently in every case,
so sharing shards means sharing files, not repeating the same windows, and no
worker is ever left without data (which would hang DDP).

Mixing. With ``sources`` (the source index of each URL) and ``weights``, every source's
shards are split over the streams as above, each block picks shards from every source,
and each clip is read from a source drawn by weight; a block ends when one source's
shards run out, so the clips of a run come from the sources in the proportion of the
weights. All of it is drawn from the block's generator: exact resume holds as before.

Unreadable shards (the rule). A shard read that fails with an I/O error (HTTP 404,
refused connection, transfer cut short, stalled download: shards/remote.py) is logged
with its URL and retried ``read_retries`` times, ``retry_delay`` s, then twice that,
apart, continuing after the samples already used. After the last try the rest of that
shard is skipped for this block (counted in ``skipped``) and the stream goes on with its
other shards. The run stops with an error naming the URLs when ``max_failed_reads``
shard reads in a row of one stream failed every try (the storage is unreachable, not
one shard missing), or when none of a stream's shards gives a usable clip.
"""
from __future__ import annotations

import logging
import time
from typing import Collection, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from shards.errors import CorruptSample
from shards.format import KNOWN_MEMBERS, TRAINING_MEMBERS
from shards.sample import Clip, decode_clip
from shards.tar import iter_tar_samples
from shards.windows import WindowSpec, collate, cut_windows, random_draws

log = logging.getLogger(__name__)


def assign_shards(num_shards: int, rank: int, world_size: int, stream: int, num_streams: int) -> list[int]:
    """Indices of the shards one stream reads (see the module docstring for the three cases)."""
    if num_shards < 1:
        raise ValueError("no shards to assign")
    if not (0 <= rank < world_size and 0 <= stream < num_streams):
        raise ValueError(f"bad rank {rank}/{world_size} or worker {stream}/{num_streams}")
    if num_shards >= world_size * num_streams:
        return list(range(rank * num_streams + stream, num_shards, world_size * num_streams))
    if num_shards >= world_size:
        return list(range(rank, num_shards, world_size))
    return list(range(num_shards))


# ---------------------------------------------------------------- training stream
class TrainWindows(IterableDataset):
    """Infinite (``resampled``) or one-pass stream of training windows; see the module docstring.

    Windows are dicts of numpy views (``motion`` (N,D), ``prev_motion`` (P,D),
    ``prev_mask`` (P,), ``audio`` (N,A), ``prev_audio`` (P,A), ``ref_motion`` (D,),
    ``emotion`` (7,), float32 / bool; the audio float16 as stored when ``keep_audio_dtype``)
    plus ``key``, ``start``, ``ref_frame``, ``_clip`` (the decoded Clip the views are of) and
    ``_pos``, the stream position after the window (used by WindowLoader).
    ``skipped`` counts clips dropped as corrupt or too short in this process
    (``WindowLoader.skipped`` is the count for the consumed batches, workers included).
    With ``resampled=False`` each stream reads its shards once in a seeded order and
    ends; streams that share shards (fewer shards than streams) then repeat clips.
    """

    def __init__(self, urls: list[str], spec: WindowSpec = WindowSpec(), seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 64, resampled: bool = True,
                 shards_per_block: int = 2, emotion: str = "auto", motion_dim: int | None = None,
                 audio_dim: int | None = None, sources: list[int] | None = None,
                 weights: list[float] | None = None, read_retries: int = 2, retry_delay: float = 1.0,
                 max_failed_reads: int = 8):
        if not urls:
            raise ValueError("TrainWindows: no shard URLs")
        if seed < 0 or shuffle_buffer < 1 or shards_per_block < 1:
            raise ValueError(f"need seed >= 0, shuffle_buffer >= 1, shards_per_block >= 1; "
                             f"got {seed}, {shuffle_buffer}, {shards_per_block}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.urls = list(urls)
        self.spec, self.seed, self.rank, self.world_size = spec, seed, rank, world_size
        self.shuffle_buffer, self.resampled, self.shards_per_block = shuffle_buffer, resampled, shards_per_block
        self.emotion, self.motion_dim, self.audio_dim = emotion, motion_dim, audio_dim
        self.sources, self.weights = _check_mix(len(self.urls), sources, weights)
        self.read_retries, self.retry_delay, self.max_failed_reads = read_retries, retry_delay, max_failed_reads
        self.skipped = 0
        self._failed_in_a_row = 0
        # Set by WindowLoader: True with cut="device", where float16 audio stays float16 for clip records
        # (shards/clip_records.py); False for collate, which wants float32.
        self.keep_audio_dtype = False
        # Set by WindowLoader: (batches consumed, per-stream positions or None, restart salt).
        self.resume: tuple[int, list | None, int] = (0, None, 0)

    # -- hooks: what a clip is and what is drawn from it (shards/pairs.py overrides them) ----
    read_members: Collection[str] = TRAINING_MEMBERS
    known_members: Collection[str] = KNOWN_MEMBERS
    collate = staticmethod(collate)

    @property
    def min_frames(self) -> int:
        """Clips shorter than this are skipped (counted like corrupt ones)."""
        return self.spec.num_frames

    def spec_state(self) -> list:
        """The draw settings saved with the loader state (a resume with other ones is refused)."""
        return [self.spec.num_frames, self.spec.num_prev_frames, self.spec.windows_per_clip]

    def decode(self, key: str, members: dict[str, bytes]):
        """One shard sample -> a clip with ``num_frames``; CorruptSample when unusable."""
        return decode_clip(key, members, self.spec.num_prev_frames, self.emotion, self.motion_dim, self.audio_dim,
                           keep_audio_dtype=self.keep_audio_dtype)

    def draw(self, clip, rng: np.random.Generator) -> list[dict]:
        """The items taken from one decoded clip; CorruptSample skips the clip."""
        starts, refs = random_draws(clip, self.spec, rng)
        return cut_windows(clip, self.spec, starts, refs)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batches, positions, restart = self.resume
        stream_id = (batches + worker) % workers  # see "Exact resume" in the module docstring
        block, offset, skipped = positions[stream_id][:3] if positions else (0, 0, 0)
        return self.stream(stream_id, workers, block, offset, skipped, restart)

    def stream(self, stream: int, num_streams: int, block: int = 0, offset: int = 0, skipped: int = 0,
               restart: int = 0) -> Iterator[dict]:
        """The windows of one stream from (block, offset): a pure function of its arguments and the data.

        ``skipped`` is the stream's corrupt-clip count at the start of ``block``.
        """
        groups = self._groups()
        sets = [[g[i] for i in assign_shards(len(g), self.rank, self.world_size, stream, num_streams)]
                for g in groups]
        shard_ids = [i for ids in sets for i in ids]
        ident = [self.seed, self.rank, stream, num_streams, restart]
        orders = None if self.resampled else [np.random.default_rng(ident + [2**31 + k]).permutation(ids)
                                              for k, ids in enumerate(sets)]
        per_block = [min(self.shards_per_block, len(ids)) for ids in sets]
        barren: set[int] = set()  # shards that gave no window the last time they were read
        while True:
            rng = np.random.default_rng(ident + [block])
            if self.resampled:
                chosen = [rng.choice(ids, size=n, replace=False).tolist() for ids, n in zip(sets, per_block)]
            else:
                chosen = [o[block * n:(block + 1) * n].tolist() for o, n in zip(orders, per_block)]
                if not any(chosen):
                    return
            counter = [skipped]
            produced = dict.fromkeys((i for c in chosen for i in c), 0)
            for n, window, last in self._block(chosen, rng, counter, produced, quiet=offset > 0):
                if n < offset:
                    continue
                pos = (block + 1, 0) if last else (block, n + 1)
                window["_pos"] = (stream, *pos, counter[0] if last else skipped, counter[0])
                yield window
            barren |= {s for s, c in produced.items() if c == 0}
            barren -= {s for s, c in produced.items() if c > 0}
            if self.resampled and barren >= set(shard_ids):
                raise RuntimeError(f"no usable clip (readable, >= {self.min_frames} frames) in any of the "
                                   f"shards of rank {self.rank} worker {stream}: "
                                   f"{[self.urls[i] for i in shard_ids][:5]} (see the warnings logged above)")
            block, offset, skipped = block + 1, 0, counter[0]

    def _groups(self) -> list[list[int]]:
        """URL indices of each source (one source: all URLs)."""
        if self.sources is None:
            return [list(range(len(self.urls)))]
        return [[i for i, s in enumerate(self.sources) if s == k] for k in range(len(self.weights))]

    def _clips(self, url: str, counter: list, quiet: bool) -> Iterator[Clip | None]:
        """Decoded usable clips of one shard; None for each skipped one (counted in counter and self.skipped).

        I/O errors follow the rule of the module docstring: retried, then the rest of the
        shard is skipped with one count, and a run of such failures stops the stream.
        """
        used, attempt = 0, 0
        while True:
            try:
                for i, (key, members) in enumerate(iter_tar_samples(url, self.read_members,
                                                                    known_members=self.known_members)):
                    if i < used:  # a retry re-reads the shard from its start
                        continue
                    used += 1
                    yield self._decoded(url, key, members, counter, quiet)
                self._failed_in_a_row = 0
                return
            except OSError as e:
                attempt += 1
                if attempt <= self.read_retries:
                    log.warning("%s: read error (%s); retry %d of %d", url, e, attempt, self.read_retries)
                    time.sleep(self.retry_delay * attempt)
                    continue
                counter[0] += 1
                self.skipped += 1
                self._failed_in_a_row += 1
                log.warning("%s: unreadable after %d tries (%s); skipping the rest of this shard (%d clips read "
                            "from it before the failure; %d skipped so far in this stream: corrupt clips, one per shard cut off)", url, attempt, e,
                            used, self.skipped)
                if self._failed_in_a_row >= self.max_failed_reads:
                    raise RuntimeError(f"{self._failed_in_a_row} shard reads in a row failed every retry, the "
                                       f"last {url} ({e}); {self.skipped} skipped so far in this stream (corrupt "
                                       f"clips, one per shard cut off): is the shard storage reachable?") from None
                return

    def _decoded(self, url: str, key: str, members: dict, counter: list, quiet: bool) -> Clip | None:
        try:
            clip = self.decode(key, members)
            if clip.num_frames < self.min_frames:
                if not quiet:
                    log.debug("%s: skipping %s: %d frames < %d", url, key, clip.num_frames, self.min_frames)
                clip = None
        except CorruptSample as e:
            if not quiet:
                log.warning("%s: skipping corrupt sample %s: %s", url, key, e)
            clip = None
        if clip is None:
            counter[0] += 1
            self.skipped += 1
        return clip

    def _block(self, chosen: list[list[int]], rng: np.random.Generator, counter: list, produced: dict,
               quiet: bool) -> Iterator[tuple[int, dict, bool]]:
        """(index in block, window, is last) for one block: interleaved shards -> clips -> shuffle buffer.

        ``chosen``: the shards of each source. One source: the next clip comes from a
        random open shard. Several: from a source drawn by weight, then a random open
        shard of it; the block ends when a source has no open shard left.
        """
        groups = [[(i, self._clips(self.urls[i], counter, quiet)) for i in ids] for ids in chosen]
        p = None if len(groups) == 1 else np.asarray(self.weights)
        buffer: list[dict] = []
        n = 0
        try:
            while True:
                live = [k for k, readers in enumerate(groups) if readers]
                # Resampled: stop when a source runs out (the proportions hold); one pass: read everything.
                if not live or (self.resampled and len(live) < len(groups)):
                    break
                g = 0 if p is None else live[int(rng.choice(len(live), p=p[live] / p[live].sum()))]
                readers, clip = groups[g], _NONE
                while readers and clip is _NONE:  # an exhausted shard does not use up the source's draw
                    r = int(rng.integers(len(readers))) if len(readers) > 1 else 0
                    shard, reader = readers[r]
                    try:
                        clip = next(reader)
                    except StopIteration:
                        readers.pop(r)
                if clip is None or clip is _NONE:
                    continue
                try:
                    windows = self.draw(clip, rng)
                except CorruptSample as e:  # found only when drawing (e.g. a frame that does not decode)
                    if not quiet:
                        log.warning("%s: skipping corrupt sample %s: %s", self.urls[shard], clip.key, e)
                    counter[0] += 1
                    self.skipped += 1
                    continue
                produced[shard] += len(windows)
                for w in windows:
                    buffer.append(w)
                    if len(buffer) >= self.shuffle_buffer:
                        yield n, _pop_random(buffer, rng), False
                        n += 1
            while buffer:
                w = _pop_random(buffer, rng)
                yield n, w, not buffer
                n += 1
        finally:
            for readers in groups:
                for _, reader in readers:
                    reader.close()


_NONE = object()  # no clip drawn (the source's shards are exhausted), unlike None (a skipped clip)


def _pop_random(buffer: list, rng: np.random.Generator):
    k = int(rng.integers(len(buffer)))
    buffer[k], buffer[-1] = buffer[-1], buffer[k]
    return buffer.pop()


def _check_mix(num_urls: int, sources: list[int] | None, weights: list[float] | None):
    """(sources, weights) validated; (None, None) for an unmixed stream."""
    if sources is None and weights is None:
        return None, None
    if sources is None or weights is None or len(sources) != num_urls:
        raise ValueError("mixing needs a source index per URL and a weight per source")
    weights = [float(w) for w in weights]
    if any(not w > 0 for w in weights) or set(sources) != set(range(len(weights))):
        raise ValueError(f"every source needs shards and a weight > 0; got weights {weights}, "
                         f"sources {sorted(set(sources))}")
    return list(sources), weights
