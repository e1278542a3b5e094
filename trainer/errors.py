"""The trainer package's error for sampling and export (the training loop has TrainingError)."""
from __future__ import annotations

import sys

import typer


class SampleError(ValueError):
    """Sampling or export cannot go on; the message names the file or option and the reason."""


def exit_with_error(message: str) -> None:
    """End a floatctl command on bad input: the message on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code=2)
