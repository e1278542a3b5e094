"""`floatctl eval`: a run's results in one table (eval.md, eval.json), several runs side by side.

``floatctl eval RUN [RUN ...]`` collects, per run, what it already wrote (the validation curve and the
sample metrics: trainer/eval/run_summary.py) and scores its rendered samples with the face models that ship
in packages (trainer/eval/score.py): the trainer's sample_step_N videos and floatctl sample's folders.
Per run it writes RUN/eval.md, RUN/eval.json, RUN/eval_landmarks.png (one frame with its landmarks, to see
that they sit on the face) and, where samples exist at two steps or more, RUN/eval_vs_step.png. With
several runs (or --out) it prints one comparison table, written to OUT/comparison.md and .json.

``floatctl eval --generated DIR --real DIR [--reference DIR]`` scores any two folders of mp4s paired by
name instead; eval.md / eval.json go to --out (default: the --generated folder).

FID, FVD and LSE-C/D come from network files the user names (``--inception``, ``--i3d``, ``--syncnet``, or
those keys in ``--config``; trainer/eval/user_weights.py); each file is checked before any video is scored.

Exit code 2 on bad input: nothing to evaluate, no such folder, no mp4s, unpaired names, an unreadable video.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Optional

import typer

from preprocess import face_models
from shards.files import atomic_write_text, writing
from trainer.errors import TrainerError, exit_with_error
from trainer.eval import report
from trainer.eval.clips import SampleSet, paired_set, run_sets
from trainer.eval.run_summary import collect, run_markdown
from trainer.eval.score import UserMetrics, score_set
from trainer.eval.user_weights import CONFIG_KEYS, load_user_metrics
from trainer.logging import METRICS_FILE

NO_FACE_MODELS = "Face metrics skipped: " + face_models.INSTALL_HINT


def score_sets(sets: list[SampleSet], folder: Path, user: UserMetrics | None, identity_every: int,
               log: Callable[[str], None]) -> tuple[list[dict], list[str]]:
    """Score each set; the landmark picture of the last set's first clip goes to FOLDER/eval_landmarks.png.
    Returns the scored sets (JSON-ready) and the files written."""
    scored, written = [], []
    for i, s in enumerate(sets):
        result = score_set(s, user, identity_every, log, keep_tracks=i == len(sets) - 1)
        first = result.pop("first", None)
        if first is not None and report.landmarks_picture(*first, folder / "eval_landmarks.png"):
            written.append(str(folder / "eval_landmarks.png"))
        scored.append(result)
    if scored and report.plot_vs_step(scored, folder / "eval_vs_step.png"):
        written.append(str(folder / "eval_vs_step.png"))
    return scored, written


def weight_files(config: Path | None, **given: Path | None) -> dict[str, Path | None]:
    """The evaluation networks' files: the command line's, else the --config YAML's."""
    if config is None:
        return given
    import yaml

    try:
        data = yaml.safe_load(Path(config).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise TrainerError(f"--config {config}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or set(data) - set(CONFIG_KEYS):
        unknown = sorted(set(data) - set(CONFIG_KEYS)) if isinstance(data, dict) else data
        raise TrainerError(f"--config {config}: takes the keys {', '.join(CONFIG_KEYS)}; not {unknown}")
    return {k: v if v is not None else (Path(data[k]) if data.get(k) else None) for k, v in given.items()}


def _write(folder: Path, result: dict, markdown: str) -> list[str]:
    atomic_write_text(folder / "eval.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(folder / "eval.md", markdown)
    return [str(folder / "eval.md"), str(folder / "eval.json")]


def evaluate(run: Path, max_rows: int = 12, faces: bool = True, identity_every: int = 1,
             user: UserMetrics | None = None, log: Callable[[str], None] = print) -> tuple[dict, str, list[str]]:
    """One run: collect, score its rendered samples, write RUN/eval.* (and pictures); returns the result,
    its Markdown and the files written."""
    run = Path(run)
    if not run.is_dir():
        raise TrainerError(f"{run}: no such run folder")
    result = collect(run)
    sets = run_sets(run)
    if result["validation"] is None and not result["samples"] and not sets:
        raise TrainerError(f"{run}: nothing to evaluate: no {METRICS_FILE}, no samples/*/metrics.json and no "
                           f"rendered samples (train with floatctl train, then floatctl sample {run})")
    note, written = None, []
    if not faces:
        note = "Face metrics not asked for (--no-faces)."
    elif sets and not face_models.available():
        note = NO_FACE_MODELS
    result["faces"] = []
    if sets and note is None:
        result["faces"], written = score_sets(sets, run, user, identity_every, log)
    markdown = "\n".join([f"# Evaluation of {run}", "", *run_markdown(result, max_rows),
                          *report.faces_markdown(result["faces"], note)])
    return result, markdown, _write(run, result, markdown) + written


def evaluate_paired(generated: Path, real: Path, reference: Path | None, out: Path | None,
                    identity_every: int = 1, user: UserMetrics | None = None,
                    log: Callable[[str], None] = print) -> tuple[dict, str, list[str]]:
    """Two folders of mp4s paired by name; eval.* go to ``out`` (default: the generated folder)."""
    sample_set = paired_set(generated, real, reference)
    if not face_models.available():
        raise TrainerError(NO_FACE_MODELS)
    folder = Path(out) if out is not None else Path(generated)
    folder.mkdir(parents=True, exist_ok=True)
    scored, written = score_sets([sample_set], folder, user, identity_every, log)
    result = {"run": str(generated), "real": str(real), "reference": str(reference) if reference else None,
              "validation": None, "samples": [], "faces": scored}
    markdown = "\n".join([f"# Evaluation of {generated} against {real}", "", *report.faces_markdown(scored)])
    return result, markdown, _write(folder, result, markdown) + written


def eval_run(
    runs: Optional[List[Path]] = typer.Argument(None, help="Run folders (runs/NAME): their metrics.jsonl, "
                                                "samples/*/metrics.json and rendered samples."),
    generated: Optional[Path] = typer.Option(None, help="Instead of runs: a folder of generated NAME.mp4 "
                                                         "(with --real)."),
    real: Optional[Path] = typer.Option(None, help="The real NAME.mp4 for each generated one."),
    reference: Optional[Path] = typer.Option(None, help="Reference images NAME.png/.jpg for CSIM (default: the "
                                                        "first real frame)."),
    out: Optional[Path] = typer.Option(None, help="Folder for comparison.md / comparison.json of the runs; with "
                                                  "--generated, for eval.md / eval.json (default: that folder)."),
    max_rows: int = typer.Option(12, help="Validation rows in the Markdown table (evenly spread; first, best and "
                                          "last always in). eval.json has them all."),
    faces: bool = typer.Option(True, "--faces/--no-faces", help="Score rendered samples with dlib's face models "
                                                                "(CSIM, LMD, landmark lip sync, ...)."),
    identity_every: int = typer.Option(1, help="Embed the identity (CSIM) of every N-th frame only: the "
                                               "slowest model."),
    inception: Optional[Path] = typer.Option(None, help="FID: pytorch-fid's pt_inception-2015-12-05-6726825d.pth."),
    i3d: Optional[Path] = typer.Option(None, help="FVD: the common FVD code's i3d_torchscript.pt."),
    syncnet: Optional[Path] = typer.Option(None, help="LSE-C/D: syncnet_python's syncnet_v2.model."),
    config: Optional[Path] = typer.Option(None, help="YAML with any of inception, i3d, syncnet (the command line "
                                                     "wins)."),
) -> None:
    """Collect runs' validation curves and sample metrics and score their rendered samples with face metrics
    into eval.md / eval.json; or score --generated against --real videos."""
    runs = list(runs or [])
    if max_rows < 3:
        exit_with_error("--max-rows must be at least 3 (first, best and last)")
    if identity_every < 1:
        exit_with_error("--identity-every must be at least 1")
    if (generated is None) != (real is None):
        exit_with_error("--generated and --real go together (two folders of mp4s paired by name)")
    if reference is not None and generated is None:
        exit_with_error("--reference goes with --generated/--real (a run's samples have their references)")
    if generated is not None and runs:
        exit_with_error("give run folders or --generated/--real, not both")
    if generated is None and not runs:
        exit_with_error("nothing to evaluate: give a run folder (runs/NAME) or --generated DIR --real DIR")
    log = lambda m: print(m, flush=True)  # noqa: E731
    try:
        files = weight_files(config, inception=inception, i3d=i3d, syncnet=syncnet)
        user = load_user_metrics(**files, log=log)
        if generated is not None:
            _, markdown, written = evaluate_paired(generated, real, reference, out, identity_every, user, log=log)
            print(markdown, flush=True)
            print("written: " + ", ".join(written))
            return
        results = []
        for run in runs:
            result, markdown, written = evaluate(run, max_rows, faces, identity_every, user, log=log)
            results.append(result)
            print(markdown, flush=True)
            print("written: " + ", ".join(written), flush=True)
    except TrainerError as e:
        exit_with_error(str(e))
    if len(results) > 1 or out is not None:
        rows = report.comparison_rows(results)
        comparison = report.comparison_markdown(rows)
        print(comparison, flush=True)
        if out is not None:
            with writing(out):
                Path(out).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(out) / "comparison.md", comparison)
            atomic_write_text(Path(out) / "comparison.json", json.dumps(rows, indent=2) + "\n")
            print(f"written: {Path(out) / 'comparison.md'}, {Path(out) / 'comparison.json'}")
