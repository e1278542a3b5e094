"""Read shards back: a cheap index scan (for resuming) and a full validation against
the manifest (``floatctl inspect``).

The full check reads every member of every sample: member set, shapes, dtypes,
finite values, frame counts agreeing across motion / lambdas / audio / meta,
one split per actor, unique keys, and each shard's sample count, size and sha256
against the manifest.
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shards.format import (AUDIO, EMOTION, EMOTION_PROBS, LAMBDAS, MANIFEST, META, MOTION, REFERENCE,
                           SPLITS, decode_npy)
from shards.manifest import ManifestError, read_manifest
from shards.writer import TMP_SUFFIX, parse_shard_name

REQUIRED_MEMBERS = (MOTION, LAMBDAS, AUDIO, EMOTION, REFERENCE, META)
REQUIRED_META = ("key", "actor", "split", "n_frames", "fps", "sha256", "source", "settings_fingerprint")
MAX_LISTED_PROBLEMS = 50


class ShardReadError(ValueError):
    """A shard that cannot be read as a tar of samples; the message names the file."""


@dataclass
class ShardScan:
    """What resuming needs to know about one complete shard."""
    name: str
    split: str
    index: int
    bytes: int
    keys: list[str] = field(default_factory=list)
    frames: int = 0
    fingerprints: set[str] = field(default_factory=set)  # settings fingerprints found in meta.json
    actors: set[str] = field(default_factory=set)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def iter_samples(path: Path, only: tuple[str, ...] | None = None):
    """Yield (key, {suffix: bytes}) per sample, in tar order. ``only`` limits the members read."""
    try:
        with tarfile.open(path, "r:") as tar:
            key, members = None, {}
            for info in tar:
                if not info.isfile():
                    raise ShardReadError(f"{path}: member {info.name!r} is not a regular file")
                sample_key, dot, suffix = info.name.partition(".")
                if not dot or "/" in info.name:
                    raise ShardReadError(f"{path}: member {info.name!r} is not named KEY.SUFFIX")
                if sample_key != key:
                    if key is not None:
                        yield key, members
                    key, members = sample_key, {}
                if suffix in members:
                    raise ShardReadError(f"{path}: sample {sample_key!r} has {suffix!r} twice")
                if only is None or suffix in only:
                    members[suffix] = tar.extractfile(info).read()
                else:
                    members[suffix] = b""
            if key is not None:
                yield key, members
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardReadError(f"{path}: unreadable shard ({e})") from e


def scan_shard(path: Path) -> ShardScan:
    """Keys, frame total, actors and settings fingerprints of a complete shard (reads meta.json only)."""
    parsed = parse_shard_name(path.name)
    if parsed is None:
        raise ShardReadError(f"{path}: not a shard name (expected split-NNNNNN.tar)")
    scan = ShardScan(path.name, parsed[0], parsed[1], path.stat().st_size)
    for key, members in iter_samples(path, only=(META,)):
        if META not in members:
            raise ShardReadError(f"{path}: sample {key!r} has no {META}")
        try:
            meta = json.loads(members[META])
        except ValueError as e:
            raise ShardReadError(f"{path}: sample {key!r} has an unreadable {META} ({e})") from e
        scan.keys.append(key)
        scan.frames += int(meta.get("n_frames", 0))
        scan.fingerprints.add(str(meta.get("settings_fingerprint")))
        if "actor" in meta:
            scan.actors.add(str(meta["actor"]))
    return scan


def list_shards(folder: Path) -> list[Path]:
    """Complete shards (``split-NNNNNN.tar``) in the folder, sorted by name."""
    return sorted(p for p in Path(folder).glob("*.tar") if parse_shard_name(p.name))


def list_tmp_shards(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.tar" + TMP_SUFFIX) if parse_shard_name(p.name[:-len(TMP_SUFFIX)]))


# --------------------------------------------------------------------------- full validation
@dataclass
class SplitStats:
    clips: int = 0
    frames: int = 0
    shards: int = 0
    bytes: int = 0


@dataclass
class InspectReport:
    folder: Path
    manifest: dict | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    splits: dict[str, SplitStats] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_array(name: str, data: bytes, dtype: str, ndim: int, width: int | None, where: str,
                 problems: list[str]) -> np.ndarray | None:
    try:
        arr = decode_npy(data)
    except Exception as e:  # np.load raises several kinds on garbage
        problems.append(f"{where}: {name} is not a readable .npy ({type(e).__name__}: {e})")
        return None
    if arr.dtype != np.dtype(dtype):
        problems.append(f"{where}: {name} has dtype {arr.dtype}, manifest says {dtype}")
    if arr.ndim != ndim or (width is not None and arr.shape[-1] != width):
        want = f"(T, {width})" if ndim == 2 else f"({width},)"
        problems.append(f"{where}: {name} has shape {arr.shape}, expected {want}")
        return None
    if not np.isfinite(arr.astype(np.float32)).all():
        problems.append(f"{where}: {name} holds NaN or infinite values")
    return arr


def check_sample(key: str, members: dict[str, bytes], manifest: dict, split: str, where: str) -> tuple[list[str], dict]:
    """Problems of one sample and its parsed meta ({} when unreadable)."""
    problems: list[str] = []
    feats = manifest["features"]
    want_probs = bool(feats["emotion"].get("probs"))
    required = set(REQUIRED_MEMBERS) | ({EMOTION_PROBS} if want_probs else set())
    missing = sorted(required - set(members))
    extra = sorted(set(members) - required)
    if missing:
        problems.append(f"{where}: missing members {missing}")
    if extra:
        problems.append(f"{where}: unexpected members {extra}")
    meta: dict = {}
    if META in members:
        try:
            meta = json.loads(members[META])
        except ValueError as e:
            problems.append(f"{where}: {META} is not JSON ({e})")
        else:
            absent = [k for k in REQUIRED_META if k not in meta]
            if absent:
                problems.append(f"{where}: {META} lacks {absent}")
            if meta.get("key", key) != key:
                problems.append(f"{where}: {META} key {meta.get('key')!r} differs from the sample key")
            if meta.get("split", split) != split:
                problems.append(f"{where}: {META} says split {meta.get('split')!r}, shard is {split!r}")
            fp = meta.get("settings_fingerprint")
            if fp is not None and fp != manifest["fingerprint"]:
                problems.append(f"{where}: written with settings fingerprint {fp[:12]}, manifest has "
                                f"{manifest['fingerprint'][:12]}")
    lengths = {}
    for name, feat, ndim in ((MOTION, "motion", 2), (LAMBDAS, "lambdas", 2), (AUDIO, "audio", 2)):
        if name in members:
            spec = feats[feat]
            arr = _check_array(name, members[name], spec.get("dtype", "float32" if feat != "audio" else "float16"),
                               ndim, spec["dim"], where, problems)
            if arr is not None:
                lengths[name] = arr.shape[0]
    for name in (EMOTION, EMOTION_PROBS):
        if name in members:
            arr = _check_array(name, members[name], "float32", 1, feats["emotion"]["dim"], where, problems)
            if arr is None:
                continue
            if name == EMOTION and not (set(np.unique(arr)) <= {0.0, 1.0} and arr.sum() <= 1):
                problems.append(f"{where}: {EMOTION} is not a one-hot (or all-zero) vector: {arr.tolist()}")
            if name == EMOTION_PROBS and (arr.min() < 0 or abs(float(arr.sum()) - 1) > 1e-3):
                problems.append(f"{where}: {EMOTION_PROBS} is not a probability vector (sum {arr.sum():.4f})")
    if lengths:
        if len(set(lengths.values())) > 1:
            problems.append(f"{where}: frame counts disagree: {lengths}")
        t = next(iter(lengths.values()))
        if t < 1:
            problems.append(f"{where}: no frames")
        if meta and meta.get("n_frames") not in (None, t):
            problems.append(f"{where}: {META} n_frames {meta.get('n_frames')} but arrays have {t} frames")
        meta.setdefault("n_frames", t)
    if REFERENCE in members:
        import cv2

        img = cv2.imdecode(np.frombuffer(members[REFERENCE], np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            problems.append(f"{where}: {REFERENCE} is not a decodable JPEG")
    return problems, meta


def inspect_shards(folder: Path, manifest_name: str = MANIFEST, check_hash: bool = True) -> InspectReport:
    """Validate every shard listed by the manifest; collect problems instead of stopping at the first."""
    folder = Path(folder)
    report = InspectReport(folder, None)
    if not folder.is_dir():
        report.problems.append(f"{folder}: no such folder")
        return report
    try:
        manifest = read_manifest(folder, manifest_name)
    except ManifestError as e:
        report.problems.append(str(e))
        return report
    report.manifest = manifest
    problems = report.problems
    actor_split: dict[str, str] = {}
    keys_seen: dict[str, str] = {}
    listed = set()
    for split in SPLITS:
        entry = manifest["splits"].get(split)
        stats = report.splits.setdefault(split, SplitStats())
        if entry is None:
            continue
        for shard in entry["shards"]:
            name = shard["name"]
            listed.add(name)
            path = folder / name
            stats.shards += 1
            if not path.is_file():
                problems.append(f"{path}: listed in the manifest but missing")
                continue
            size = path.stat().st_size
            stats.bytes += size
            if size != shard["bytes"]:
                problems.append(f"{path}: {size} bytes, manifest says {shard['bytes']}")
            elif check_hash and file_sha256(path) != shard["sha256"]:
                problems.append(f"{path}: sha256 differs from the manifest (file changed or corrupt)")
            samples = 0
            try:
                for key, members in iter_samples(path):
                    samples += 1
                    where = f"{name}:{key}"
                    if key in keys_seen:
                        problems.append(f"{where}: key also in {keys_seen[key]}")
                    keys_seen[key] = name
                    sample_problems, meta = check_sample(key, members, manifest, split, where)
                    problems.extend(sample_problems)
                    stats.frames += int(meta.get("n_frames", 0) or 0)
                    actor = meta.get("actor")
                    if actor is not None:
                        other = actor_split.setdefault(str(actor), split)
                        if other != split:
                            problems.append(f"{where}: actor {actor} appears in both {other} and {split}")
            except ShardReadError as e:
                problems.append(str(e))
            stats.clips += samples
            if samples != shard["samples"]:
                problems.append(f"{path}: {samples} samples, manifest says {shard['samples']}")
        if stats.clips != entry["clips"]:
            problems.append(f"split {split}: {stats.clips} clips in its shards, manifest says {entry['clips']}")
        if stats.frames != entry["frames"]:
            problems.append(f"split {split}: {stats.frames} frames in its shards, manifest says {entry['frames']}")
    if not any(stats.clips for stats in report.splits.values()):
        problems.append(f"{folder / manifest_name}: lists no samples at all")
    if manifest_name == MANIFEST:
        for path in list_shards(folder):
            if path.name not in listed:
                problems.append(f"{path}: shard in the folder but not in {manifest_name} "
                                "(an interrupted run? rerun `floatctl shards` to rebuild the manifest)")
    for tmp in list_tmp_shards(folder):
        report.notes.append(f"{tmp.name}: unfinished shard from an interrupted run (ignored; the next run discards it)")
    return report


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def format_report(report: InspectReport) -> str:
    """Human summary: per-split table, features, encoders (random vs real), then the problems."""
    lines = [f"shards: {report.folder}"]
    m = report.manifest
    if m is not None:
        lines.append(f"fingerprint {m['fingerprint'][:16]}  format {m['format_version']}  "
                     f"input {m['input_size']}px  {m['fps']} fps  {m['sampling_rate']} Hz")
        lines.append(f"{'split':<6} {'clips':>7} {'frames':>9} {'shards':>7} {'size':>11}")
        for split, s in report.splits.items():
            lines.append(f"{split:<6} {s.clips:>7} {s.frames:>9} {s.shards:>7} {_mb(s.bytes):>11}")
        f = m["features"]
        audio = f["audio"]
        lines.append(
            f"features: motion ({f['motion']['dim']}) {f['motion'].get('dtype', '?')}, "
            f"lambdas ({f['lambdas']['dim']}) {f['lambdas'].get('dtype', '?')}, "
            f"audio ({audio['dim']}) {audio.get('dtype', '?')} {audio.get('kind', '?')}"
            + (f" layers={audio['layers']}" if audio.get("layers") else "")
            + f", emotion ({f['emotion']['dim']}) one-hot" + (" + SER probs" if f["emotion"].get("probs") else ""))
        for name, enc in m["encoders"].items():
            if enc is None:
                lines.append(f"encoder {name}: none")
                continue
            label = ("RANDOM weights" if enc.get("random") else
                     "no weights" if enc.get("kind") == "mel" else "real weights")
            lines.append(f"encoder {name}: {label} ({enc.get('source')}), fingerprint {enc.get('fingerprint')}")
        crop = m["crop"]
        lines.append(f"crop: {crop.get('mode')} (scale {crop.get('scale')}, detector {crop.get('detector')})")
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.ok:
        lines.append("OK: shards match the manifest")
    else:
        lines.append(f"INVALID: {len(report.problems)} problem(s):")
        lines.extend(f"  - {p}" for p in report.problems[:MAX_LISTED_PROBLEMS])
        if len(report.problems) > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {len(report.problems) - MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)
