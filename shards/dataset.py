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

Shard split. With at least ``world_size * num_workers`` shards every stream
reads a disjoint set; with at least ``world_size`` shards ranks stay disjoint
and the workers of a rank share their rank's set; with fewer shards than ranks
every stream reads all shards. Streams are seeded differently in every case,
so sharing shards means sharing files, not repeating the same windows, and no
worker is ever left without data (which would hang DDP).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Collection, Iterator

import numpy as np
import torch
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset

from float.config import FloatConfig
from shards.format import FORMAT_VERSION, KNOWN_MEMBERS, TRAINING_MEMBERS  # noqa: F401  (KNOWN_MEMBERS: read here by loop.py)
from shards.manifest import read_manifest
from shards.sample import Clip, CorruptSample, decode_clip
from shards.tar import ShardError, iter_tar_samples  # noqa: F401  (ShardError: part of this module's API)
from shards.windows import WindowSpec, collate, cut_windows, even_starts, random_draws

log = logging.getLogger(__name__)

STATE_VERSION = 1

# ---------------------------------------------------------------- shard lists and compatibility
def _to_open_url(url: str) -> str:
    if url.startswith(("http://", "https://")):
        return f"pipe:curl -s -L -f {url}"  # -f: an HTTP error fails the pipe instead of returning a page
    if url.startswith("s3://"):
        return f"pipe:aws s3 cp {url} -"
    return url


def shard_urls(folder_or_urls: str | Path, split: str = "train", manifest: dict | None = None) -> list[str]:
    """The shard URLs of ``split``.

    A local folder: its manifest's shard list (``manifest`` if given, else the
    folder's manifest.json), every file checked to exist. Otherwise a URL or
    path pattern: ``{split}`` is substituted, brace ranges are expanded
    (``train-{000000..000009}.tar``), http(s) becomes ``pipe:curl``, s3 becomes
    ``pipe:aws s3 cp``; ``pipe:`` URLs pass through unchanged.
    """
    text = str(folder_or_urls)
    folder = Path(text)
    looks_remote = "://" in text or text.startswith("pipe:") or "{" in text
    if not looks_remote:
        if not folder.exists():
            raise FileNotFoundError(f"shard folder {folder} does not exist (write shards with `floatctl shards`)")
        if folder.is_file() and folder.suffix == ".tar":
            return [str(folder)]
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is neither a shard folder nor a .tar file")
        if manifest is None:
            if not any(folder.iterdir()):
                raise FileNotFoundError(f"shard folder {folder} is empty (write shards with `floatctl shards`)")
            manifest = read_manifest(folder)
        entry = manifest.get("splits", {}).get(split)
        names = [s["name"] for s in (entry or {}).get("shards", [])]
        if not names:
            raise FileNotFoundError(f"{folder / 'manifest.json'}: no {split!r} shards listed "
                                    f"(splits present: {sorted(manifest.get('splits', {}))})")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: shards listed in manifest.json are missing: {missing[:5]}"
                                    + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        return [str(folder / n) for n in names]
    urls = [_to_open_url(u) for u in braceexpand(text.replace("{split}", split))]
    if not urls:
        raise ValueError(f"shard pattern {text!r} expands to no URL")
    return urls


