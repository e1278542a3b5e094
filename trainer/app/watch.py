"""The app's second tab: a training run's curves (metrics.jsonl) and its latest samples, from the run folder.

Read-only and cheap: a refresh reads metrics.jsonl and lists ``samples/``; the
curves are drawn with matplotlib's Agg canvas into the app's work folder.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from shards.files import atomic_write_figure, writing
from trainer.logging import METRICS_FILE, read_metrics

# The curves worth a panel each, in order; whichever the run logged (FMT or stage 1).
PANELS = (("train", ("total",), "training loss"),
          ("val", ("val_total", "psnr"), "validation"),
          ("val", ("gen_l1_audio", "gen_l1_no_audio", "psnr_copy_source"), "generation / baseline"))
MAX_IMAGES = 8
SAMPLE_NAME = re.compile(r"sample_step_(\d+)(\.png|\.pt)?$")  # what the two stages' sample steps write


@dataclass
class RunView:
    message: str
    curves: str | None = None
    images: list[tuple[str, str]] = field(default_factory=list)  # (path, caption)
    video: str | None = None


def _sample_step(path: Path) -> int:
    """The step of samples/sample_step_N.{png,pt} or of samples/sample_step_N/."""
    return int(SAMPLE_NAME.match(path.name).group(1))


def latest_samples(run_dir: Path) -> tuple[list[tuple[str, str]], str | None]:
    """The newest sample step's images (stage-1 grid, motion plots) and one of its videos."""
    samples = run_dir / "samples"
    if not samples.is_dir():
        return [], None
    steps = sorted((p for p in samples.iterdir() if SAMPLE_NAME.match(p.name)), key=_sample_step)
    images, video = [], None
    for entry in reversed(steps):
        if entry.suffix == ".png":
            images.append((str(entry), f"{entry.stem}: source | driving | reconstruction"))
        elif entry.is_dir():
            images += [(str(p), f"{entry.name}/{p.name}") for p in sorted(entry.glob("*.png"))]
            videos = sorted(entry.glob("*.mp4"))
            video = video or (str(videos[0]) if videos else None)
        if images:
            break
    return images[:MAX_IMAGES], video


def plot_curves(records: list[dict], path: Path, title: str) -> Path | None:
    """One panel per group of PANELS that the run logged; None when it logged none yet."""
    panels = []
    for split, keys, name in PANELS:
        rows = [r for r in records if r.get("split") == split]
        series = {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if series:
            panels.append((name, series))
    if not panels:
        return None
    fig = Figure(figsize=(9, 2.4 * len(panels)), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (name, series) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels):
        for key, points in series.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None,
                    label=key)
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.axes[-1].set_xlabel("step")
    fig.suptitle(title)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_figure(path, fig)
    return path


def view_run(run_dir: str | Path | None, work_dir: Path) -> RunView:
    """What the tab shows for ``run_dir``; a message saying why when there is nothing to show."""
    if not run_dir:
        return RunView("no run folder given: type one (runs/NAME) and press Refresh")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return RunView(f"run folder {run_dir}: no such folder")
    records = read_metrics(run_dir)
    images, video = latest_samples(run_dir)
    if not records and not images:
        return RunView(f"run folder {run_dir}: no {METRICS_FILE} and no samples yet (is it a training run?)")
    curves = plot_curves(records, work_dir / "curves" / f"{run_dir.name}.png", str(run_dir))
    last = records[-1] if records else {}
    message = (f"{run_dir}: {len(records)} logged rows, last at step {last.get('step', '?')}"
               if records else f"{run_dir}: no curves yet")
    if images:
        message += f"; latest samples: {Path(images[0][0]).parent.name if '/' in images[0][1] else images[0][1]}"
    return RunView(message, str(curves) if curves else None, images, video)
