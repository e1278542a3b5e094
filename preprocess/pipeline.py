"""The offline stage: clips in, WebDataset shards + manifest out.

discover -> split by actor -> skip clips already in complete shards -> worker
processes run ``prepare_clip`` (decode, resample, crop) -> the main process
encodes each clip on one device -> per-split shard writers -> manifest and
``errors.jsonl``.

Determinism: clips are written in discovery order (results from the workers are
consumed in submission order), every clip is encoded on its own, and the tar
headers are fixed, so the same inputs and settings give the same shard bytes.

Resuming: complete shards are scanned; a clip whose key is already in one is
skipped, provided the shards carry this run's settings fingerprint (otherwise
the run refuses and names the differing settings, unless ``overwrite``). A
``.tmp`` left by a killed run is deleted and its clips redone; new shards take
the next free index and the manifest is rebuilt from the complete shards.

Parts (``part="i/N"``): a clip belongs to part ``1 + sha256(clip_id) mod N``
(stable whatever else is in the dataset). Part i numbers its shards from
``(i-1) * (1_000_000 // N)`` so parts never collide, even writing into one shared
folder, and writes ``manifest.part-i-of-N.json`` and ``errors.part-i-of-N.jsonl``.
Once all parts' shards sit in one folder, ``merge_part_outputs`` (``floatctl
shards --merge``) writes the combined ``manifest.json`` and ``errors.jsonl``.
The actor split is computed from the whole dataset, so every part agrees on it.

Here: the order of the stage and the clip loop. Its options and what a run records
in its manifest are in preprocess/settings.py; the output folder (overwrite,
resume, refusal, manifest keeper, shard writers, errors.jsonl, merge) in
preprocess/output.py; progress and the summary in preprocess/report.py.
"""
from __future__ import annotations

import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from preprocess.errors import ClipError, EncoderSetupError, PipelineError
from preprocess.output import (ManifestKeeper, open_writers, output_names, prepare_out_folder, sample_members,
                               write_errors)
from preprocess.report import RunSummary, format_summary, progress_bar
from preprocess.settings import ShardSettings, check_options, describe_run, resolve_detector
from preprocess.splits import assign_splits, part_of
from shards.format import SPLITS


# --------------------------------------------------------------------------- worker side
def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; avoid oversubscription


def _prepare_one(src, input_size: int, crop: str, min_seconds: float, segment_seconds: float = 0.0,
                 detector: str = "dlib"):
    """Runs in a worker: (PreparedClip or SegmentPlan, None) or (None, {"file", "reason"}). Never raises."""
    from preprocess.segments import prepare_source

    try:
        return prepare_source(src, input_size, crop, min_seconds, segment_seconds, detector=detector), None
    except ClipError as e:
        return None, {"file": src.video, "reason": str(e)}
    except Exception as e:  # one odd file must not end a long run; the reason says it was unexpected
        return None, {"file": src.video, "reason": f"unexpected {type(e).__name__}: {e}"}


def _prepared_in_order(todo, workers: int, input_size: int, crop: str, min_seconds: float,
                       segment_seconds: float = 0.0, detector: str = "dlib"):
    """Yield (source, result) in ``todo`` order, keeping at most workers + 2 clips in flight."""
    args = (input_size, crop, min_seconds, segment_seconds, detector)
    if workers <= 0:
        for src in todo:
            yield src, _prepare_one(src, *args)
        return
    ctx = get_context("spawn")  # torch is loaded here; forking it is unsafe
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        pending = deque()
        it = iter(todo)
        for src in it:
            pending.append((src, pool.submit(_prepare_one, src, *args)))
            if len(pending) >= workers + 2:
                break
        while pending:
            src, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_prepare_one, nxt, *args)))
            yield src, fut.result()


