"""The shard stage's options (``ShardSettings``, every option of ``floatctl shards``), the checks
that need no data, and what a run records about itself in its manifest (the crop, the content
settings that are hashed into the fingerprint).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from preprocess.errors import PipelineError, PreprocessError
from preprocess.splits import actor_order, parse_part
from shards.format import FORMAT_VERSION
from shards.manifest import CREATED_BY, fingerprint_inputs, settings_fingerprint

DEFAULT_SYNTHETIC_DIR = Path("data/synthetic_ravdess")


def default_workers() -> int:
    """One decoding process per core, leaving one core for encoding (at least 1, at most 8)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class ShardSettings:
    """Every option of ``floatctl shards`` (see preprocess/command.py for their help)."""
    ravdess: Path | None = None
    input: Path | None = None
    out: Path = Path("data/shards")
    preset: str = "tiny"
    input_size: int | None = None  # None: the preset's
    crop: str = "auto"
    # dlib | haar (preprocess/face_pick.py). None: the detector of the shards already in --out (Haar when
    # their manifest names none), else dlib when installed, else Haar; resolve_detector fills it in.
    detector: str | None = None
    audio_features: str = "auto"
    wav2vec2: Path | None = None
    ser: Path | None = None
    float_ckpt: Path | None = None
    vocal_channels: tuple[str, ...] = ("speech", "song")
    speaker_pattern: str | None = None  # regex on the clip's path under --input, group 1 = speaker
    val_actors: int = 2
    test_actors: int = 2
    val_ids: tuple[str, ...] = ()
    test_ids: tuple[str, ...] = ()
    workers: int = field(default_factory=default_workers)
    batch_size: int = 64
    device: str = "auto"
    part: str | None = None
    shard_size_mb: float = 256.0
    shard_samples: int | None = None
    min_seconds: float = 2.0
    segment_seconds: float = 15.0  # longer videos are cut into segments of at most this (0: never)
    seed: int = 0
    overwrite: bool = False
    synthetic_dir: Path = DEFAULT_SYNTHETIC_DIR
    progress: bool = True
    crops: bool = True  # also write crop shards (preprocess/crop_stage.py)
    crops_out: Path | None = None  # None: <out>-crops
    from_crops: Path | None = None  # encode latents from this crop folder instead of videos
    motion_ckpt: Path | None = None  # stage-1 checkpoint of floatctl train-motion

    def as_json(self) -> dict:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def check_options(s: ShardSettings):
    """Everything checkable without touching the data: (part, preset config, input size)."""
    from float.config import get_preset
    from preprocess.encode import EncoderSetupError, check_weight_paths, resolve_audio_kind

    part = parse_part(s.part)
    if s.motion_ckpt is not None and s.float_ckpt is not None:
        raise PipelineError("--motion-ckpt and --float-ckpt both give the motion encoder: pass one")
    if s.motion_ckpt is not None and not Path(s.motion_ckpt).exists():
        raise PipelineError(f"--motion-ckpt {s.motion_ckpt}: no such file or run folder")
    try:
        check_weight_paths(s.float_ckpt, s.wav2vec2, s.ser)  # first: the issue asks for this before any work
        resolve_audio_kind(s.audio_features, s.wav2vec2)
    except EncoderSetupError as e:
        raise PipelineError(str(e)) from None
    if s.crop not in ("auto", "none"):
        raise PipelineError(f"--crop must be auto or none, got {s.crop!r}")
    if s.detector is not None:
        from preprocess.face_pick import DETECTORS, check_available

        if s.detector not in DETECTORS:
            raise PipelineError(f"--detector must be one of {', '.join(DETECTORS)}, got {s.detector!r}")
        if s.crop == "auto" and s.from_crops is None:
            try:
                check_available(s.detector)
            except PreprocessError as e:
                raise PipelineError(str(e)) from None
    if s.segment_seconds < 0 or 0 < s.segment_seconds < s.min_seconds:
        raise PipelineError(f"--segment-seconds must be 0 (never cut) or at least --min-seconds "
                            f"({s.min_seconds}), got {s.segment_seconds}")
    if s.shard_size_mb <= 0:
        raise PipelineError(f"--shard-size-mb must be positive, got {s.shard_size_mb}")
    if s.shard_samples is not None and s.shard_samples < 1:
        raise PipelineError(f"--shard-samples must be at least 1, got {s.shard_samples}")
    try:
        cfg = get_preset(s.preset)
    except ValueError as e:
        raise PipelineError(f"--preset: {e}") from None
    return part, cfg, s.input_size or cfg.input_size


CROPS_SUFFIX = "-crops"


