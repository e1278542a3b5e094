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
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from shards.files import atomic_write_text, remove_stale_temporaries
from float.config import FPS
from shards.files import file_sha256
from shards.format import ERRORS, FORMAT_VERSION, MANIFEST, SPLITS
from shards.inspect import ShardScan, list_shards, list_tmp_shards, scan_shard
from shards.manifest import (CREATED_BY, ManifestError, build_manifest, diff_settings, fingerprint_inputs,
                             format_diff, list_part_manifests, merge_parts, part_manifest_name, read_manifest,
                             settings_fingerprint, write_manifest)
from shards.sample import encode_sample, sample_meta
from shards.tar import ShardError
from shards.writer import TMP_SUFFIX, ShardInfo, ShardWriter, parse_shard_name
from preprocess.splits import (PipelineError, _actor_order, assign_splits, index_range,  # noqa: F401  (API)
                               parse_part, part_of)

DEFAULT_SYNTHETIC_DIR = Path("data/synthetic_ravdess")


def default_workers() -> int:
    """One decoding process per core, leaving one core for encoding (at least 1, at most 8)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class ShardSettings:
    """Every option of ``floatctl shards`` (see preprocess/command.py for their help)."""
    ravdess: Path | None = None
    input: Path | None = None
    out: Path = Path("data/shards")
    preset: str = "tiny"
    input_size: int | None = None  # None: the preset's
    crop: str = "auto"
    audio_features: str = "auto"
    wav2vec2: Path | None = None
    ser: Path | None = None
    float_ckpt: Path | None = None
    vocal_channels: tuple[str, ...] = ("speech", "song")
    val_actors: int = 2
    test_actors: int = 2
    val_ids: tuple[str, ...] = ()
    test_ids: tuple[str, ...] = ()
    workers: int = field(default_factory=default_workers)
    batch_size: int = 64
    device: str = "auto"
    part: str | None = None
    shard_size_mb: float = 256.0
    shard_samples: int | None = None
    min_seconds: float = 2.0
    seed: int = 0
    overwrite: bool = False
    synthetic_dir: Path = DEFAULT_SYNTHETIC_DIR
    progress: bool = True
    crops: bool = True  # also write crop shards (preprocess/crop_stage.py)
    crops_out: Path | None = None  # None: <out>-crops
    from_crops: Path | None = None  # encode latents from this crop folder instead of videos
    motion_ckpt: Path | None = None  # stage-1 checkpoint of floatctl train-motion

    def as_json(self) -> dict:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclass
class RunSummary:
    out: Path
    written: dict[str, int]  # new samples per split
    present: dict[str, int]  # samples per split in the folder's complete shards at the end
    frames_written: int
    rejected: int
    errors_file: Path
    manifest_file: Path | None
    seconds: float
    crops_manifest_file: Path | None = None

    @property
    def total_present(self) -> int:
        return sum(self.present.values())

    @property
    def exit_code(self) -> int:
        return 0 if self.total_present > 0 else 1


def sample_members(key: str, split: str, prepared, encoded, settings_fp: str, encoder_fps: dict) -> dict[str, bytes]:
    """The shard members of one prepared and encoded clip (the codec is shards/sample.py)."""
    src = prepared.source
    meta = sample_meta(
        key, split, FPS, len(prepared.frames), settings_fp,
        actor=src.actor, source={"video": src.video, "audio": src.audio}, sha256=prepared.sha256,
        source_fps=round(float(prepared.source_fps), 6),
        crop=prepared.box.as_dict() if prepared.box is not None else None,
        emotion=src.emotion, fields=src.fields, encoders=encoder_fps)
    return encode_sample(meta, encoded.motion, encoded.lambdas, encoded.audio, src.emotion, prepared.frames[0],
                         encoded.emotion_probs)


# --------------------------------------------------------------------------- worker side
def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; avoid oversubscription


def _prepare_one(src, input_size: int, crop: str, min_seconds: float):
    """Runs in a worker: (PreparedClip, None) or (None, {"file", "reason"}). Never raises."""
    from preprocess.clip import prepare_clip
    from preprocess.media import ClipError

    try:
        return prepare_clip(src, input_size, crop=crop, min_seconds=min_seconds), None
    except ClipError as e:
        return None, {"file": src.video, "reason": str(e)}
    except Exception as e:  # one odd file must not end a long run; the reason says it was unexpected
        return None, {"file": src.video, "reason": f"unexpected {type(e).__name__}: {e}"}


def _prepared_in_order(todo, workers: int, input_size: int, crop: str, min_seconds: float):
    """Yield (source, result) in ``todo`` order, keeping at most workers + 2 clips in flight."""
    if workers <= 0:
        for src in todo:
            yield src, _prepare_one(src, input_size, crop, min_seconds)
        return
    ctx = get_context("spawn")  # torch is loaded here; forking it is unsafe
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        pending = deque()
        it = iter(todo)
        for src in it:
            pending.append((src, pool.submit(_prepare_one, src, input_size, crop, min_seconds)))
            if len(pending) >= workers + 2:
                break
        while pending:
            src, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_prepare_one, nxt, input_size, crop, min_seconds)))
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


def _crop_info(crop: str) -> dict:
    if crop == "none":
        return {"mode": "none", "scale": None, "detector": None}
    from preprocess import face

    return {"mode": "auto", "scale": face.CROP_SCALE, "detector": face.DETECTOR}


def output_names(part: tuple[int, int] | None) -> tuple[str, str]:
    """(manifest, errors) file names of a run: the shared ones, or the part's own."""
    if part is None:
        return MANIFEST, ERRORS
    i, n = part
    return part_manifest_name(i, n), f"errors.part-{i}-of-{n}.jsonl"


