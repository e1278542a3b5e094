"""Several shard sets in one run: ``--data-root LOCATION[:WEIGHT]``, given once or more.

Syntax. ``LOCATION`` is a local folder, a folder URL, a brace pattern or a .tar
(shards/sources.py). A trailing ``:WEIGHT`` (a positive number) is the share of
clips drawn from that set, e.g. ``--data-root data/ravdess:0.3 --data-root
s3://bucket/hdtf:0.7``. Only a suffix after the URL's host counts as a weight,
so ``http://host:8000/shards`` is a URL with a port; a weighted bucket root is
written with its slash, ``s3://bucket/:0.5``. Either every root has a weight or
none has: without weights the sets are read as if they were one folder.

Every set must hold latents of the same encoders: the shard sets' format, motion
encoder fingerprint, audio features, emotion width, frame rate, sampling rate and
crop size are compared at start, and a difference is refused with both values named.
Crop shard sets (stage 1, ``floatctl train-motion``) mix by the same rule: their kind
and crop size must agree (they carry no encoders).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from urllib.parse import urlparse

from shards.remote import is_url
from shards.sources import read_manifest_at, shard_urls

_WEIGHT_RE = re.compile(r"^(.*):((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)$")

# What must agree between mixed shard sets: (manifest path, what it is).
SAME_ACROSS_SETS = (
    (("format_version",), "shard format version"),
    (("kind",), "shard kind"),
    (("encoders", "motion", "fingerprint"), "motion encoder fingerprint"),
    (("features", "motion", "dim"), "motion latent width"),
    (("encoders", "audio", "fingerprint"), "audio encoder fingerprint"),
    (("features", "audio"), "audio features"),
    (("features", "emotion", "dim"), "emotion width"),
    (("fps",), "frame rate"),
    (("sampling_rate",), "audio sampling rate"),
    (("input_size",), "crop size"),
)


@dataclass(frozen=True)
class DataRoot:
    location: str
    weight: float | None = None


def parse_data_root(text: str) -> DataRoot:
    """``LOCATION[:WEIGHT]`` -> DataRoot (see the module docstring for the rule)."""
    m = _WEIGHT_RE.match(text)
    if m is None:
        return DataRoot(text)
    head, weight = m.group(1), float(m.group(2))
    if is_url(head) and not urlparse(head).path and not head.startswith("pipe:"):
        return DataRoot(text)  # scheme://host:PORT
    if not head:
        raise ValueError(f"--data-root {text!r}: a weight needs a location before it")
    if not weight > 0:
        raise ValueError(f"--data-root {text!r}: the weight must be > 0")
    return DataRoot(head, weight)


@dataclass
class ShardSets:
    """The data roots of a run with their manifests, already checked to agree."""
    roots: list[DataRoot]
    manifests: list[dict]

    @property
    def mixed(self) -> bool:
        return len(self.roots) > 1 and self.roots[0].weight is not None

    @property
    def primary(self) -> str:
        """The first root: its val split and reference images serve validation and samples."""
        return self.roots[0].location

    def manifest(self) -> dict:
        """The first root's manifest; with several roots its fingerprint covers all of them
        (and the weights), so a resume on another mix is refused like other shards are."""
        if len(self.roots) == 1:
            return self.manifests[0]
        merged = dict(self.manifests[0])
        parts = [[r.location, r.weight, m.get("fingerprint")] for r, m in zip(self.roots, self.manifests)]
        merged["fingerprint"] = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
        merged["sources"] = [{"root": p[0], "weight": p[1], "fingerprint": p[2]} for p in parts]
        return merged

    def urls(self, split: str) -> tuple[list[str], list[int] | None, list[float] | None]:
        """(shard URLs, source index of each or None, weights or None) of ``split``."""
        urls, sources = [], []
        for k, (root, manifest) in enumerate(zip(self.roots, self.manifests)):
            mine = shard_urls(root.location, split, manifest)
            urls += mine
            sources += [k] * len(mine)
        if not self.mixed:
            return urls, None, None
        return urls, sources, [r.weight for r in self.roots]

    def loader_kwargs(self, split: str = "train") -> tuple[list[str], dict]:
        """(URLs, the TrainWindows keyword arguments that mix them)."""
        urls, sources, weights = self.urls(split)
        return urls, ({"sources": sources, "weights": weights} if sources is not None else {})


def open_shard_sets(texts: list[str] | str) -> ShardSets:
    """Parse the ``--data-root`` values, read each manifest, refuse sets that do not agree."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no --data-root given")
    roots = [parse_data_root(t) for t in texts]
    weighted = [r.weight is not None for r in roots]
    if any(weighted) and not all(weighted):
        raise ValueError("give every --data-root a weight (LOCATION:WEIGHT) or none: "
                         + ", ".join(f"{r.location}: {r.weight if r.weight is not None else 'no weight'}"
                                     for r in roots))
    if len({r.location for r in roots}) < len(roots):
        raise ValueError(f"a --data-root is given twice: {[r.location for r in roots]}")
    manifests = [read_manifest_at(r.location) for r in roots]
    check_same_encoders(roots, manifests)
    return ShardSets(roots, manifests)


def check_same_encoders(roots: list[DataRoot], manifests: list[dict]) -> None:
    """ValueError naming every field in which a set differs from the first one."""
    problems = []
    for root, manifest in zip(roots[1:], manifests[1:]):
        for path, what in SAME_ACROSS_SETS:
            a, b = _get(manifests[0], path), _get(manifest, path)
            if a != b:
                problems.append(f"{what} ({'.'.join(path)}): {roots[0].location} has {a!r}, "
                                f"{root.location} has {b!r}")
    if problems:
        what = ("crops of different sizes or kinds; rewrite one of them at the other's size"
                if manifests[0].get("kind") == "crops" else
                "their latents come from different encoders or settings; re-encode one of them")
        raise ValueError(f"these shard sets cannot be mixed ({what}):\n  - " + "\n  - ".join(problems))


def _get(node, path):
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node
