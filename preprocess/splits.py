"""Which split and which part a clip belongs to: actors to train / val / test, clips to ``--part i/N``.

Pure functions of the actor list and the clip ids, so every part of a parallel run agrees.
"""
from __future__ import annotations

import hashlib
from typing import Callable

from preprocess.errors import PipelineError
from shards.writer import MAX_INDEX


def parse_part(part: str | None) -> tuple[int, int] | None:
    """"2/4" -> (2, 4); None -> None."""
    if part is None:
        return None
    try:
        i, n = (int(x) for x in part.split("/"))
    except ValueError:
        raise PipelineError(f"--part must look like i/N (e.g. 2/4), got {part!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise PipelineError(f"--part {part}: need 1 <= i <= N")
    return i, n


def part_of(clip_id: str, parts: int) -> int:
    """1-based part owning a clip: stable per clip, independent of the rest of the dataset."""
    return 1 + int(hashlib.sha256(clip_id.encode()).hexdigest()[:12], 16) % parts


def index_range(part: tuple[int, int] | None) -> tuple[int, int]:
    """Shard indices a part may use: [start, end)."""
    if part is None:
        return 0, MAX_INDEX
    i, n = part
    step = MAX_INDEX // n
    return (i - 1) * step, i * step


def actor_order(actor: str):
    return (0, int(actor), actor) if actor.isdigit() else (1, 0, actor)


def assign_splits(actors, n_val: int = 2, n_test: int = 2, val_ids=(), test_ids=(),
                  warn: Callable[[str], None] = print) -> dict[str, str]:
    """{actor: split}. Explicit ids win; otherwise the highest-numbered actors go to test and
    the ones just below them to val (RAVDESS default: actors 21-22 val, 23-24 test). With too
    few actors the counts shrink (the larger first, test on a tie; with a warning) until at
    most half of the actors are held out: 4 actors with 2/2 give 2 train, 1 val, 1 test;
    2 actors give 1 train, 1 val; 1 actor trains alone."""
    actors = sorted(set(actors), key=actor_order)
    if n_val < 0 or n_test < 0:
        raise PipelineError("--val-actors and --test-actors must be >= 0")
    val_ids, test_ids = [str(a) for a in val_ids], [str(a) for a in test_ids]
    for name, ids in (("--val-ids", val_ids), ("--test-ids", test_ids)):
        unknown = [a for a in ids if a not in actors]
        if unknown:
            raise PipelineError(f"{name}: actor(s) {unknown} not in the dataset (actors: {actors})")
    both = sorted(set(val_ids) & set(test_ids))
    if both:
        raise PipelineError(f"actor(s) {both} given for both val and test")
    if val_ids or test_ids:
        explicit = {a: "val" for a in val_ids} | {a: "test" for a in test_ids}
        if len(explicit) >= len(actors):
            raise PipelineError("explicit val/test actors leave no actor for training")
        # A split given explicitly is exactly that list; the other one is drawn by count from the rest.
        rest = [a for a in actors if a not in explicit]
        if not test_ids:
            n_test = _fit_count(n_test, len(rest) - 1, "test", warn)
            explicit |= {a: "test" for a in rest[len(rest) - n_test:]} if n_test else {}
        elif not val_ids:
            n_val = _fit_count(n_val, len(rest) - 1, "val", warn)
            explicit |= {a: "val" for a in rest[len(rest) - n_val:]} if n_val else {}
        return {a: explicit.get(a, "train") for a in actors}
    if n_val + n_test > len(actors) // 2:
        old = (n_val, n_test)
        while n_val + n_test > len(actors) // 2:
            if n_test >= n_val:  # keep val longest: training needs it more than a test split
                n_test -= 1
            else:
                n_val -= 1
        warn(f"WARNING: only {len(actors)} actor(s); val/test actors reduced from {old[0]}/{old[1]} "
             f"to {n_val}/{n_test} so that at most half of the actors are held out")
    out = {a: "train" for a in actors}
    for a in actors[len(actors) - n_test:] if n_test else []:
        out[a] = "test"
    for a in actors[len(actors) - n_test - n_val:len(actors) - n_test] if n_val else []:
        out[a] = "val"
    return out


def _fit_count(n: int, available: int, name: str, warn) -> int:
    if n > available:
        warn(f"WARNING: {name} actors reduced from {n} to {max(0, available)} (too few actors left)")
        return max(0, available)
    return n