def _owned_shard_files(out: Path, start: int, end: int) -> list[Path]:
    """Complete and temporary shards whose index lies in this run's range [start, end)."""
    mine = [p for p in list_shards(out) if start <= parse_shard_name(p.name)[1] < end]
    tmps = [p for p in list_tmp_shards(out) if start <= parse_shard_name(p.name[:-len(TMP_SUFFIX)])[1] < end]
    return mine + tmps


def _refuse_if_different(out: Path, scans, fingerprint: str, new_manifest: dict) -> None:
    stale = sorted({fp for scan in scans for fp in scan.fingerprints} - {fingerprint})
    if not stale:
        return
    old = None
    candidates = [MANIFEST] + [p.name for p in list_part_manifests(out).values()]
    for name in candidates:
        try:
            m = read_manifest(out, name)
        except ManifestError:
            continue
        if m["fingerprint"] in stale:
            old = m
            break
    what = (format_diff(diff_settings(old, new_manifest)) if old is not None else
            f"settings fingerprint {stale[0][:12]} vs {fingerprint[:12]} (no manifest left to name the settings)")
    files = sorted(scan.name for scan in scans if scan.fingerprints - {fingerprint})
    raise PipelineError(
        f"{out}: existing shards ({', '.join(files[:5])}{' ...' if len(files) > 5 else ''}) were made with "
        f"different settings: {what}. Use another --out, or --overwrite to delete them and start over.")


class _ManifestKeeper:
    """The run's manifest, rewritten (atomically) after every completed shard."""

    def __init__(self, out: Path, name: str, base: dict, scans: list[ShardScan], known_hashes: dict):
        self.out, self.name, self.base = out, name, base
        self.scans = list(scans)
        self.known_hashes = known_hashes  # {(name, bytes): sha256} from manifests already on disk
        self.hashes: dict[str, str] = {}
        self.frames_of: dict[str, int] = {}  # key -> frames, for clips written by this run
        self.actor_of: dict[str, str] = {}

    def current(self) -> dict:
        for sc in self.scans:
            if sc.name not in self.hashes:
                self.hashes[sc.name] = self.known_hashes.get((sc.name, sc.bytes)) or file_sha256(self.out / sc.name)
        return build_manifest(self.scans, self.hashes, self.base)

    def shard_completed(self, info: ShardInfo) -> None:
        split, index = parse_shard_name(info.name)
        self.scans.append(ShardScan(info.name, split, index, info.bytes, list(info.keys),
                                    sum(self.frames_of[k] for k in info.keys), {self.base["fingerprint"]},
                                    {self.actor_of[k] for k in info.keys}))
        self.hashes[info.name] = info.sha256
        self.write()

    def write(self) -> dict:
        manifest = self.current()
        write_manifest(self.out, manifest, self.name)
        return manifest


def _check_options(s: ShardSettings):
    """Everything checkable without touching the data: (part, preset config, input size)."""
    from float.config import get_preset
    from preprocess.encode import EncoderSetupError, check_weight_paths, resolve_audio_kind

    part = parse_part(s.part)
    if s.motion_ckpt is not None and s.float_ckpt is not None:
        raise PipelineError("--motion-ckpt and --float-ckpt both give the motion encoder: pass one")
    if s.motion_ckpt is not None and not Path(s.motion_ckpt).is_file():
        raise PipelineError(f"--motion-ckpt {s.motion_ckpt}: no such file")
    try:
        check_weight_paths(s.float_ckpt, s.wav2vec2, s.ser)  # first: the issue asks for this before any work
        resolve_audio_kind(s.audio_features, s.wav2vec2)
    except EncoderSetupError as e:
        raise PipelineError(str(e)) from None
    if s.crop not in ("auto", "none"):
        raise PipelineError(f"--crop must be auto or none, got {s.crop!r}")
    if s.shard_size_mb <= 0:
        raise PipelineError(f"--shard-size-mb must be positive, got {s.shard_size_mb}")
    if s.shard_samples is not None and s.shard_samples < 1:
        raise PipelineError(f"--shard-samples must be at least 1, got {s.shard_samples}")
    try:
        cfg = get_preset(s.preset)
    except ValueError as e:
        raise PipelineError(f"--preset: {e}") from None
    return part, cfg, s.input_size or cfg.input_size