def default_crops_out(out: Path) -> Path:
    """``data/shards`` -> ``data/shards-crops``: a sibling, so each latent folder has its own crops."""
    out = Path(out)
    return out.with_name(out.name + CROPS_SUFFIX)


def crop_info(crop: str, detector: str | None = "haar") -> dict:
    """The manifest's crop: its mode, scale and the detector's full name (versions and method). Haar's name
    is what it always was, so Haar shards keep their fingerprint."""
    if crop == "none":
        return {"mode": "none", "scale": None, "detector": None}
    from preprocess import face, face_pick

    return {"mode": "auto", "scale": face.CROP_SCALE, "detector": face_pick.get_detector(detector or "haar").name()}


def _recorded_detector(folders: list[Path], part) -> str | None:
    """The detector kind of the shards already in these folders (the first manifest found), or None."""
    from preprocess.face_pick import detector_kind
    from preprocess.output import output_names
    from shards.errors import ManifestError
    from shards.format import MANIFEST
    from shards.manifest import list_part_manifests, read_manifest

    for folder in folders:
        names = dict.fromkeys([output_names(part)[0], MANIFEST] + [p.name for p in list_part_manifests(folder).values()])
        for name in names:
            try:
                crop = read_manifest(folder, name).get("crop") or {}
            except (ManifestError, OSError, ValueError):
                continue
            if crop.get("mode") == "auto":
                return detector_kind(crop.get("detector"))
    return None


def resolve_detector(s: ShardSettings, part=None, log=print) -> ShardSettings:
    """``s`` with its detector filled in: the one given; else, so that a folder made with Haar (or before the
    choice existed) is resumed and rebuilt the same way, the one its manifest records; else the default."""
    from dataclasses import replace

    from preprocess.face_pick import check_available, default_detector

    if s.crop != "auto" or s.from_crops is not None:
        return replace(s, detector=None)  # nothing is detected
    if s.detector is not None:
        return s  # checked by check_options

    folders = [Path(s.out)] + ([Path(s.crops_out) if s.crops_out else default_crops_out(s.out)] if s.crops else [])
    recorded = _recorded_detector([f for f in folders if f.is_dir()], part)
    if recorded is not None:
        log(f"face detector: {recorded}, as recorded in the manifest of {s.out} (pass --detector to change it)")
        try:
            check_available(recorded)
        except PreprocessError as e:
            raise PipelineError(f"{s.out} was made with the {recorded} face detector, which cannot run here: {e}") from None
        return replace(s, detector=recorded)
    chosen = default_detector()
    if chosen != "dlib":
        log("face detector: haar (dlib's face models are not installed: pip install -e '.[faces]' for the default)")
    try:
        check_available(chosen)
    except PreprocessError as e:
        raise PipelineError(str(e)) from None
    return replace(s, detector=chosen)


def frame_content(cfg, input_size: int, crop: dict, split_of: dict, segment_seconds: float = 0.0) -> dict:
    """What changes the frames and audio of a sample or its split: hashed into the crop folder's
    fingerprint as it is, and into the latent folder's with the encoder settings added."""
    return {
        "format_version": FORMAT_VERSION, "fps": cfg.fps, "sampling_rate": cfg.sampling_rate,
        "input_size": input_size, "crop": crop, "segment_seconds": segment_seconds,
        "val_actors": sorted((a for a, sp in split_of.items() if sp == "val"), key=actor_order),
        "test_actors": sorted((a for a, sp in split_of.items() if sp == "test"), key=actor_order),
    }


def describe_run(s: ShardSettings, cfg, input_size: int, encoder, split_of: dict, root: Path, kind: str) -> dict:
    """The manifest minus its splits: features, encoders, crop, settings and the fingerprint."""
    crop = crop_info(s.crop, s.detector)
    # What changes sample content or split membership; workers, batch size, shard size, part do not.
    content = frame_content(cfg, input_size, crop, split_of, s.segment_seconds) | {
        "audio_features": encoder.audio_kind, "motion_precision": encoder.motion_precision}
    encoder_fps = encoder.fingerprints()
    settings = s.as_json() | {"input_size": input_size, "input_root": str(root), "input_kind": kind,
                              "audio_features": encoder.audio_kind,
                              "splits": {"val": content["val_actors"], "test": content["test_actors"]}}
    return {
        "format_version": FORMAT_VERSION, "created_by": CREATED_BY,
        "features": encoder.features_info(), "fps": cfg.fps, "sampling_rate": cfg.sampling_rate,
        "input_size": input_size, "encoders": encoder.encoders_info, "crop": crop, "settings": settings,
        "fingerprint_inputs": fingerprint_inputs(content, encoder_fps),
        "fingerprint": settings_fingerprint(content, encoder_fps),
    }
