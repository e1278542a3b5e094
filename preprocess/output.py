"""A run's output folder: its file names, preparing it (``--overwrite``, stale temporaries,
refusing shards made with other settings), the manifest rewritten after every completed
shard, the per-split shard writers, ``errors.jsonl`` and the merge of part outputs.

The latent folder (preprocess/pipeline.py, preprocess/from_crops.py) and the crop folder
(preprocess/crop_stage.py) are prepared, kept and written by the same code.
"""
from __future__ import annotations

import json
from pathlib import Path

from float.config import FPS
from preprocess.errors import PipelineError
from preprocess.splits import index_range
from shards.errors import ManifestError, ShardError
from shards.files import atomic_write_text, file_sha256, remove_stale_temporaries
from shards.format import ERRORS, MANIFEST, SPLITS
from shards.inspect import ShardScan, list_shards, list_tmp_shards, scan_shard
from shards.manifest import (build_manifest, diff_settings, format_diff, list_part_manifests, merge_parts,
                             part_manifest_name, read_manifest, write_manifest)
from shards.sample import encode_sample, sample_meta
from shards.writer import TMP_SUFFIX, ShardInfo, ShardWriter, parse_shard_name


def output_names(part: tuple[int, int] | None) -> tuple[str, str]:
    """(manifest, errors) file names of a run: the shared ones, or the part's own."""
    if part is None:
        return MANIFEST, ERRORS
    i, n = part
    return part_manifest_name(i, n), f"errors.part-{i}-of-{n}.jsonl"


def owned_shard_files(out: Path, start: int, end: int) -> list[Path]:
    """Complete and temporary shards whose index lies in this run's range [start, end)."""
    mine = [p for p in list_shards(out) if start <= parse_shard_name(p.name)[1] < end]
    tmps = [p for p in list_tmp_shards(out) if start <= parse_shard_name(p.name[:-len(TMP_SUFFIX)])[1] < end]
    return mine + tmps


def refuse_if_different(out: Path, scans, fingerprint: str, new_manifest: dict) -> None:
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


def prepare_out_folder(out: Path, part, overwrite: bool, base: dict, log) -> tuple[list[ShardScan], dict]:
    """Apply --overwrite or discard stale .tmp files, scan the complete shards, refuse other
    settings. Returns (scans of every complete shard, {(name, bytes): sha256} already known)."""
    out.mkdir(parents=True, exist_ok=True)
    start, end = index_range(part)
    manifest_name, errors_name = output_names(part)
    owned = owned_shard_files(out, start, end)
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
    refuse_if_different(out, scans, base["fingerprint"], base)
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


class ManifestKeeper:
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


def open_writers(out: Path, part, base: dict, scans: list[ShardScan], known_hashes: dict,
                 shard_size_mb: float, shard_samples: int | None) -> tuple[ManifestKeeper, dict[str, ShardWriter]]:
    """The manifest keeper of a prepared folder and one shard writer per split. Each writer
    takes the next free index of the run's range and tells the keeper of every completed shard."""
    start, end = index_range(part)
    keeper = ManifestKeeper(out, output_names(part)[0], base, [sc for sc in scans if start <= sc.index < end],
                            known_hashes)
    max_bytes = int(shard_size_mb * 1024 * 1024)
    writers = {}
    for split in SPLITS:
        used = [sc.index for sc in keeper.scans if sc.split == split]
        writers[split] = ShardWriter(out, split, max_bytes, shard_samples, start_index=max(used, default=start - 1) + 1,
                                     end_index=end, on_complete=keeper.shard_completed)
    return keeper, writers


def write_errors(path: Path, errors: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors))


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


def sample_members(key: str, split: str, prepared, encoded, settings_fp: str, encoder_fps: dict) -> dict[str, bytes]:
    """The shard members of one prepared and encoded clip (the codec is shards/sample.py)."""
    src = prepared.source
    extra = {"segment": prepared.segment} if getattr(prepared, "segment", None) else {}
    meta = sample_meta(
        key, split, FPS, len(prepared.frames), settings_fp,
        actor=src.actor, source={"video": src.video, "audio": src.audio}, sha256=prepared.sha256,
        source_fps=round(float(prepared.source_fps), 6),
        crop=prepared.box.as_dict() if prepared.box is not None else None,
        emotion=src.emotion, fields=src.fields, encoders=encoder_fps, **extra)
    return encode_sample(meta, encoded.motion, encoded.lambdas, encoded.audio, src.emotion, prepared.frames[0],
                         encoded.emotion_probs)
