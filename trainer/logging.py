"""Run logging: console lines, ``metrics.jsonl``, TensorBoard, optionally Weights & Biases, and a tqdm bar.

Only rank 0 logs (``enabled=False`` on the others), so a DDP run writes one
metrics file and one set of curves.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from shards.files import writing  # a full disk or a read-only folder: one StorageError line

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"


def _format_value(key: str, value: float) -> str:
    if key == "lr":
        return f"{value:.2e}"
    if key.endswith("fraction"):
        return f"{100 * value:.0f}%"
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}"


class RunLogger:
    def __init__(self, run_dir: str | Path, enabled: bool = True, total_steps: int = 0, start_step: int = 0,
                 tensorboard: bool = True, progress: bool | None = None, wandb: dict | None = None):
        """``wandb``: None, or the run's settings to start a Weights & Biases run with (see _start_wandb)."""
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._writer = None
        self._bar = None
        self._jsonl = None
        self._wandb = None
        if not enabled:
            return
        with writing(self.run_dir / METRICS_FILE):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.run_dir / METRICS_FILE, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only on rank 0

            with writing(self.run_dir / TENSORBOARD_DIR):
                self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR))
        if wandb is not None:
            self._wandb = self._start_wandb(wandb)
        if progress is None:
            progress = sys.stderr.isatty()
        if progress and total_steps > 0:
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             file=sys.stderr)

    def _start_wandb(self, config: dict):
        """A Weights & Biases run in this run folder, or None (with a warning) when wandb is not installed.

        Offline unless WANDB_MODE says otherwise: nothing here needs a network, and
        ``wandb sync runs/NAME/wandb/offline-run-*`` uploads the run later."""
        try:
            import wandb
        except ImportError:
            self.info("warning: --wandb: the wandb package is not installed (pip install 'float-train[wandb]'); "
                      "logging to metrics.jsonl and TensorBoard only")
            return None
        return wandb.init(project=os.environ.get("WANDB_PROJECT", "float-train"), name=self.run_dir.name,
                          dir=str(self.run_dir), config=config, mode=os.environ.get("WANDB_MODE", "offline"),
                          resume="allow", id=_wandb_id(self.run_dir))

    @property
    def media_backends(self) -> tuple:
        """(TensorBoard writer or None, wandb run or None): where trainer/media_log.py writes media."""
        return self._writer, self._wandb

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def log(self, step: int, metrics: dict[str, float], split: str = "train") -> None:
        """One line to the console, one JSON object to metrics.jsonl, one scalar per key to TensorBoard."""
        if not self.enabled:
            return
        clean = {k: (float(v) if not isinstance(v, int) else v) for k, v in metrics.items()}
        self.info(f"[{split}] step {step} | " + " | ".join(f"{k} {_format_value(k, v)}" for k, v in clean.items()))
        # JSON has no NaN/inf: write them as strings so the file stays valid JSON.
        record = {k: (v if isinstance(v, int) or math.isfinite(v) else str(v)) for k, v in clean.items()}
        with writing(self.run_dir / METRICS_FILE):
            self._jsonl.write(json.dumps({"step": step, "split": split, "time": round(time.time(), 3), **record}) + "\n")
        if self._writer is not None:
            with writing(self.run_dir / TENSORBOARD_DIR / "events"):
                for k, v in clean.items():
                    self._writer.add_scalar(f"{split}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{split}/{k}": v for k, v in clean.items()}, step=step)

    def advance(self, step: int, postfix: dict[str, float] | None = None) -> None:
        """Move the progress bar to ``step``."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        if postfix:
            self._bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        """Close every output; a write that fails here (a full disk) is not raised: the run is ending, and
        the error that ended it, if any, is the one to report."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for name in ("_writer", "_jsonl", "_wandb"):
            handle, finish = getattr(self, name), ("finish" if name == "_wandb" else "close")
            setattr(self, name, None)
            if handle is not None:
                try:
                    getattr(handle, finish)()
                except OSError:
                    pass


def _wandb_id(run_dir: Path) -> str:
    """One W&B run id per run folder, so a resumed run continues its curves."""
    return "float-" + hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]


def read_metrics(run_dir: str | Path, split: str | None = None) -> list[dict]:
    """Records of metrics.jsonl (optionally one split), in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if split is None or r.get("split") == split]
