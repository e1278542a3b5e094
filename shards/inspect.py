"""Read shards back: a cheap index scan (for resuming) and a full validation against
the manifest (``floatctl inspect``).

The full check reads every member of every sample: member set, shapes, dtypes,
finite values, frame counts agreeing across motion / lambdas / audio / meta,
one split per actor, unique keys, and each shard's sample count, size and sha256
against the manifest.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from shards.crops import CROPS_KIND, check_crop_sample, manifest_kind
from shards.files import file_sha256
from shards.format import MANIFEST, META, SPLITS
from shards.errors import ManifestError, ShardError
from shards.manifest import read_manifest, validate_manifest
from shards.remote import is_url, join_location, read_json_location, read_location
from shards.sample import check_sample
from shards.tar import iter_tar_samples
from shards.writer import TMP_SUFFIX, parse_shard_name

MAX_LISTED_PROBLEMS = 50

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


def iter_samples(path: Path, only: tuple[str, ...] | None = None):
    """Yield (key, {suffix: bytes}) per sample, in tar order, strictly (``only`` limits the members read)."""
    return iter_tar_samples(path, read=only, strict=True)


def scan_shard(path: Path) -> ShardScan:
    """Keys, frame total, actors and settings fingerprints of a complete shard (reads meta.json only)."""
    parsed = parse_shard_name(path.name)
    if parsed is None:
        raise ShardError(f"{path}: not a shard name (expected split-NNNNNN.tar)")
    scan = ShardScan(path.name, parsed[0], parsed[1], path.stat().st_size)
    for key, members in iter_samples(path, only=(META,)):
        if META not in members:
            raise ShardError(f"{path}: sample {key!r} has no {META}")
        try:
            meta = json.loads(members[META])
        except ValueError as e:
            raise ShardError(f"{path}: sample {key!r} has an unreadable {META} ({e})") from e
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


@contextlib.contextmanager
def _readable(root: str, name: str):
    """A local path to shard ``name`` of ``root``: the file itself, or a temporary copy of a URL's bytes
    (read through shards/remote.py, so the same handlers and retries as training apply)."""
    if not is_url(root):
        yield Path(root) / name
        return
    with tempfile.TemporaryDirectory(prefix="inspect-") as tmp:
        path = Path(tmp) / name
        try:
            path.write_bytes(read_location(join_location(root, name)))
        except OSError:
            pass  # reported as missing
        yield path


def _check_shard(path: Path, shown, shard: dict, split: str, manifest: dict, check_hash: bool,
                 stats: SplitStats, problems: list[str], seen: dict) -> None:
    """Size, sha256, sample count and every sample of one listed shard (``shown`` names it in messages)."""
    name = shard["name"]
    if not path.is_file():
        problems.append(f"{shown}: listed in the manifest but missing")
        return
    check = check_crop_sample if manifest_kind(manifest) == CROPS_KIND else check_sample
    size = path.stat().st_size
    stats.bytes += size
    if size != shard["bytes"]:
        problems.append(f"{shown}: {size} bytes, manifest says {shard['bytes']}")
    elif check_hash and file_sha256(path) != shard["sha256"]:
        problems.append(f"{shown}: sha256 differs from the manifest (file changed or corrupt)")
    samples = 0
    try:
        for key, members in iter_samples(path):
            samples += 1
            where = f"{name}:{key}"
            if key in seen["keys"]:
                problems.append(f"{where}: key also in {seen['keys'][key]}")
            seen["keys"][key] = name
            sample_problems, meta = check(key, members, manifest, split, where)
            problems.extend(sample_problems)
            stats.frames += int(meta.get("n_frames", 0) or 0)
            actor = meta.get("actor")
            if actor is not None:
                other = seen["actors"].setdefault(str(actor), split)
                if other != split:
                    problems.append(f"{where}: actor {actor} appears in both {other} and {split}")
    except ShardError as e:
        problems.append(str(e))
    stats.clips += samples
    if samples != shard["samples"]:
        problems.append(f"{shown}: {samples} samples, manifest says {shard['samples']}")


def inspect_shards(folder: Path | str, manifest_name: str = MANIFEST, check_hash: bool = True) -> InspectReport:
    """Validate every shard listed by the manifest; collect problems instead of stopping at the first.

    ``folder`` may be the URL of a shard folder (http/https, s3, gs): each shard is then fetched once."""
    remote = is_url(str(folder))
    root = str(folder).rstrip("/") if remote else str(folder)
    folder = folder if remote else Path(folder)
    report = InspectReport(folder, None)
    if not remote and not folder.is_dir():
        report.problems.append(f"{folder}: no such folder")
        return report
    try:
        if remote:
            where = join_location(root, manifest_name)
            manifest = read_json_location(where)
            invalid = validate_manifest(manifest) if isinstance(manifest, dict) else ["not a JSON object"]
            if invalid:
                raise ManifestError(f"{where}: invalid manifest: " + "; ".join(invalid))
        else:
            manifest = read_manifest(folder, manifest_name)
    except (ManifestError, OSError, ValueError) as e:
        report.problems.append(str(e))
        return report
    report.manifest = manifest
    problems = report.problems
    seen = {"keys": {}, "actors": {}}  # key -> shard, actor -> split, across all shards
    listed = set()
    for split in SPLITS:
        entry = manifest["splits"].get(split)
        stats = report.splits.setdefault(split, SplitStats())
        if entry is None:
            continue
        for shard in entry["shards"]:
            listed.add(shard["name"])
            stats.shards += 1
            with _readable(root, shard["name"]) as path:
                shown = join_location(root, shard["name"]) if remote else path
                _check_shard(path, shown, shard, split, manifest, check_hash, stats, problems, seen)
        if stats.clips != entry["clips"]:
            problems.append(f"split {split}: {stats.clips} clips in its shards, manifest says {entry['clips']}")
        if stats.frames != entry["frames"]:
            problems.append(f"split {split}: {stats.frames} frames in its shards, manifest says {entry['frames']}")
    if not any(stats.clips for stats in report.splits.values()):
        problems.append(f"{folder / manifest_name}: lists no samples at all")
    if manifest_name == MANIFEST and not remote:
        for path in list_shards(folder):
            if path.name not in listed:
                problems.append(f"{path}: shard in the folder but not in {manifest_name} "
                                "(an interrupted run? rerun `floatctl shards` to rebuild the manifest)")
    for tmp in ([] if remote else list_tmp_shards(folder)):
        report.notes.append(f"{tmp.name}: unfinished shard from an interrupted run (ignored; the next run discards it)")
    return report


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _crop_summary(m: dict, report: InspectReport, lines: list[str]) -> None:
    """The crop-shard part of the report: clips, frames, size and bytes per frame."""
    frames = m["features"]["frames"]
    lines.append(f"kind: crop shards (stage 1)  fingerprint {m['fingerprint'][:16]}  format {m['format_version']}")
    lines.append(f"crops: {m['input_size']}x{m['input_size']} px {frames.get('format')} quality "
                 f"{frames.get('quality')}, {m['fps']} fps; audio {m['features']['wave']['dtype']} "
                 f"{m['sampling_rate']} Hz")
    lines.append(f"{'split':<6} {'clips':>7} {'frames':>9} {'shards':>7} {'size':>11} {'bytes/frame':>12}")
    for split, s in report.splits.items():
        per = f"{s.bytes / s.frames:.0f}" if s.frames else "-"
        lines.append(f"{split:<6} {s.clips:>7} {s.frames:>9} {s.shards:>7} {_mb(s.bytes):>11} {per:>12}")
    crop = m["crop"]
    lines.append(f"crop: {crop.get('mode')} (scale {crop.get('scale')}, detector {crop.get('detector')})")


def format_report(report: InspectReport) -> str:
    """Human summary: per-split table, features, encoders (random vs real), then the problems."""
    lines = [f"shards: {report.folder}"]
    m = report.manifest
    if m is not None and manifest_kind(m) == CROPS_KIND:
        _crop_summary(m, report, lines)
    elif m is not None:
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
