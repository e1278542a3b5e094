"""The trainer package's one error class, and how a floatctl command ends on it."""
from __future__ import annotations

import sys

import typer


class TrainerError(ValueError):
    """Training, sampling or export cannot go on; the message names the file or option and the reason."""


# The names the two jobs raise it under (one class: `except TrainerError` catches both).
TrainingError = TrainerError
SampleError = TrainerError


def exit_with_error(message: str) -> None:
    """End a floatctl command on bad input: the message on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code=2)
