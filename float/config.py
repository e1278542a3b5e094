"""Model configuration and size presets.

Field names follow the official FLOAT options (``dim_w``, ``dim_h``...) so a
config can be compared with the official checkpoint at a glance. Widths that
come from data (the audio feature width) are not fixed here: ``audio_input_dim``
is set from the shard manifest by whoever builds the model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# FLOAT's seven emotion classes, in the speech-emotion model's label order: the
# model's emotion input (dim_e) is a vector over these, so they belong to the model.
EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


@dataclass(frozen=True)
class FloatConfig:
    name: str = "paper"
    # motion auto-encoder
    input_size: int = 512  # face crop side in pixels
    dim_w: int = 512  # motion latent width (style_dim of the auto-encoder)
    dim_m: int = 20  # motion coefficients (orthonormal directions)
    ae_width: float = 1.0  # auto-encoder channel multiplier; < 1 only for seeded-random CPU runs
    # conditions
    dim_a: int = 512  # projected audio width (the official model uses dim_w)
    dim_e: int = len(EMOTIONS)  # emotion classes
    audio_input_dim: int = 9216  # wav2vec2 features per frame: 12 layers x 768
    # flow matching transformer
    dim_h: int = 1024
    depth: int = 8
    num_heads: int = 8
    mlp_ratio: float = 4.0
    attention_window: int = 2  # each frame attends to +-2 neighbouring frames
    # The FMT's target: each frame's motion latent (the official model), or with relative_motion its
    # difference from the reference frame's, so an unseen person's offset in the latent space cancels.
    relative_motion: bool = False
    # timing
    fps: int = 25
    sampling_rate: int = 16000
    wav2vec_sec: float = 2.0
    num_prev_frames: int = 10
    # condition dropout during training (classifier-free guidance)
    audio_dropout: float = 0.1
    ref_dropout: float = 0.1
    emotion_dropout: float = 0.1
    prev_dropout: float = 0.5

    @property
    def num_frames(self) -> int:
        """Current frames per training window / generation chunk (50)."""
        return int(self.wav2vec_sec * self.fps)

    @property
    def seq_len(self) -> int:
        """Positions the FMT sees: preceding + current frames (60)."""
        return self.num_frames + self.num_prev_frames

    @property
    def samples_per_frame(self) -> int:
        return self.sampling_rate // self.fps  # 640 at 16 kHz / 25 fps

    def replace(self, **changes) -> "FloatConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FloatConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        return cls(**d)

    def differences(self, other: "FloatConfig") -> dict:
        """{field: (self value, other value)} for every differing field."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k] and k != "name"}


# The official timing, the one home of these numbers for every stage that cuts, encodes or renders
# media (FloatConfig's defaults; a config never changes them, shards record and check them).
FPS: int = FloatConfig.fps  # video frames per second (25)
SAMPLING_RATE: int = FloatConfig.sampling_rate  # audio samples per second (16 kHz)
SAMPLES_PER_FRAME: int = FloatConfig().samples_per_frame  # audio samples per video frame (640)


PRESETS: dict[str, FloatConfig] = {
    # The official defaults (FMT about 157 M parameters).
    "paper": FloatConfig(),
    # CPU presets: same structure, smaller transformer, face crop and (random)
    # auto-encoder channels; latent widths stay official (dim_w 512).
    "small": FloatConfig(name="small", input_size=256, ae_width=0.25, dim_h=512, depth=6),
    "tiny": FloatConfig(name="tiny", input_size=128, ae_width=0.125, dim_h=256, depth=4, num_heads=4),
}


def get_preset(name: str, **overrides) -> FloatConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg
