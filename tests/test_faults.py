"""Faults a long run meets (issue 18): a full disk, a read-only --out, a cut-short shard, a foreign pickle,
a checkpoint named by its run folder. Each ends in one clear line (no traceback) and loses nothing.

The full and read-only file systems are real tmpfs mounts (root only; skipped, saying why, elsewhere).
Commands run in-process through floatctl's typer app, as a user types them.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from crop_factory import make_crop_shards, write_stage1_checkpoint
from shard_factory import make_shards

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
FMT_SET = ["--set", "dim_w=16", "--set", "dim_a=16", "--set", "dim_h=32", "--set", "depth=1", "--set", "num_heads=2"]
QUIET = ["--preset", "tiny", "--batch-size", "4", "--log-step", "2", "--val-step", "0", "--sample-step", "0",
         "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crops")
    make_crop_shards(folder, {"train": 6, "val": 2}, frames=10, size=SIZE, seed=0)
    return folder


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("latents")
    make_shards(folder, {"train": 4, "val": 1}, frames=40, dim_w=16, audio_dim=12, seed=0)
    return folder


def floatctl(*args) -> tuple[int, str]:
    """(exit code, stdout + stderr) of `floatctl ARGS`; an exception escaping the command is a failure here."""
    from cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"floatctl {' '.join(map(str, args))} raised {result.exception!r}:\n{result.output}")
    return result.exit_code, result.output


def one_error_line(output: str) -> str:
    """The command's single 'error:' line (and no traceback)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


class Mount:
    """A tmpfs of a given size mounted on a folder (root only)."""

    def __init__(self, folder: Path, size: str, read_only: bool = False):
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root; this test runs as an ordinary user")
        folder.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
        self.folder = folder

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.folder)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.folder)], check=False)


@pytest.fixture
def mounts(tmp_path):
    made: list[Mount] = []

    def make(name: str, size: str, read_only: bool = False) -> Mount:
        made.append(Mount(tmp_path / name, size, read_only))
        return made[-1]

    yield make
    for m in reversed(made):
        m.unmount()