def manifest_dims(manifest: dict) -> tuple[int, int]:
    """(motion width, audio feature width) recorded in a manifest."""
    try:
        return int(manifest["features"]["motion"]["dim"]), int(manifest["features"]["audio"]["dim"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"manifest lacks features.motion.dim / features.audio.dim ({e!r})") from e


def check_compatible(manifest: dict, cfg: FloatConfig, expected_motion_fingerprint: str | None = None) -> None:
    """Raise ValueError naming every way the shards do not fit the model ``cfg``.

    ``expected_motion_fingerprint``: the motion encoder of the checkpoint being
    fine-tuned; latents from another motion encoder live in another space.
    """
    def get(*path):
        node = manifest
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node

    if manifest.get("kind") == "crops":  # see shards/crops.py
        raise ValueError("this folder holds crop shards (stage 1), not latent shards: write latents with "
                         "`floatctl shards` (or `floatctl shards --from-crops`) and train on that folder")
    problems = []
    if get("format_version") != FORMAT_VERSION:
        problems.append(f"shard format_version {get('format_version')} != supported {FORMAT_VERSION}")
    checks = [
        (("features", "motion", "dim"), cfg.dim_w, "motion latent width", "dim_w"),
        (("features", "audio", "dim"), cfg.audio_input_dim, "audio feature width", "audio_input_dim"),
        (("features", "emotion", "dim"), cfg.dim_e, "emotion width", "dim_e"),
        (("fps",), cfg.fps, "frame rate", "fps"),
        (("sampling_rate",), cfg.sampling_rate, "audio sampling rate", "sampling_rate"),
    ]
    for path, want, what, field in checks:
        have = get(*path)
        if have is None:
            problems.append(f"manifest has no {'.'.join(path)} ({what}; model {field}={want})")
        elif have != want:
            problems.append(f"{what}: shards have {'.'.join(path)}={have}, model has {field}={want}")
    if expected_motion_fingerprint is not None:
        have = get("encoders", "motion", "fingerprint")
        if have != expected_motion_fingerprint:
            problems.append(f"motion encoder fingerprint: shards were encoded with {have!r}, the checkpoint "
                            f"being fine-tuned uses {expected_motion_fingerprint!r} (re-encode the shards "
                            "with that checkpoint's motion encoder)")
    if problems:
        raise ValueError("shards do not fit the model:\n  - " + "\n  - ".join(problems))


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
    ``emotion`` (7,), float32 / bool) plus ``key``, ``start``, ``ref_frame`` and
    ``_pos``, the stream position after the window (used by WindowLoader).
    ``skipped`` counts clips dropped as corrupt or too short in this process
    (``WindowLoader.skipped`` is the count for the consumed batches, workers included).
    With ``resampled=False`` each stream reads its shards once in a seeded order and
    ends; streams that share shards (fewer shards than streams) then repeat clips.
    """

    def __init__(self, urls: list[str], spec: WindowSpec = WindowSpec(), seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 64, resampled: bool = True,
                 shards_per_block: int = 2, emotion: str = "auto", motion_dim: int | None = None,
                 audio_dim: int | None = None):
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
        self.skipped = 0
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
        return decode_clip(key, members, self.spec.num_prev_frames, self.emotion, self.motion_dim, self.audio_dim)

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
        shard_ids = assign_shards(len(self.urls), self.rank, self.world_size, stream, num_streams)
        ident = [self.seed, self.rank, stream, num_streams, restart]
        order = None if self.resampled else np.random.default_rng(ident + [2**31]).permutation(shard_ids)
        per_block = min(self.shards_per_block, len(shard_ids))
        barren: set[int] = set()  # shards that gave no window the last time they were read
        while True:
            rng = np.random.default_rng(ident + [block])
            if self.resampled:
                chosen = rng.choice(shard_ids, size=per_block, replace=False).tolist()
            else:
                chosen = order[block * per_block:(block + 1) * per_block].tolist()
                if not chosen:
                    return
            counter = [skipped]
            produced = dict.fromkeys(chosen, 0)
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

    def _clips(self, url: str, counter: list, quiet: bool) -> Iterator[Clip | None]:
        """Decoded usable clips of one shard; None for each skipped one (counted in counter and self.skipped).

        An I/O error (a failed download command, a vanished file) ends this shard's
        read with a warning and one count; the stream goes on with other shards, and
        the caller stops the run when every shard keeps failing.
        """
        try:
            for key, members in iter_tar_samples(url, self.read_members, known_members=self.known_members):
                try:
                    clip = self.decode(key, members)
                    if clip.num_frames < self.min_frames:
                        if not quiet:
                            log.debug("%s: skipping %s: %d frames < %d", url, key, clip.num_frames,
                                      self.min_frames)
                        clip = None
                except CorruptSample as e:
                    if not quiet:
                        log.warning("%s: skipping corrupt sample %s: %s", url, key, e)
                    clip = None
                if clip is None:
                    counter[0] += 1
                    self.skipped += 1
                yield clip
        except OSError as e:
            if not quiet:
                log.warning("%s: read error, skipping the rest of this shard: %s", url, e)
            counter[0] += 1
            self.skipped += 1

    def _block(self, chosen: list[int], rng: np.random.Generator, counter: list, produced: dict,
               quiet: bool) -> Iterator[tuple[int, dict, bool]]:
        """(index in block, window, is last) for one block: interleaved shards -> clips -> shuffle buffer."""
        readers = [(i, self._clips(self.urls[i], counter, quiet)) for i in chosen]
        buffer: list[dict] = []
        n = 0
        try:
            while readers:
                r = int(rng.integers(len(readers))) if len(readers) > 1 else 0
                shard, reader = readers[r]
                try:
                    clip = next(reader)
                except StopIteration:
                    readers.pop(r)
                    continue
                if clip is None:
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
            for _, reader in readers:
                reader.close()


def _pop_random(buffer: list, rng: np.random.Generator):
    k = int(rng.integers(len(buffer)))
    buffer[k], buffer[-1] = buffer[-1], buffer[k]
    return buffer.pop()


class _CollateWithPosition:
    """The dataset's collate plus the stream position of the batch's last item (picklable)."""

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, windows: list[dict]) -> dict:
        batch = self.collate_fn(windows)
        batch["_stream"] = windows[-1]["_pos"]
        return batch


# ---------------------------------------------------------------- loader with resumable position
class WindowLoader:
    """Iterable of collated training batches whose position can be saved and restored.

    Each ``iter()`` continues from the last consumed batch (batches prefetched
    but not consumed are read again). ``state_dict()`` after ``k`` batches +
    ``load_state_dict()`` on a fresh loader gives the same batches from ``k`` on.
    """

    def __init__(self, dataset: TrainWindows, batch_size: int, num_workers: int = 0,
                 pin_memory: bool | None = None, prefetch_factor: int = 2):
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch_factor = prefetch_factor
        self.batches = 0
        self.streams: list | None = None  # per stream [block, offset, skipped at block start, skipped now]
        self.restart = 0

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
            collate_fn=_CollateWithPosition(self.dataset.collate), pin_memory=self.pin_memory,
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
                "resampled": d.resampled}

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
                state: dict | None = None, prefetch_factor: int = 2, **dataset_kwargs) -> WindowLoader:
    """A WindowLoader over TrainWindows(urls, spec, seed, rank, world_size, **dataset_kwargs).

    ``pin_memory`` defaults to ``torch.cuda.is_available()``; ``state`` is a saved
    ``WindowLoader.state_dict()`` to continue from (strict).
    """
    dataset = TrainWindows(urls, spec, seed=seed, rank=rank, world_size=world_size, **dataset_kwargs)
    loader = WindowLoader(dataset, batch_size, num_workers, pin_memory, prefetch_factor)
    if state is not None:
        loader.load_state_dict(state)
    return loader


# ---------------------------------------------------------------- validation windows
class ValWindows(torch.utils.data.Dataset):
    """A fixed, finite list of windows from (val) shards: shards in the given order, clips in tar
    order, ``windows_per_clip`` starts spread evenly over each clip, reference = frame 0 (the frame
    ref.jpg shows, as at inference). Windows are compact copies, so clips are not kept alive.
    """

    def __init__(self, urls: list[str], spec: WindowSpec = WindowSpec(), windows_per_clip: int = 2,
                 max_clips: int | None = None, emotion: str = "auto", motion_dim: int | None = None,
                 audio_dim: int | None = None):
        if not urls:
            raise ValueError("ValWindows: no shard URLs")
        self.spec = spec
        self.skipped = 0
        self.windows: list[dict] = []
        clips = 0
        for url in urls:
            for key, members in iter_tar_samples(url):
                if max_clips is not None and clips >= max_clips:
                    return
                try:
                    clip = decode_clip(key, members, spec.num_prev_frames, emotion, motion_dim, audio_dim)
                except CorruptSample as e:
                    log.warning("%s: skipping corrupt sample %s: %s", url, key, e)
                    self.skipped += 1
                    continue
                if clip.num_frames < spec.num_frames:
                    self.skipped += 1
                    continue
                starts = even_starts(clip, spec, windows_per_clip)
                for w in cut_windows(clip, spec, starts, np.zeros_like(starts)):
                    self.windows.append({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in w.items()})
                clips += 1

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict:
        return self.windows[index]

    def batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> list[dict]:
        """Collated batches of this rank's share (every ``world_size``-th window), in order."""
        mine = self.windows[rank::world_size]
        return [collate(mine[i:i + batch_size]) for i in range(0, len(mine), batch_size)]


def manifest_of(folder: str | Path) -> dict | None:
    """The folder's manifest, or None for URL patterns (whose manifest the caller must fetch)."""
    text = str(folder)
    if "://" in text or text.startswith("pipe:") or "{" in text:
        return None
    return read_manifest(Path(text))
