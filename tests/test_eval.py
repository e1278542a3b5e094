"""`floatctl eval RUN`: the validation curve and the sample metrics of a run in one Markdown / JSON table."""
import json

import pytest
from typer.testing import CliRunner

from cli import app
from trainer.eval.run_summary import pick_rows
from test_sample import run  # noqa: F401  (a tiny trained checkpoint and its shards)


def write_run(run, val_steps=range(100, 1600, 100)):
    run.mkdir(parents=True)
    lines = []
    for step in val_steps:
        lines.append({"step": step, "split": "train", "loss": 1.0})
        lines.append({"step": step, "split": "val", "val_total": 1.0 / step if step != 700 else 1e-9,
                      "val_current": 0.5, "gen_l1_audio": 0.2, "gen_l1_no_audio": 0.3, "gen_audio_gain": 1.5})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + '\n{"step": 16')  # killed mid-line
    held_out = {"items": [{"name": "a", "lipsync_generated": 0.4}, {"name": "b"}],
                "speed": {"motion_frames_per_s": 812.5, "end_to_end_frames_per_s": 40.25, "device": "cpu"},
                "settings": {"step": 1500, "weights": "ema", "nfe": 10},
                "mean": {"l1_audio": 0.25, "l1_no_audio": 0.5, "audio_gain": 2.0},
                "lipsync_mean": {"lipsync_generated": 0.4, "lipsync_truth": 0.6, "lipsync_no_audio": 0.05}}
    official = {"items": [{"name": "s"}], "speed": {"motion_frames_per_s": 90.0, "device": "cuda"},
                "settings": {"official": True, "official_grid": True, "nfe": 10},
                "lipsync_mean": {"lipsync_generated": 0.3}}
    for name, metrics in (("final_step_1500", held_out), ("float", official)):
        (run / "samples" / name).mkdir(parents=True)
        (run / "samples" / name / "metrics.json").write_text(json.dumps(metrics))
    (run / "samples" / "sample_step_100.pt").write_bytes(b"not a folder")  # the trainer's own samples: ignored
    (run / "samples" / "broken").mkdir()
    (run / "samples" / "broken" / "metrics.json").write_text("{")


def test_eval_writes_markdown_and_json_with_curve_samples_and_speed(tmp_path):
    run = tmp_path / "runs" / "demo"
    write_run(run)
    result = CliRunner().invoke(app, ["eval", str(run), "--max-rows", "5"])
    assert result.exit_code == 0, result.output
    data = json.loads((run / "eval.json").read_text())
    v = data["validation"]
    assert len(v["rows"]) == 15 and v["best"]["step"] == 700 and v["last"]["step"] == 1500
    assert v["unreadable_lines"] == 1 and "loss" not in v["columns"]
    assert [s["name"] for s in data["samples"]] == ["final_step_1500", "float"]
    held, official = data["samples"]
    assert held["audio_gain"] == 2.0 and held["lipsync_truth"] == 0.6 and held["end_to_end_fps"] == 40.25
    assert official["weights"] == "official" and official["grid"] == "official" and official["l1_audio"] is None
    md = (run / "eval.md").read_text()
    assert md in result.output
    assert "| step | val_total | val_current | gen_l1_audio | gen_l1_no_audio | gen_audio_gain |" in md
    assert "| 700 | 1e-09 |" in md and "| 100 |" in md and "| 1500 |" in md  # first, best, last kept
    assert "6 of 15 validations shown" in md and "Best val_total 1e-09 at step 700" in md
    assert "| final_step_1500 | 1500 | ema | 10 | uniform | 2 | 0.25 | 0.5 | 2 | 0.4 | 0.6 | 0.05 | 812.5 | 40.25 | cpu |" in md
    assert "| float | - | official | 10 | official | 1 | - | - | - | 0.3 | - | - | 90 | - | cuda |" in md


def test_eval_of_samples_only_and_of_nothing(tmp_path):
    run = tmp_path / "run"
    write_run(run)
    (run / "metrics.jsonl").unlink()
    result = CliRunner().invoke(app, ["eval", str(run)])
    assert result.exit_code == 0 and "No validation curve" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["eval", str(empty)])
    assert result.exit_code == 2 and "nothing to evaluate" in result.output
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "gone")])
    assert result.exit_code == 2 and "no such run folder" in result.output


def test_pick_rows_keeps_first_best_and_last():
    rows = [{"i": i} for i in range(100)]
    picked = pick_rows(rows, rows[37], 6)
    assert picked[0] is rows[0] and picked[-1] is rows[-1] and rows[37] in picked and len(picked) <= 7
    assert pick_rows(rows[:4], None, 6) == rows[:4]


def test_eval_of_a_sampled_run_scores_lip_sync_of_generated_truth_and_audio_dropped(run, monkeypatch, one_thread):
    """A real (tiny) checkpoint sampled on held-out clips whose source audio is at hand, then evaluated."""
    import trainer.sample.command as sample_command
    from test_sample import cli as sample_cli
    from test_sample import speech_like

    monkeypatch.setattr(sample_command, "source_waveform", lambda meta, frames: speech_like(frames * 640 / 16000))
    result = sample_cli(["sample", run["ckpt"], "--clips", 1, "--nfe", 2])
    assert result.exit_code == 0, result.output
    out = run["ckpt"].parent.parent / "samples" / run["ckpt"].stem
    item = json.loads((out / "metrics.json").read_text())["items"][0]
    for key in ("lipsync_generated", "lipsync_truth", "lipsync_no_audio"):
        assert isinstance(item[key], float) and -1 <= item[key] <= 1
        assert set(item["lipsync"][key.removeprefix("lipsync_")]) >= {"r", "lag", "r_lag0", "frames"}
    assert "lip-sync proxy (mouth change vs loudness change, r): generated" in result.output
    assert "lip-sync proxy, mean over clips" in result.output or item["lipsync_generated"] is None
    result = CliRunner().invoke(app, ["eval", str(run["ckpt"].parent.parent)])
    assert result.exit_code == 0, result.output
    row = json.loads((run["ckpt"].parent.parent / "eval.json").read_text())["samples"][0]
    assert row["name"] == run["ckpt"].stem and row["clips"] == 1 and row["l1_audio"] == item["l1_audio"]
    assert row["lipsync_truth"] == item["lipsync_truth"] and row["motion_fps"] > 0
