"""Read, write, validate and merge ``manifest.json``; settings fingerprints.

The manifest is the shard folder's table of contents (see the contract in
shards/format.py and the issue): counts per split, the shard list with sizes
and sha256, feature widths and dtypes, the encoders used and the settings.

``fingerprint`` is a sha256 over the settings that change sample content (see
``settings_fingerprint``) plus the encoder fingerprints: two runs with the same
fingerprint produce interchangeable samples, which is what resuming and the
trainer's compatibility check rely on.

Parts (``--part i/N``) each write ``manifest.part-i-of-N.json``; ``merge_parts``
combines them into ``manifest.json`` once every part's shards sit in one folder.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from shards.errors import ManifestError
from shards.files import atomic_write_text
from shards.format import FORMAT_VERSION, MANIFEST, SPLITS

CREATED_BY = "floatctl shards"
_PART_RE = re.compile(r"^manifest\.part-(\d+)-of-(\d+)\.json$")
REQUIRED_KEYS = ("format_version", "created_by", "splits", "features", "fps", "sampling_rate",
                 "input_size", "encoders", "crop", "settings", "fingerprint")


def part_manifest_name(part: int, parts: int) -> str:
    return f"manifest.part-{part}-of-{parts}.json"


def settings_fingerprint(content_settings: dict, encoder_fingerprints: dict) -> str:
    """sha256 over the content-affecting settings and the encoders' fingerprints."""
    blob = json.dumps({"settings": content_settings, "encoders": encoder_fingerprints},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(folder: Path, name: str = MANIFEST) -> dict:
    """Load and structurally validate ``folder/name``; ManifestError naming the file otherwise."""
    path = Path(folder) / name
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (run `floatctl shards` to write the shards, "
                            "or `floatctl shards --merge` to combine part manifests)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not a readable JSON manifest ({e})") from e
    problems = validate_manifest(manifest)
    if problems:
        raise ManifestError(f"{path}: invalid manifest: " + "; ".join(problems))
    return manifest


def write_manifest(folder: Path, manifest: dict, name: str = MANIFEST) -> Path:
    """Write atomically (temporary file, fsync, rename): readers never see half a manifest."""
    problems = validate_manifest(manifest)
    if problems:
        raise ManifestError(f"refusing to write invalid manifest {Path(folder) / name}: " + "; ".join(problems))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / name, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder / name


def validate_manifest(manifest: dict) -> list[str]:
    """Structural problems (missing keys, counts that do not add up); empty when fine."""
    if not isinstance(manifest, dict):
        return ["manifest is not a JSON object"]
    problems = [f"missing key {k!r}" for k in REQUIRED_KEYS if k not in manifest]
    if problems:
        return problems
    if manifest["format_version"] != FORMAT_VERSION:
        problems.append(f"format_version {manifest['format_version']} is not the supported {FORMAT_VERSION}")
    splits = manifest["splits"]
    if not isinstance(splits, dict) or set(splits) - set(SPLITS):
        return problems + [f"splits must be a subset of {SPLITS}, got {sorted(splits) if isinstance(splits, dict) else splits}"]
    names = set()
    for split, entry in splits.items():
        for k in ("clips", "frames", "shards"):
            if k not in entry:
                problems.append(f"split {split!r} lacks {k!r}")
        if problems:
            continue
        total = 0
        for shard in entry["shards"]:
            missing = [k for k in ("name", "samples", "bytes", "sha256") if k not in shard]
            if missing:
                problems.append(f"split {split!r}: shard entry {shard} lacks {missing}")
                continue
            if not shard["name"].startswith(split + "-"):
                problems.append(f"shard {shard['name']} listed under split {split!r}")
            if shard["name"] in names:
                problems.append(f"shard {shard['name']} listed twice")
            names.add(shard["name"])
            total += shard["samples"]
        if total != entry["clips"]:
            problems.append(f"split {split!r}: shards hold {total} samples but clips says {entry['clips']}")
    # Crop shards (kind "crops", shards/crops.py) store frames and audio, not feature widths.
    for k in ("motion", "lambdas", "audio", "emotion") if manifest.get("kind") != "crops" else ():
        if k not in manifest["features"] or "dim" not in manifest["features"][k]:
            problems.append(f"features.{k}.dim missing")
    inputs = manifest.get("fingerprint_inputs")
    if inputs is not None and settings_fingerprint(inputs.get("settings", {}), inputs.get("encoders", {})) \
            != manifest["fingerprint"]:
        problems.append("fingerprint does not match fingerprint_inputs (edited by hand?)")
    return problems


def build_manifest(scans, shard_hashes: dict[str, str], base: dict) -> dict:
    """``base`` (features, encoders, settings...) plus the splits section from shard scans
    (shards.inspect.ShardScan: name, split, keys, frames, bytes), shards in name order."""
    manifest = dict(base)
    manifest["splits"] = {}
    for split in SPLITS:
        mine = sorted((s for s in scans if s.split == split), key=lambda s: s.name)
        manifest["splits"][split] = {
            "clips": sum(len(s.keys) for s in mine),
            "frames": sum(s.frames for s in mine),
            "shards": [{"name": s.name, "samples": len(s.keys), "bytes": s.bytes, "sha256": shard_hashes[s.name]}
                       for s in mine],
        }
    return manifest


def fingerprint_inputs(content_settings: dict, encoder_fingerprints: dict) -> dict:
    """What the fingerprint hashes, stored in the manifest so differences can be named."""
    return {"settings": dict(content_settings), "encoders": dict(encoder_fingerprints)}


def diff_settings(old: dict, new: dict) -> dict:
    """{setting: (old, new)} for every content setting or encoder fingerprint that differs.

    ``old`` / ``new`` are manifests (or anything with a ``fingerprint_inputs`` entry).
    """
    out = {}
    a_all, b_all = old.get("fingerprint_inputs") or {}, new.get("fingerprint_inputs") or {}
    for section, label in (("settings", "{}"), ("encoders", "{} encoder")):
        a, b = a_all.get(section) or {}, b_all.get(section) or {}
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out[label.format(k)] = (a.get(k, "<unset>"), b.get(k, "<unset>"))
    return out


def format_diff(diffs: dict) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diffs.items()) or "(no recorded difference)"


