"""Where a run's shards are and whether they fit the model: shard URLs from a folder's
manifest or a URL pattern, the manifest of a folder, and the compatibility check
against a ``FloatConfig``.
"""
from __future__ import annotations

from pathlib import Path

from braceexpand import braceexpand

from float.config import FloatConfig
from shards.format import FORMAT_VERSION
from shards.manifest import read_manifest


def _looks_remote(text: str) -> bool:
    """A URL or URL pattern rather than a local folder or file."""
    return "://" in text or text.startswith("pipe:") or "{" in text


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
    if not _looks_remote(text):
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


def manifest_of(folder: str | Path) -> dict | None:
    """The folder's manifest, or None for URL patterns (whose manifest the caller must fetch)."""
    text = str(folder)
    if _looks_remote(text):
        return None
    return read_manifest(Path(text))
