"""floatctl: a thin command-line front over the project's stages.

Each command lives next to the code it drives; this file only registers them.
"""
from __future__ import annotations

import typer

app = typer.Typer(
    name="floatctl",
    help="Train FLOAT (audio-driven talking portraits): make shards, train the FMT, sample and render.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from preprocess.command import inspect, shards
    from trainer.app.command import app as app_command
    from trainer.command import train, train_motion
    from trainer.eval.command import eval_run
    from trainer.export import export
    from trainer.sample.command import sample

    app.command(help="Turn RAVDESS or a folder of talking-head clips into WebDataset shards.")(shards)
    app.command(help="Validate a shard folder against its manifest and print a summary.")(inspect)
    app.command("train", help="Train the Flow Matching Transformer on latent shards.")(train)
    app.command("train-motion", help="Train the motion auto-encoder (stage 1) on crop shards.")(train_motion)
    app.command(help="Generate motion from audio with a checkpoint and render it.")(sample)
    app.command("eval", help="Score runs (validation, samples, face metrics) into eval.md / eval.json, side by "
                             "side; or --generated vs --real mp4s.")(eval_run)
    app.command("app", help="Serve a local web page that animates a portrait with a checkpoint and watches a run.")(
        app_command)
    app.command(help="Write an official-format state dict (fmt.*, audio projection) from a checkpoint.")(export)


_register()


def main() -> None:
    """floatctl; a file that cannot be written (full disk, read-only folder) ends any command with one line
    naming the file, the free space and the reason, and exit code 1 (shards/files.py StorageError)."""
    import sys

    from shards.errors import StorageError

    try:
        app()
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