# --------------------------------------------------------------------------- the stage
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_input(s: ShardSettings, log=_log) -> tuple[Path, str]:
    """(root, discover kind). No dataset given: the synthetic RAVDESS set, made on first use."""
    if s.ravdess is not None and s.input is not None:
        raise PipelineError("give either --ravdess or --input, not both")
    if s.ravdess is not None:
        root, kind = Path(s.ravdess), "ravdess"
    elif s.input is not None:
        root, kind = Path(s.input), "auto"
    else:
        root = Path(s.synthetic_dir)
        if not any(root.glob("Actor_*/*.mp4")):
            from preprocess.synthetic import make_synthetic_ravdess

            log(f"no --ravdess/--input given: writing the synthetic RAVDESS-format set to {root}")
            make_synthetic_ravdess(root, seed=s.seed)
        else:
            log(f"no --ravdess/--input given: using the synthetic set in {root}")
        return root, "ravdess"
    if not root.exists():
        raise PipelineError(f"input folder {root} does not exist")
    if not root.is_dir():
        raise PipelineError(f"input {root} is not a folder")
    return root, kind


def _samples_of(src, prepared, error, input_size: int):
    """(source, PreparedClip, None) or (source, None, error) for each sample of one source: a clip as it
    came from the worker, or a long video's segments cropped here one at a time (preprocess/segments.py)."""
    from preprocess.segments import SegmentPlan, iter_segments

    if not isinstance(prepared, SegmentPlan):
        yield src, prepared, error
        return
    for left_out in prepared.errors:
        yield src, None, left_out
    try:
        for segment, seg_error in iter_segments(src, prepared, input_size):
            yield (segment.source if segment is not None else src), segment, seg_error
    except ClipError as e:  # the second decode failed part-way: the segments already yielded stand
        yield src, None, {"file": src.video, "reason": f"cropping the segments stopped: {e}"}


def _write_clips(todo, s: ShardSettings, input_size: int, encoder, split_of: dict, writers: dict,
                 keeper: ManifestKeeper, errors: list[dict], done: set = frozenset(),
                 crops=None) -> tuple[dict[str, int], int]:
    """Prepare (workers) -> encode -> write, in discovery order. Returns (written per split, frames).

    ``done``: clips already in latent shards (in ``todo`` only because ``crops`` lacks them)."""
    written = {split: 0 for split in SPLITS}
    frames_written = 0
    fingerprint, encoder_fps = keeper.base["fingerprint"], encoder.fingerprints()
    t0 = time.time()
    progress = progress_bar(len(todo), s.progress)
    try:
        for source, result in _prepared_in_order(todo, s.workers, input_size, s.crop, s.min_seconds,
                                                 s.segment_seconds, s.detector):
            for src, prepared, error in _samples_of(source, *result, input_size):
                if error is not None:
                    errors.append(error)
                    continue
                split = split_of[src.actor]  # a segment keeps its video's speaker, so its split
                if crops is not None:
                    crops.add(split, prepared)  # the frames the encoder sees, JPEG'd in the same pass
                if src.clip_id in done:
                    continue
                encoded = encoder.encode(prepared.frames, prepared.audio)
                keeper.frames_of[src.clip_id] = len(prepared.frames)
                keeper.actor_of[src.clip_id] = src.actor
                writers[split].add(src.clip_id, sample_members(src.clip_id, split, prepared, encoded,
                                                               fingerprint, encoder_fps))
                written[split] += 1
                frames_written += len(prepared.frames)
            progress.update(1)
            elapsed = max(time.time() - t0, 1e-9)
            progress.set_postfix(frames_s=f"{frames_written / elapsed:.1f}", rejected=len(errors), refresh=False)
        for w in writers.values():
            w.close()
        if crops is not None:
            crops.close()
    except BrokenProcessPool as e:
        for w in writers.values():
            w.abort()
        if crops is not None:
            crops.abort()
        raise PipelineError(f"a decoding worker process died ({e}); often out of memory: lower --workers. "
                            "Complete shards are kept; rerun to resume.") from e
    except BaseException:
        for w in writers.values():
            w.abort()
        if crops is not None:
            crops.abort()
        raise
    finally:
        progress.close()
    return written, frames_written


