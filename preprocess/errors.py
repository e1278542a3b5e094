"""The preprocess package's errors: one base, ``PreprocessError``, that every one of them is.

``except PreprocessError`` catches anything the shard stage raises about its inputs.
The specific classes stay because callers treat them differently:

- ``ClipError``: one clip cannot be used (unreadable, truncated, no face, too
  short). The stage records the reason in ``errors.jsonl`` and goes on; sampling
  reports it for the one file it was given. ``str(error)`` is the reason.
- ``EncoderSetupError``: weights or encoder options that cannot be used, found
  before any clip is processed (also raised when sampling rebuilds encoders).
- ``PipelineError``: bad options or inputs of the stage as a whole; fatal, raised
  before (or instead of) doing the work. ``floatctl shards`` ends on it.

Each keeps the built-in base it had before the common base existed (``ValueError``
for the encoder setup, ``RuntimeError`` for the pipeline), so no existing
``except`` changes what it catches. Nothing here imports anything: worker
processes import it without torch.
"""
from __future__ import annotations


class PreprocessError(Exception):
    """The shard stage cannot use an input or option; the message names it and says why."""


class ClipError(PreprocessError):
    """A clip that cannot be used; str(error) is the human-readable reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class EncoderSetupError(PreprocessError, ValueError):
    """Weights or options that cannot be used; raised before any clip is processed."""


class PipelineError(PreprocessError, RuntimeError):
    """A problem with the inputs or options, reported before (or instead of) doing the work."""
