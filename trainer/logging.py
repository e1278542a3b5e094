"""Run logging: console lines, ``metrics.jsonl``, TensorBoard and a tqdm progress bar.

Only rank 0 logs (``enabled=False`` on the others), so a DDP run writes one
metrics file and one set of curves.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

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
                 tensorboard: bool = True, progress: bool | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._writer = None
        self._bar = None
        self._jsonl = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / METRICS_FILE, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only on rank 0

            self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR))
        if progress is None:
            progress = sys.stderr.isatty()
        if progress and total_steps > 0:
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             file=sys.stderr)

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
        self._jsonl.write(json.dumps({"step": step, "split": split, "time": round(time.time(), 3), **record}) + "\n")
        if self._writer is not None:
            for k, v in clean.items():
                self._writer.add_scalar(f"{split}/{k}", v, step)

    def advance(self, step: int, postfix: dict[str, float] | None = None) -> None:
        """Move the progress bar to ``step``."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        if postfix:
            self._bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def read_metrics(run_dir: str | Path, split: str | None = None) -> list[dict]:
    """Records of metrics.jsonl (optionally one split), in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if split is None or r.get("split") == split]
