"""Evaluation: scoring generated videos against real ones (face metrics, FID, FVD, LSE-C/D)."""
