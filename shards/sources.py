"""Where a run's shards are and whether they fit the model: shard URLs from a folder's
manifest or a URL pattern, the manifest beside them (local or remote), and the
compatibility check against a ``FloatConfig``.
"""
from __future__ import annotations

from pathlib import Path

from braceexpand import braceexpand

from float.config import FloatConfig
from shards.errors import ManifestError
from shards.format import FORMAT_VERSION, MANIFEST
from shards.manifest import read_manifest, validate_manifest
from shards.remote import is_url, join_location, parent_location, read_json_location


def _is_pattern(text: str) -> bool:
    return "{" in text


def shard_urls(folder_or_urls: str | Path, split: str = "train", manifest: dict | None = None) -> list[str]:
    """The shard URLs (or paths) of ``split``.

    - A local folder: its manifest's shard list (``manifest`` if given, else the folder's
      manifest.json), every file checked to exist.
    - A URL of a folder (http(s)://, s3://, gs://...): the shard list of the manifest.json
      in it, each name joined to the URL; they are checked when read (shards/dataset.py).
    - A pattern, local or URL: ``{split}`` is substituted and brace ranges expanded
      (``train-{000000..000009}.tar``). A pattern without ``{split}`` names the shards of
      the split its file names start with; other splits come from the manifest beside it.
    - A single ``.tar`` file or URL, or a ``pipe:`` command: itself.

    URLs stay URLs: shards/remote.py opens them with WebDataset's gopen handlers.
    """
    text = str(folder_or_urls)
    if text.startswith("pipe:"):
        return list(braceexpand(text.replace("{split}", split)))
    if _is_pattern(text):
        base = text.rsplit("/", 1)[-1]
        if "{split}" in text or base.startswith(f"{split}-"):
            urls = list(braceexpand(text.replace("{split}", split)))
            if not urls:
                raise ValueError(f"shard pattern {text!r} expands to no URL")
            return urls
        return _listed(parent_location(text), split, manifest)
    if is_url(text):
        if text.endswith(".tar"):
            return [text]
        return _listed(text, split, manifest)
    folder = Path(text)
    if not folder.exists():
        raise FileNotFoundError(f"shard folder {folder} does not exist (write shards with `floatctl shards`)")
    if folder.is_file() and folder.suffix == ".tar":
        return [str(folder)]
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is neither a shard folder nor a .tar file")
    if manifest is None and not any(folder.iterdir()):
        raise FileNotFoundError(f"shard folder {folder} is empty (write shards with `floatctl shards`)")
    urls = _listed(text, split, manifest)
    missing = [Path(u).name for u in urls if not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: shards listed in manifest.json are missing: {missing[:5]}"
                                + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return urls


def _listed(folder: str, split: str, manifest: dict | None) -> list[str]:
    """The shards of ``split`` that the manifest of ``folder`` (a path or URL) lists, inside that folder."""
    if manifest is None:
        manifest = read_manifest_at(folder)
    entry = manifest.get("splits", {}).get(split)
    names = [s["name"] for s in (entry or {}).get("shards", [])]
    if not names:
        raise FileNotFoundError(f"{join_location(folder, MANIFEST)}: no {split!r} shards listed "
                                f"(splits present: {sorted(manifest.get('splits', {}))})")
    return [join_location(folder, n) for n in names]


def manifest_location(root: str | Path) -> str:
    """Where the manifest of a shard folder, folder URL, pattern or single shard is: beside the shards."""
    text = str(root)
    if _is_pattern(text) or text.endswith(".tar"):
        return join_location(parent_location(text), MANIFEST)
    return join_location(text, MANIFEST)


def read_manifest_at(root: str | Path) -> dict:
    """The validated manifest beside the shards of ``root`` (a local folder, a URL, a pattern)."""
    text = str(root)
    if not is_url(text) and not _is_pattern(text) and not text.endswith(".tar"):
        return read_manifest(Path(text))
    where = manifest_location(text)
    if not is_url(where):
        return read_manifest(Path(where).parent, Path(where).name)
    try:
        manifest = read_json_location(where)
    except (OSError, ValueError) as e:
        raise ManifestError(f"{where}: manifest not readable ({e})") from None
    problems = validate_manifest(manifest)
    if problems:
        raise ManifestError(f"{where}: invalid manifest: " + "; ".join(problems))
    return manifest


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


def manifest_of(root: str | Path) -> dict | None:
    """The manifest beside the shards of ``root`` (folder, URL or pattern); None for a ``pipe:`` command."""
    if str(root).startswith("pipe:"):
        return None
    return read_manifest_at(root)
