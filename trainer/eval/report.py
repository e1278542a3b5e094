"""How `floatctl eval` shows its numbers: Markdown tables, the comparison of several runs, the plot of each
face metric against the training step, and one frame with its landmarks drawn (to see that they sit on the
face)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from shards.files import atomic_write_figure, atomic_write_image
from trainer.eval.score import FACE_COLUMNS
from trainer.eval.user_weights import USER_COLUMNS

COLUMNS = FACE_COLUMNS + USER_COLUMNS

MAX_NOTES = 8  # distinct clip notes listed under a table


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(headings: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(headings) + " |", "|" + "|".join("---" for _ in headings) + "|"]
    return lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]


def _columns(means: list[dict]) -> list[tuple[str, str, str]]:
    """The metric columns that at least one row has."""
    return [c for c in COLUMNS if any(m.get(c[0]) is not None for m in means)]


def faces_markdown(sets: list[dict], note: str | None = None) -> list[str]:
    """The face-metric table of one run: a row per sample set (means over its clips), a legend, notes."""
    lines = ["## Rendered samples: face metrics (dlib, shipped weights) and those of the weights given", ""]
    if note:
        return lines + [note, ""]
    if not sets:
        return lines + ["No rendered samples to score (floatctl sample RUN renders them).", ""]
    columns = _columns([s["mean"] for s in sets])
    lines += table(["samples", "step", "clips", *(h for _, h, _ in columns)],
                   [[s["name"], s["step"], len(s["clips"]), *(s["mean"].get(k) for k, _, _ in columns)]
                    for s in sets])
    lines += ["", "Means over clips. " + "; ".join(f"{h}: {d}" for _, h, d in columns) + ".", ""]
    notes = list(dict.fromkeys(f"{c['name']}: {n}" for s in sets for c in s["clips"] for n in c.get("notes", [])))
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes[:MAX_NOTES]]
        lines += [f"- and {len(notes) - MAX_NOTES} more (eval.json)"] if len(notes) > MAX_NOTES else []
        lines += [""]
    seconds = sum(s.get("seconds", 0.0) for s in sets)
    frames = sum(c["frames"] for s in sets for c in s["clips"])
    lines += [f"Scored {frames} generated frames (with their ground truth and audio-dropped videos) in "
              f"{seconds:.1f} s.", ""]
    return lines


def comparison_rows(results: list[dict]) -> list[dict]:
    """One row per (run, sample set) over several runs' results."""
    rows = []
    for result in results:
        for s in result.get("faces") or []:
            rows.append({"run": result["run"], "samples": s["name"], "step": s["step"], "clips": len(s["clips"]),
                         **{k: s["mean"].get(k) for k, _, _ in COLUMNS}})
    return rows


def comparison_markdown(rows: list[dict]) -> str:
    columns = _columns(rows)
    lines = ["# Comparison", ""]
    if not rows:
        return "\n".join(lines + ["No run has rendered samples to score.", ""])
    lines += table(["run", "samples", "step", "clips", *(h for _, h, _ in columns)],
                   [[r["run"], r["samples"], r["step"], r["clips"], *(r.get(k) for k, _, _ in columns)]
                    for r in rows])
    return "\n".join(lines + ["", "; ".join(f"{h}: {d}" for _, h, d in columns) + ".", ""])


def plot_vs_step(sets: list[dict], path: Path) -> Path | None:
    """Each face metric against the training step, a line per kind of samples (the trainer's windows,
    floatctl sample's held-out clips); None unless some kind has samples at two steps or more."""
    series: dict[str, list[dict]] = {}
    for s in sets:
        if s.get("step") is not None:
            series.setdefault("trainer samples" if s["kind"] == "trainer" else "floatctl sample", []).append(s)
    series = {k: sorted(v, key=lambda s: s["step"]) for k, v in series.items()
              if len({s["step"] for s in v}) >= 2}
    if not series:
        return None
    columns = _columns([s["mean"] for v in series.values() for s in v])
    colours = dict(zip(series, ("tab:blue", "tab:orange")))  # fixed per series: panels may lack one of them
    cols = 4
    rows = -(-len(columns) // cols)
    fig = Figure(figsize=(4 * cols, 2.8 * rows))
    FigureCanvasAgg(fig)
    for i, (key, heading, _) in enumerate(columns):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, points in series.items():
            xy = [(s["step"], s["mean"][key]) for s in points if s["mean"].get(key) is not None]
            if xy:
                ax.plot(*zip(*xy), marker="o", label=label, color=colours[label])
        ax.set_title(heading, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.legend(handles=[Line2D([], [], color=c, marker="o", label=label) for label, c in colours.items()],
               loc="upper right", fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.08, top=0.9, hspace=0.6, wspace=0.3)  # tight_layout: 1 s
    atomic_write_figure(path, fig, dpi=80)
    return Path(path)


def draw_landmarks(frame: np.ndarray, points: np.ndarray, zoom: int = 3) -> np.ndarray:
    """The frame enlarged ``zoom`` times with its 68 landmarks drawn (mouth red, eyes green, rest blue)."""
    big = cv2.resize(frame, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    if not np.all(np.isfinite(points)):
        return big
    for i, (x, y) in enumerate(points):
        colour = (255, 0, 0) if i >= 48 else (0, 200, 0) if 36 <= i < 48 else (0, 120, 255)
        cv2.circle(big, (int(round(x * zoom + zoom / 2)), int(round(y * zoom + zoom / 2))), 2, colour, -1)
    return big


def landmarks_picture(clip, tracks: dict, path: Path) -> Path | None:
    """The middle frame of a clip's generated and ground-truth videos with their landmarks; None when
    neither has a face there."""
    middle = len(clip.generated) // 2
    panels = []
    for suffix, video in (("generated", clip.generated), ("truth", clip.real)):
        if video is not None and suffix in tracks and tracks[suffix].found[middle]:
            panels.append(draw_landmarks(video[middle], tracks[suffix].points[middle]))
    if not panels:
        return None
    image = np.concatenate(panels, axis=1)
    atomic_write_image(path, image)
    return Path(path)
