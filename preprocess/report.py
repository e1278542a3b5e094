"""What a shard run tells its user: the progress bar, the summary it returns and the lines it prints."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from shards.format import SPLITS


@dataclass
class RunSummary:
    out: Path
    written: dict[str, int]  # new samples per split
    present: dict[str, int]  # samples per split in the folder's complete shards at the end
    frames_written: int
    rejected: int
    errors_file: Path
    manifest_file: Path | None
    seconds: float
    crops_manifest_file: Path | None = None

    @property
    def total_present(self) -> int:
        return sum(self.present.values())

    @property
    def exit_code(self) -> int:
        return 0 if self.total_present > 0 else 1


class _NoProgress:
    def update(self, n=1): pass
    def set_postfix(self, **kw): pass
    def close(self): pass


def progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", desc="shards", file=sys.stderr, dynamic_ncols=True)


def format_summary(summary: RunSummary, manifest: dict) -> str:
    lines = [f"done in {summary.seconds:.1f} s: {sum(summary.written.values())} clip(s) written "
             f"({summary.frames_written} frames), {summary.rejected} rejected -> {summary.errors_file}"]
    for split in SPLITS:
        e = manifest["splits"][split]
        lines.append(f"  {split:<5} {e['clips']:>6} clips {e['frames']:>8} frames {len(e['shards']):>4} shards"
                     f"  (+{summary.written[split]} this run)")
    lines.append(f"manifest: {summary.manifest_file}")
    if summary.total_present == 0:
        lines.append("ERROR: no clip could be written; see the reasons in " + str(summary.errors_file))
    return "\n".join(lines)