def list_part_manifests(folder: Path) -> dict[tuple[int, int], Path]:
    """{(i, N): path} for every ``manifest.part-i-of-N.json`` in the folder."""
    found = {}
    for p in sorted(Path(folder).glob("manifest.part-*-of-*.json")):
        m = _PART_RE.match(p.name)
        if m:
            found[(int(m[1]), int(m[2]))] = p
    return found


def merge_parts(folder: Path, allow_missing: bool = False) -> dict:
    """Combine every part manifest in ``folder`` into ``manifest.json`` and return it.

    All parts must share one fingerprint and one N, and (unless ``allow_missing``)
    every part 1..N must be present: a merge of an unfinished run would
    otherwise look complete to the trainer.
    """
    folder = Path(folder)
    parts = list_part_manifests(folder)
    if not parts:
        raise ManifestError(f"{folder}: no manifest.part-i-of-N.json files to merge")
    ns = {n for (_, n) in parts}
    if len(ns) != 1:
        raise ManifestError(f"{folder}: part manifests from different splittings: N in {sorted(ns)}")
    n = ns.pop()
    missing = sorted(set(range(1, n + 1)) - {i for (i, _) in parts})
    if missing and not allow_missing:
        raise ManifestError(f"{folder}: parts {missing} of {n} have no manifest yet; finish them "
                            "(or pass allow_missing) before merging")
    loaded = {key: read_manifest(folder, path.name) for key, path in sorted(parts.items())}
    first_key = min(loaded)
    base = loaded[first_key]
    for key, m in loaded.items():
        if m["fingerprint"] != base["fingerprint"]:
            raise ManifestError(
                f"{folder / parts[key].name}: settings differ from {parts[first_key].name}: "
                + format_diff(diff_settings(base, m)))
        for k in ("audio", "motion", "lambdas", "frames", "wave"):
            if m["features"].get(k) != base["features"].get(k):
                raise ManifestError(f"{folder / parts[key].name}: features.{k} differ between parts")
    merged = {k: v for k, v in base.items() if k != "splits"}
    merged["splits"] = {}
    for split in SPLITS:
        shards = sorted((s for m in loaded.values() for s in m["splits"].get(split, {}).get("shards", [])),
                        key=lambda s: s["name"])
        merged["splits"][split] = {
            "clips": sum(s["samples"] for s in shards),
            "frames": sum(m["splits"].get(split, {}).get("frames", 0) for m in loaded.values()),
            "shards": shards,
        }
    for split, entry in merged["splits"].items():
        for s in entry["shards"]:
            if not (folder / s["name"]).is_file():
                raise ManifestError(f"{folder / s['name']}: listed by a part manifest but not in the folder "
                                    "(copy every part's shards into one folder before merging)")
    merged["settings"] = dict(base["settings"])
    merged["settings"]["part"] = None
    merged["parts"] = {"count": n, "merged": [i for (i, _) in sorted(loaded)]}
    write_manifest(folder, merged)
    return merged
