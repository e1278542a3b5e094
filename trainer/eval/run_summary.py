"""What a run already wrote, collected for `floatctl eval` (nothing is recomputed here):
  validation  the ``val`` rows of RUN/metrics.jsonl (latent-space losses, generation errors with and without
              the audio, their ratio), the best step by ``val_total`` and the last one;
  samples     every RUN/samples/*/metrics.json that ``floatctl sample`` wrote: generation errors, the
              lip-sync proxy (generated, ground-truth reconstruction, audio dropped; trainer/eval/lipsync.py)
              and the sampling speed in frames per second.
"""
from __future__ import annotations

import json
from pathlib import Path

from trainer.eval.report import fmt, table
from trainer.logging import METRICS_FILE

VAL_COLUMNS = ("val_total", "val_current", "val_preceding", "val_velocity", "gen_l1_audio", "gen_l1_no_audio",
               "gen_audio_gain")
SAMPLE_COLUMNS = (  # (heading, key in the collected row)
    ("samples", "name"), ("step", "step"), ("weights", "weights"), ("NFE", "nfe"), ("grid", "grid"),
    ("clips", "clips"), ("L1 audio", "l1_audio"), ("L1 no audio", "l1_no_audio"), ("audio gain", "audio_gain"),
    ("proxy lip-sync gen.", "lipsync_generated"), ("proxy lip-sync GT", "lipsync_truth"),
    ("proxy lip-sync no audio", "lipsync_no_audio"), ("motion fps", "motion_fps"), ("end-to-end fps", "end_to_end_fps"),
    ("device", "device"))


def pick_rows(rows: list[dict], best: dict | None, limit: int) -> list[dict]:
    """At most ``limit`` rows, evenly spread, always with the first, the best and the last."""
    if len(rows) <= limit:
        return rows
    keep = {round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit - 1)} | {len(rows) - 1}
    if best is not None:
        keep.add(rows.index(best))
    return [rows[i] for i in sorted(keep)]


def validation_summary(run: Path) -> dict | None:
    if not (run / METRICS_FILE).is_file():
        return None
    rows, skipped = [], 0
    for line in (run / METRICS_FILE).read_text().splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:  # a run killed mid-write leaves a partial last line
            skipped += 1
            continue
        if isinstance(record, dict) and record.get("split") == "val":
            rows.append(record)
    columns = [c for c in VAL_COLUMNS if any(c in r for r in rows)]
    table = [{"step": r.get("step"), **{c: r.get(c) for c in columns}} for r in rows]
    scored = [r for r in table if isinstance(r.get("val_total"), (int, float))]
    best = min(scored, key=lambda r: r["val_total"]) if scored else None
    return {"columns": columns, "rows": table, "best": best, "last": table[-1] if table else None,
            "unreadable_lines": skipped}


def sample_summary(folder: Path) -> dict | None:
    """One row from samples/X/metrics.json; None when it is unreadable."""
    try:
        m = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    settings, speed, items = m.get("settings") or {}, m.get("speed") or {}, m.get("items") or []
    mean, lipsync = m.get("mean") or {}, m.get("lipsync_mean") or {}
    return {"name": folder.name, "step": settings.get("step"), "weights": settings.get("weights") or
            ("official" if settings.get("official") else None), "nfe": settings.get("nfe"),
            "grid": "official" if settings.get("official_grid") else "uniform", "clips": len(items),
            "l1_audio": mean.get("l1_audio"), "l1_no_audio": mean.get("l1_no_audio"),
            "audio_gain": mean.get("audio_gain"), "lipsync_generated": lipsync.get("lipsync_generated"),
            "lipsync_truth": lipsync.get("lipsync_truth"), "lipsync_no_audio": lipsync.get("lipsync_no_audio"),
            "motion_fps": speed.get("motion_frames_per_s"), "end_to_end_fps": speed.get("end_to_end_frames_per_s"),
            "device": speed.get("device")}


def collect(run: Path) -> dict:
    """{"run", "validation": validation_summary or None, "samples": [sample_summary rows]}."""
    run = Path(run)
    validation = validation_summary(run)
    folders = sorted(p.parent for p in (run / "samples").glob("*/metrics.json")) if (run / "samples").is_dir() else []
    samples = [s for s in map(sample_summary, folders) if s is not None]
    return {"run": str(run), "validation": validation, "samples": samples}


def run_markdown(result: dict, max_rows: int = 12) -> list[str]:
    """The validation and sample-metric sections of a run's eval.md."""
    lines = []
    v = result["validation"]
    if v is None:
        lines += [f"No validation curve ({METRICS_FILE} is missing).", ""]
    elif not v["rows"]:
        lines += [f"No validation rows in {METRICS_FILE} (no val split, or the run stopped before the first "
                  "validation).", ""]
    else:
        shown = pick_rows(v["rows"], v["best"], max_rows)
        lines += ["## Validation (EMA weights)", ""]
        lines += table(["step", *v["columns"]], [[r["step"], *(r[c] for c in v["columns"])] for r in shown])
        note = f"{len(shown)} of {len(v['rows'])} validations shown." if len(shown) < len(v["rows"]) else ""
        if v["best"] is not None:
            note = f"Best val_total {fmt(v['best']['val_total'])} at step {v['best']['step']}. " + note
        lines += ["", note.strip(), ""] if note else [""]
    if result["samples"]:
        lines += ["## Samples (floatctl sample)", ""]
        lines += table([h for h, _ in SAMPLE_COLUMNS], [[s[k] for _, k in SAMPLE_COLUMNS]
                                                         for s in result["samples"]])
        lines += ["", "L1: generated vs ground-truth motion latents, with the audio and with it dropped; audio gain = "
                  "their ratio. Lip-sync: correlation of the mouth region's change with the loudness change "
                  "(-1..1, best of +-2 frame lags), in the generated, the ground-truth reconstruction and the "
                  "audio-dropped videos. fps: frames per second of motion generation and end to end (with "
                  "rendering). The face metrics below replace the proxy where a face is found.", ""]
    else:
        lines += ["No samples yet (floatctl sample RUN writes samples/<checkpoint>/metrics.json).", ""]
    return lines