# ---------------------------------------------------------------- one rule for writing files
def test_a_full_disk_stops_training_with_one_line_keeps_the_last_checkpoint_and_resumes(crops, mounts):
    disk = mounts("disk", "1g")
    run = disk.folder / "run"
    code, output = floatctl("train-motion", "--data-root", crops, "--out", run, "--steps", "2", *QUIET)
    assert code == 0, output
    first = run / "checkpoints" / "final_step_2.pt"
    size = first.stat().st_size
    used = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    disk.resize(str(used + size // 2))  # room for logs, not for a second checkpoint

    code, output = floatctl("train-motion", "--data-root", crops, "--out", run, "--steps", "4", "--resume", "auto",
                            *QUIET)
    line = one_error_line(output)
    assert code == 1
    assert "cannot write final_step_4.pt" in line and "no space left on device" in line and "free there" in line
    assert f"the last good checkpoint is {first}" in line and "--resume auto" in line
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["final_step_2.pt", "latest"], names  # no half-written file under any name
    assert (run / "checkpoints" / "latest").read_text().strip() == "final_step_2.pt"

    disk.resize("1g")
    code, output = floatctl("train-motion", "--data-root", crops, "--out", run, "--steps", "4", "--resume", "auto",
                            *QUIET)
    assert code == 0 and "resumed from" in output and "final_step_4.pt" in output, output


def test_a_disk_full_before_the_first_checkpoint_says_none_was_saved(crops, mounts):
    disk = mounts("tiny", "300k")  # room for the config and logs only
    code, output = floatctl("train-motion", "--data-root", crops, "--out", disk.folder / "run", "--steps", "2", *QUIET)
    line = one_error_line(output)
    assert code == 1 and "no space left on device" in line and "no checkpoint was saved yet" in line
    assert not [p for p in (disk.folder / "run" / "checkpoints").iterdir()]


@pytest.mark.parametrize("stage", ["train-motion", "train"])
def test_a_read_only_out_is_refused_before_any_work(stage, crops, latents, mounts):
    ro = mounts("ro", "1m", read_only=True)
    data = crops if stage == "train-motion" else latents
    extra = FMT_SET if stage == "train" else []
    code, output = floatctl(stage, "--data-root", data, "--out", ro.folder / "run", "--steps", "2", *QUIET, *extra)
    line = one_error_line(output)
    assert code == 1 and f"--out {ro.folder / 'run'}" in line and "read-only file system" in line
    assert f"floatctl {stage}:" not in output  # stopped before the run started


def test_the_shard_stage_refuses_a_read_only_out_in_one_line(crops, mounts):
    ro = mounts("ro", "1m", read_only=True)
    code, output = floatctl("shards", "--from-crops", crops, "--out", ro.folder / "latents")
    line = one_error_line(output)
    assert code == 1 and "--out" in line and "read-only file system" in line


def test_the_shard_writer_and_atomic_writes_leave_nothing_on_a_full_disk(mounts):
    from shards.errors import StorageError
    from shards.files import atomic_write_bytes
    from shards.writer import ShardWriter

    disk = mounts("small", "64k")
    with pytest.raises(StorageError, match=r"cannot write big\.pt in .*: no space left on device \(0 B free there\)"):
        atomic_write_bytes(disk.folder / "big.pt", lambda f: torch.save({"x": torch.zeros(100_000)}, f))
    with pytest.raises(StorageError, match=r"train-000000\.tar.*no space left on device"):
        with ShardWriter(disk.folder, "train", max_bytes=1 << 30) as writer:
            writer.add("clip_a", {"bin": os.urandom(200_000)})
    assert list(disk.folder.iterdir()) == []


# ---------------------------------------------------------------- the shard readers agree with inspect
def _cut(src: Path, dst: Path, shard: str = "train-000000.tar", keep: int = 30_000) -> tuple[int, int]:
    shutil.copytree(src, dst)
    path = dst / shard
    before = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(keep)
    return before, keep


@pytest.mark.parametrize("stage", ["train-motion", "train"])
def test_a_cut_short_shard_is_refused_at_start_up_with_both_sizes(stage, crops, latents, tmp_path):
    from shards.inspect import inspect_shards

    folder = tmp_path / "cut"
    before, after = _cut(crops if stage == "train-motion" else latents, folder, keep=5_000)
    extra = FMT_SET if stage == "train" else []
    code, output = floatctl(stage, "--data-root", folder, "--out", tmp_path / "run", "--steps", "2", *QUIET, *extra)
    line = one_error_line(output)
    assert code == 2
    assert f"train-000000.tar: {after} bytes, manifest says {before}" in line and "--accept-damaged-shards" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
    # inspect names the same shard and sizes
    assert any(f"{after} bytes, manifest says {before}" in p for p in inspect_shards(folder).problems)


def test_accepting_a_damaged_set_knowingly_reports_the_clips_lost(crops, tmp_path):
    folder = tmp_path / "cut"
    _cut(crops, folder, keep=5_000)
    code, output = floatctl("train-motion", "--data-root", folder, "--out", tmp_path / "run", "--steps", "1",
                            "--accept-damaged-shards", *QUIET)
    assert code == 0, output
    warning = [line for line in output.splitlines() if "--accept-damaged-shards" in line]
    assert len(warning) == 1 and re.search(r"2 of 8 clips lost; training on the 6 that remain", warning[0]), output


def test_train_motion_names_an_unreachable_url_and_refuses_a_pipe(tmp_path):
    code, output = floatctl("train-motion", "--data-root", "http://127.0.0.1:9/x", "--out", tmp_path / "run",
                            "--steps", "1", *QUIET)
    line = one_error_line(output)
    assert code == 2 and "http://127.0.0.1:9/x/manifest.json: manifest not readable" in line
    code, output = floatctl("train-motion", "--data-root", "pipe:cat x.tar", "--out", tmp_path / "run",
                            "--steps", "1", *QUIET)
    line = one_error_line(output)
    assert code == 2 and "pipe:cat x.tar" in line and "no manifest.json beside it" in line


# ---------------------------------------------------------------- one safe loader
class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


SOURCES = ("float", "shards", "preprocess", "trainer", "benchmarks")


def test_no_torch_load_is_left_outside_the_safe_loader():
    calls = []
    for path in [REPO / "cli.py", *(p for d in SOURCES for p in (REPO / d).rglob("*.py"))]:
        if path == REPO / "float" / "safe_load.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "load" and isinstance(node.value, ast.Name) \
                    and node.value.id == "torch":
                calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization") \
                    and any(a.name == "load" for a in node.names):
                calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert calls == [], f"torch.load outside float/safe_load.py: {calls}"


def test_checkpoint_and_hf_checkpoint_do_not_import_each_other():
    def imports(name: str) -> set[str]:
        tree = ast.parse((REPO / "float" / name).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    assert "float.checkpoint" not in imports("hf_checkpoint.py")
    assert "float.safe_load" in imports("hf_checkpoint.py") and "float.safe_load" in imports("checkpoint.py")
    from float.checkpoint import CheckpointError, safe_torch_load  # still importable from here
    from float.safe_load import CheckpointError as Same, safe_torch_load as same

    assert CheckpointError is Same and safe_torch_load is same


@pytest.fixture(scope="module")
def fmt_checkpoint(tmp_path_factory) -> Path:
    from float.config import get_preset
    from float.model import FloatMotionModel
    from trainer.checkpoints import CHECKPOINT_VERSION, save_final

    cfg = get_preset("tiny", dim_w=16, dim_a=16, dim_h=32, depth=1, num_heads=2, audio_input_dim=12)
    model = FloatMotionModel(cfg)
    state = {"version": CHECKPOINT_VERSION, "kind": "fmt", "step": 3, "model": model.state_dict(),
             "ema": model.state_dict(), "config": cfg.to_dict(), "settings": {}}
    return save_final(tmp_path_factory.mktemp("fmt-run") / "checkpoints", state)


# (option, command given the evil file); every one must refuse it in one line without running it
EVIL_CASES = {
    "train-motion --init": lambda e, d: ["train-motion", "--data-root", d["crops"], "--init", e],
    "train-motion --perceptual-weights": lambda e, d: ["train-motion", "--data-root", d["crops"],
                                                       "--perceptual-weights", e],
    "train-motion --resume": lambda e, d: ["train-motion", "--data-root", d["crops"], "--resume", e],
    "train --init": lambda e, d: ["train", "--data-root", d["latents"], *FMT_SET, "--init", e],
    "train --resume": lambda e, d: ["train", "--data-root", d["latents"], *FMT_SET, "--resume", e],
    "shards --motion-ckpt": lambda e, d: ["shards", "--from-crops", d["crops"], "--motion-ckpt", e],
    "shards --float-ckpt": lambda e, d: ["shards", "--from-crops", d["crops"], "--float-ckpt", e],
    "sample CHECKPOINT": lambda e, d: ["sample", e],
    "export CHECKPOINT": lambda e, d: ["export", e, d["out"] / "x.pth"],
    "export --float-ckpt": lambda e, d: ["export", d["fmt"], d["out"] / "x.pth", "--float-ckpt", e],
    "export --motion-ckpt": lambda e, d: ["export", d["fmt"], d["out"] / "x.pth", "--motion-ckpt", e],
}


@pytest.mark.parametrize("case", sorted(EVIL_CASES))
def test_an_evil_pickle_is_refused_in_one_line_by_every_option(case, crops, latents, fmt_checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"features.0.weight": RunsCode(marker), "fmt.x": torch.zeros(1)}, evil)
    data = {"crops": crops, "latents": latents, "fmt": fmt_checkpoint, "out": tmp_path}
    args = EVIL_CASES[case](evil, data)
    if args[0] in ("train", "train-motion"):
        args += ["--out", tmp_path / "run", "--steps", "1", *QUIET]
    if args[0] == "shards":
        args += ["--out", tmp_path / "shards"]
    code, output = floatctl(*args)
    line = one_error_line(output)
    assert code == 2, output
    assert str(evil) in line and "refused" in line and "weights_only=False" not in line
    assert "takes" in line, line  # what the option wants
    assert not marker.exists(), "the pickle ran"


def test_init_given_an_fmt_checkpoint_says_what_it_is_and_what_init_takes(crops, fmt_checkpoint, tmp_path):
    code, output = floatctl("train-motion", "--data-root", crops, "--out", tmp_path / "run", "--steps", "1",
                            "--init", fmt_checkpoint, *QUIET)
    line = one_error_line(output)
    assert code == 2 and f"--init {fmt_checkpoint} is an FMT training checkpoint (floatctl train)" in line
    assert "--init takes a stage-1 checkpoint" in line


# ---------------------------------------------------------------- one rule for naming a checkpoint
def test_a_run_folder_names_its_final_checkpoint_else_its_newest(tmp_path):
    from float.checkpoint_names import pick_checkpoint
    from float.motion_checkpoint import load_motion_checkpoint

    run = tmp_path / "motion"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("checkpoint_step_2.pt", "checkpoint_step_10.pt"):
        write_stage1_checkpoint(ckpts / name, size=SIZE, width=0.125)
    heard = []
    assert pick_checkpoint(run, "--motion-ckpt", heard.append) == ckpts / "checkpoint_step_10.pt"
    assert "newest checkpoint (no final one yet)" in heard[-1] and "checkpoint_step_10.pt" in heard[-1]
    write_stage1_checkpoint(ckpts / "final_step_10.pt", size=SIZE, width=0.125)
    write_stage1_checkpoint(ckpts / "best_step_12.pt", size=SIZE, width=0.125)  # never chosen
    _, info, _ = load_motion_checkpoint(run, log=heard.append)
    assert info["source"] == str(ckpts / "final_step_10.pt") and "its final checkpoint" in heard[-1]
    assert pick_checkpoint(ckpts, log=None) == ckpts / "final_step_10.pt"  # the checkpoints folder too


def test_every_checkpoint_option_takes_a_run_folder(crops, fmt_checkpoint, tmp_path):
    run = tmp_path / "motion"
    (run / "checkpoints").mkdir(parents=True)
    write_stage1_checkpoint(run / "checkpoints" / "final_step_7.pt", size=SIZE, width=0.125)
    code, output = floatctl("train-motion", "--data-root", crops, "--out", tmp_path / "r1", "--steps", "1",
                            "--lr", "0", "--init", run, *QUIET)
    assert code == 0 and f"using {run / 'checkpoints' / 'final_step_7.pt'} (its final checkpoint)" in output, output
    code, output = floatctl("export", run, tmp_path / "slim.pt")
    assert code == 0 and "final_step_7.pt" in output, output
    fmt_run = fmt_checkpoint.parent.parent
    code, output = floatctl("export", fmt_run, tmp_path / "x.pth", "--motion-ckpt", run)
    assert code == 0 and str(fmt_checkpoint) in output and "final_step_7.pt" in output, output
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = floatctl("export", fmt_checkpoint, tmp_path / "y.pth", "--motion-ckpt", empty)
    line = one_error_line(output)
    assert code == 2 and "a folder with no checkpoint in it" in line