def run_shards(s: ShardSettings, log: Callable[[str], None] = _log) -> RunSummary:
    """The whole stage. Bad options, missing inputs or weights raise PipelineError before any
    clip is decoded; rejected clips go to errors.jsonl and the run goes on."""
    from preprocess.discover import discover, flat_folder_warning, looks_like_ravdess
    from preprocess.encode import build_encoder
    from shards.files import check_writable

    t0 = time.time()
    if s.from_crops is not None:
        from preprocess.from_crops import run_from_crops

        return run_from_crops(s, log)
    part, cfg, input_size = check_options(s)
    s = resolve_detector(s, part, log)  # before anything is keyed on it: the manifest and its fingerprint
    root, kind = resolve_input(s, log)
    check_writable(s.out, "--out")  # a read-only or full --out: one StorageError line before any clip is read
    try:
        sources, rejected = discover(root, kind, tuple(s.vocal_channels), s.speaker_pattern)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise PipelineError(str(e)) from None
    # In part runs each part reports the name rejections that hash to it, so merged errors hold each once.
    errors = [{"file": r.path, "reason": r.reason} for r in rejected
              if part is None or part_of(r.path, part[1]) == part[0]]
    out = Path(s.out)
    manifest_name, errors_name = output_names(part)
    if not sources:
        out.mkdir(parents=True, exist_ok=True)
        write_errors(out / errors_name, errors)
        example = f"; e.g. {rejected[0].path}: {rejected[0].reason}" if rejected else ""
        raise PipelineError(f"{root}: no usable clips found ({len(rejected)} file(s) rejected, reasons in "
                            f"{out / errors_name}{example})")
    if kind != "ravdess" and s.speaker_pattern is None and not looks_like_ravdess(root):
        warning = flat_folder_warning(root, sources)
        if warning:
            log(warning)
    split_of = assign_splits([c.actor for c in sources], s.val_actors, s.test_actors, s.val_ids, s.test_ids, warn=log)
    try:
        encoder = build_encoder(input_size, s.audio_features, s.wav2vec2, s.ser, s.float_ckpt, s.device,
                                s.seed, s.batch_size, log=log, ae_width=cfg.ae_width, motion_ckpt=s.motion_ckpt)
    except EncoderSetupError as e:
        raise PipelineError(str(e)) from None
    base = describe_run(s, cfg, input_size, encoder, split_of, root, kind)
    scans, known_hashes = prepare_out_folder(out, part, s.overwrite, base, log)

    crops = None
    if s.crops:
        from preprocess.crop_stage import CropOutput

        crops = CropOutput.open(s, cfg, input_size, split_of, root, kind, part, log)
    done = {k for scan in scans for k in scan.keys}
    mine = [c for c in sources if part is None or part_of(c.clip_id, part[1]) == part[0]]
    todo = [c for c in mine if c.clip_id not in done or (crops is not None and c.clip_id not in crops.done)]
    log(f"{len(sources)} clips found in {root} ({len(rejected)} rejected by name); "
        f"{len(mine) - len(todo)} already in shards, {len(todo)} to do"
        + (f" (part {part[0]}/{part[1]}: {len(mine)} clips)" if part else ""))
    if encoder.encoders_info["motion"]["random"]:
        log("NOTE: these shards will be labelled random-weight shards in the manifest")

    keeper, writers = open_writers(out, part, base, scans, known_hashes, s.shard_size_mb, s.shard_samples)
    written, frames_written = _write_clips(todo, s, input_size, encoder, split_of, writers, keeper, errors,
                                           done, crops)

    manifest = keeper.write()
    if crops is not None:
        log(crops.summary(crops.finish()))
    errors_file = out / errors_name
    write_errors(errors_file, errors)
    present = {split: manifest["splits"][split]["clips"] for split in SPLITS}
    summary = RunSummary(out, written, present, frames_written, len(errors), errors_file,
                         out / manifest_name, time.time() - t0,
                         crops.folder / manifest_name if crops is not None else None)
    log(format_summary(summary, manifest))
    return summary
