"""`floatctl app CHECKPOINT|RUN|float.pth`: serve the app's page (trainer/app/server.py) on this machine.

The checkpoint is checked before the server starts (a stage-1 checkpoint, a
missing or broken file: one line on stderr, exit code 2). Gradio is the
optional extra ``app`` (`make install` installs it).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import typer

from trainer.app.animate import MAX_UPLOAD_MB, AppConfig
from trainer.errors import SampleError, exit_with_error

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_checkpoint(path: Path, device: str = "cpu") -> str:
    """What ``path`` is ("float.pth" or the training checkpoint it resolves to); SampleError when unusable."""
    from trainer.checkpoints import load_sampling_model
    from trainer.sample.official import official_state

    if not path.exists():
        raise SampleError(f"checkpoint {path}: no such file or folder")
    if official_state(path) is not None:
        return f"{path} (official float.pth)"
    sm = load_sampling_model(path, True, "cpu", log=lambda line: None)
    return f"{sm.checkpoint} (step {sm.step}, model {sm.cfg.name})"


def run_folder_of(checkpoint: Path, run: Path | None) -> Path | None:
    """The run the "Watch a run" tab opens with: --run, else the checkpoint's own run folder when it has one."""
    from trainer.checkpoints import run_dir_of
    from trainer.logging import METRICS_FILE

    if run is not None:
        return run
    folder = checkpoint if checkpoint.is_dir() else run_dir_of(checkpoint)
    return folder if (folder / METRICS_FILE).is_file() or (folder / "samples").is_dir() else None


def app(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint, run folder (its latest checkpoint) or the "
                                                "official float.pth (with --wav2vec2 and --ser)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on. 127.0.0.1: this machine only; 0.0.0.0 "
                                               "exposes the page to the network (no login, no TLS)."),
    port: Optional[int] = typer.Option(None, help="Port (default: 7860, or the next free one)."),
    run: Optional[Path] = typer.Option(None, help="Run folder the \"Watch a run\" tab opens with (default: the "
                                                  "checkpoint's own run)."),
    max_upload_mb: float = typer.Option(MAX_UPLOAD_MB, help="Size limit of one uploaded file, in MB."),
    work_dir: Optional[Path] = typer.Option(None, help="Where generated videos are written (default: a new "
                                                       "temporary folder)."),
    wav2vec2: Optional[Path] = typer.Option(None, help="wav2vec2 folder (default: the one in the manifest)."),
    ser: Optional[Path] = typer.Option(None, help="Speech-emotion model folder (default: the one in the manifest)."),
    float_ckpt: Optional[Path] = typer.Option(None, help="Official float.pth whose motion decoder renders."),
    data_root: Optional[str] = typer.Option(None, help="Shard folder whose manifest names the encoders "
                                                        "(default: the checkpoint's)."),
    no_crop: bool = typer.Option(False, "--no-crop", help="Portraits are already face crops: only resize them."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Serve a local web page that animates a portrait with this checkpoint, and shows a run's curves."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: no usage reports sent out
    try:
        import gradio  # noqa: F401
    except ImportError:
        exit_with_error("floatctl app needs gradio: pip install 'float-train[app]' (make install installs it)")
    try:
        what = check_checkpoint(checkpoint)
    except SampleError as e:
        exit_with_error(str(e))
        return
    if max_upload_mb <= 0:
        exit_with_error(f"--max-upload-mb {max_upload_mb:g}: must be positive")
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="floatctl-app-"))
    work.mkdir(parents=True, exist_ok=True)
    local = host in LOCAL_HOSTS
    config = AppConfig(checkpoint, work.resolve(), run_folder_of(checkpoint, run), max_upload_mb, wav2vec2, ser,
                       float_ckpt, data_root, device, not no_crop, locked=not local)
    print(f"checkpoint {what}; outputs in {config.work_dir}", flush=True)
    if not local:
        print(f"warning: listening on {host}: anyone who can reach this port can use the page, its compute and "
              "the generated videos, with no login and no TLS; the checkpoint and run folder are fixed to "
              "this command's", flush=True)
    from trainer.app.server import launch

    launch(config, host, port)
