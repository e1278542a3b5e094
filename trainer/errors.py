"""The trainer package's error for sampling and export (the training loop has TrainingError)."""
from __future__ import annotations


class SampleError(ValueError):
    """Sampling or export cannot go on; the message names the file or option and the reason."""
