"""What one `floatctl sample` run is asked to do, and what it gives back: shared by the sampling of a
trained checkpoint (trainer/sample/command.py) and of an official float.pth (trainer/sample/official.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SampleOptions:
    checkpoint: Path
    audio: Path | None = None
    image: Path | None = None
    out: Path | None = None
    data_root: str | None = None  # a folder, a folder URL or a pattern (str: a Path would mangle a URL)
    split: str = "auto"
    clips: int = 2
    emotion: str | None = None
    ser: Path | None = None
    wav2vec2: Path | None = None
    float_ckpt: Path | None = None
    crop: bool = True
    a_cfg: float = 2.0
    e_cfg: float = 1.0
    nfe: int = 10
    solver: str = "euler"
    seed: int | None = None  # 0; with official_grid on float.pth the official default 15
    use_ema: bool = True
    device: str = "auto"
    render: bool = True
    render_batch: int = 16
    official_grid: bool = False
    s3fd: Path | None = None  # face_alignment's S3FD weights: the official crop of the portrait (float.pth only)
    decoder_precision: str = "auto"  # the motion decoder: auto (bf16 on CUDA, fp32 elsewhere), fp32 or bf16
    clip_batch: int = 8  # held-out clips generated together in one batch through the FMT
    compile: bool = False  # torch.compile the FMT's forward (CUDA only)
    face_checks: bool = True  # the lip-sync proxy and the face rate of each rendered video (dlib on the CPU)
    overlap_encoding: bool = True  # mp4 encoding in a writer thread during decoding (False: after it, as before)


@dataclass
class SampleResult:
    out: Path
    files: dict[str, list[str]] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    rendered: bool = False
    decoder_random: bool = False