def _describe_run(s: ShardSettings, cfg, input_size: int, encoder, split_of: dict, root: Path, kind: str) -> dict:
    """The manifest minus its splits: features, encoders, crop, settings and the fingerprint."""
    crop = _crop_info(s.crop)
    # What changes sample content or split membership; workers, batch size, shard size, part do not.
    content = {
        "format_version": FORMAT_VERSION, "fps": cfg.fps, "sampling_rate": cfg.sampling_rate,
        "input_size": input_size, "crop": crop, "audio_features": encoder.audio_kind,
        "motion_precision": encoder.motion_precision,
        "val_actors": sorted((a for a, sp in split_of.items() if sp == "val"), key=_actor_order),
        "test_actors": sorted((a for a, sp in split_of.items() if sp == "test"), key=_actor_order),
    }
    encoder_fps = encoder.fingerprints()
    settings = s.as_json() | {"input_size": input_size, "input_root": str(root), "input_kind": kind,
                              "audio_features": encoder.audio_kind,
                              "splits": {"val": content["val_actors"], "test": content["test_actors"]}}
    return {
        "format_version": FORMAT_VERSION, "created_by": CREATED_BY,
        "features": encoder.features_info(), "fps": cfg.fps, "sampling_rate": cfg.sampling_rate,
        "input_size": input_size, "encoders": encoder.encoders_info, "crop": crop, "settings": settings,
        "fingerprint_inputs": fingerprint_inputs(content, encoder_fps),
        "fingerprint": settings_fingerprint(content, encoder_fps),
    }


def _prepare_out_folder(out: Path, part, overwrite: bool, base: dict, log) -> tuple[list[ShardScan], dict]:
    """Apply --overwrite or discard stale .tmp files, scan the complete shards, refuse other
    settings. Returns (scans of every complete shard, {(name, bytes): sha256} already known)."""
    out.mkdir(parents=True, exist_ok=True)
    start, end = index_range(part)
    manifest_name, errors_name = output_names(part)
    owned = _owned_shard_files(out, start, end)
    if overwrite:
        for p in owned:
            p.unlink()
        for name in (manifest_name, errors_name):
            (out / name).unlink(missing_ok=True)
        if owned:
            log(f"--overwrite: deleted {len(owned)} shard file(s) in {out}")
    else:
        for tmp in (p for p in owned if p.name.endswith(TMP_SUFFIX)):
            log(f"discarding {tmp.name}: unfinished shard of an interrupted run; its clips are redone")
            tmp.unlink()
    # A run killed while writing its manifest leaves the temporary file (the manifest is rebuilt at the end);
    # "*.tmp" also matches the names writers before shards/files.py used.
    remove_stale_temporaries(out, manifest_name)
    for tmp in out.glob(f".{manifest_name}.*.tmp"):
        tmp.unlink()
    try:
        scans = [scan_shard(p) for p in list_shards(out)]
    except ShardError as e:
        raise PipelineError(f"{e}; move it away (or use --overwrite) and rerun") from None
    _refuse_if_different(out, scans, base["fingerprint"], base)
    known = {}
    for name in dict.fromkeys([MANIFEST, manifest_name]):
        try:
            old = read_manifest(out, name)
        except ManifestError:
            continue
        for entry in old["splits"].values():
            for sh in entry["shards"]:
                known[(sh["name"], sh["bytes"])] = sh["sha256"]
    return scans, known


