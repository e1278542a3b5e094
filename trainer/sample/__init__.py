"""Sampling and rendering: `floatctl sample` of a trained checkpoint or an official float.pth, and the
trainer's sample step. May import trainer/eval (the scores of a rendered clip); the training loops import it."""