def _write_clips(todo, s: ShardSettings, input_size: int, encoder, split_of: dict, writers: dict,
                 keeper: _ManifestKeeper, errors: list[dict], done: set = frozenset(),
                 crops=None) -> tuple[dict[str, int], int]:
    """Prepare (workers) -> encode -> write, in discovery order. Returns (written per split, frames).

    ``done``: clips already in latent shards (in ``todo`` only because ``crops`` lacks them)."""
    written = {split: 0 for split in SPLITS}
    frames_written = 0
    fingerprint, encoder_fps = keeper.base["fingerprint"], encoder.fingerprints()
    t0 = time.time()
    progress = _progress(len(todo), s.progress)
    try:
        for src, (prepared, error) in _prepared_in_order(todo, s.workers, input_size, s.crop, s.min_seconds):
            if error is not None:
                errors.append(error)
            else:
                split = split_of[src.actor]
                if crops is not None:
                    crops.add(split, prepared)  # the frames the encoder sees, JPEG'd in the same pass
            if error is None and src.clip_id not in done:
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
    from preprocess.discover import discover
    from preprocess.encode import EncoderSetupError, build_encoder

    t0 = time.time()
    if s.from_crops is not None:
        from preprocess.from_crops import run_from_crops

        return run_from_crops(s, log)
    part, cfg, input_size = _check_options(s)
    root, kind = resolve_input(s, log)
    try:
        sources, rejected = discover(root, kind, tuple(s.vocal_channels))
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise PipelineError(str(e)) from None
    # In part runs each part reports the name rejections that hash to it, so merged errors hold each once.
    errors = [{"file": r.path, "reason": r.reason} for r in rejected
              if part is None or part_of(r.path, part[1]) == part[0]]
    out = Path(s.out)
    manifest_name, errors_name = output_names(part)
    if not sources:
        out.mkdir(parents=True, exist_ok=True)
        _write_errors(out / errors_name, errors)
        example = f"; e.g. {rejected[0].path}: {rejected[0].reason}" if rejected else ""
        raise PipelineError(f"{root}: no usable clips found ({len(rejected)} file(s) rejected, reasons in "
                            f"{out / errors_name}{example})")
    split_of = assign_splits([c.actor for c in sources], s.val_actors, s.test_actors, s.val_ids, s.test_ids, warn=log)
    try:
        encoder = build_encoder(input_size, s.audio_features, s.wav2vec2, s.ser, s.float_ckpt, s.device,
                                s.seed, s.batch_size, log=log, ae_width=cfg.ae_width, motion_ckpt=s.motion_ckpt)
    except EncoderSetupError as e:
        raise PipelineError(str(e)) from None
    base = _describe_run(s, cfg, input_size, encoder, split_of, root, kind)
    scans, known_hashes = _prepare_out_folder(out, part, s.overwrite, base, log)

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

    start, end = index_range(part)
    keeper = _ManifestKeeper(out, manifest_name, base, [sc for sc in scans if start <= sc.index < end], known_hashes)
    max_bytes = int(s.shard_size_mb * 1024 * 1024)
    writers = {}
    for split in SPLITS:
        used = [sc.index for sc in keeper.scans if sc.split == split]
        writers[split] = ShardWriter(out, split, max_bytes, s.shard_samples, start_index=max(used, default=start - 1) + 1,
                                     end_index=end, on_complete=keeper.shard_completed)
    written, frames_written = _write_clips(todo, s, input_size, encoder, split_of, writers, keeper, errors,
                                           done, crops)

    manifest = keeper.write()
    if crops is not None:
        log(crops.summary(crops.finish()))
    errors_file = out / errors_name
    _write_errors(errors_file, errors)
    present = {split: manifest["splits"][split]["clips"] for split in SPLITS}
    summary = RunSummary(out, written, present, frames_written, len(errors), errors_file,
                         out / manifest_name, time.time() - t0,
                         crops.folder / manifest_name if crops is not None else None)
    log(format_summary(summary, manifest))
    return summary


def _write_errors(path: Path, errors: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors))


class _NoProgress:
    def update(self, n=1): pass
    def set_postfix(self, **kw): pass
    def close(self): pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", desc="shards", file=sys.stderr, dynamic_ncols=True)


def format_summary(summary: RunSummary, manifest: dict) -> str:
    lines = [f"done in {summary.seconds:.1f} s: {sum(summary.written.values())} clip(s) written "
             f"({summary.frames_written} frames), {summary.rejected} rejected -> {summary.errors_file}"]
    for split in SPLITS:
        e = manifest["splits"][split]
        lines.append(f"  {split:<5} {e['clips']:>6} clips {e['frames']:>8} frames {len(e['shards']):>4} shards"
                     f"  (+{summary.written[split]} this run)")
    lines.append(f"manifest: {summary.manifest_file}")
    if summary.total_present == 0:
        lines.append("ERROR: no clip could be written; see the reasons in " + str(summary.errors_file))
    return "\n".join(lines)


def merge_part_outputs(out: Path, allow_missing: bool = False) -> dict:
    """``floatctl shards --merge``: manifest.json from the part manifests, errors.jsonl from the
    part error files. Raises ManifestError naming the file on any inconsistency."""
    out = Path(out)
    manifest = merge_parts(out, allow_missing=allow_missing)
    lines = []
    for p in sorted(out.glob("errors.part-*-of-*.jsonl")):
        lines.extend(line for line in p.read_text().splitlines() if line.strip())
    atomic_write_text(out / ERRORS, "".join(line + "\n" for line in lines))
    return manifest
