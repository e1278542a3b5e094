"""`floatctl sample float.pth --audio A --image I`: the official model, rendered as the official inference renders.

The official generate.py, step by step, and what is done here:
  image   face detector on a 360p copy, square crop of 1.6x the face box padded with black, resized with
          INTER_AREA when the image is taller than 360 px (else INTER_CUBIC), then to the input size with
          INTER_AREA; ``--no-crop``: INTER_AREA resize only. With ``--s3fd FILE`` (face_alignment's
          s3fd-619a316812.pth) the detector is S3FD as there (preprocess/s3fd.py: same network, decode, NMS,
          thresholds, first box over 0.95, integer box arithmetic); without it dlib's landmark box (Haar when
          dlib is not installed) mapped onto the SFD box (preprocess/face_dlib.py), and the log says so.
  audio   read with ``librosa.load(path, sr=16000)`` as there; 16 kHz mono, normalised to zero mean and unit variance over the whole clip, T = ceil(25 s) frames,
          replicate-padded to T * 640 samples, wav2vec2 features of every layer at T frames, projected.
  emotion a label is one-hot; without one (``--emotion auto``, the default here as there) the speech-emotion
          model's probabilities for the whole normalised clip.
  motion  the reference motion is the decoder's direction of the encoder's coefficients; windows of 50
          frames, classifier-free guidance with the audio and emotion scales (reference scale 1);
          ``--official-grid``: Euler on linspace(0, 1, nfe) with the noise re-seeded before each window.
  video   frame t decoded from appearance + motion t with the reference's feature maps, 25 fps, the audio
          muxed as AAC.
Differences that remain: without ``--s3fd``, the face detector (above; its box is calibrated to S3FD's,
within a few percent); the muxed audio is the 16 kHz waveform cut to the video's length (official: the
original file, whole); pixels are rounded to 8 bits (official: truncated).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from float.audio_encoder import Wav2Vec2Features, frames_for_samples, normalize_waveform, pad_to_frames
from float.safe_load import CheckpointError, safe_torch_load
from float.config import SAMPLING_RATE
from float.device import resolve_device
from float.emotion_encoder import EmotionEncoder
from float.official_model import OfficialModel, is_official_state, load_official_model
from preprocess.errors import PreprocessError
from preprocess.face import crop_frame
from preprocess.media import frame_energy
from shards.files import atomic_write_text
from trainer.checkpoints import default_output_dir
from trainer.errors import SampleError
from trainer.eval.lipsync import clip_lipsync, mean_lipsync
from trainer.sample.generate import compile_fmt, generate, save_latents
from trainer.sample.media_input import InputError, emotion_name, emotion_vector, load_audio, parse_emotion, read_image
from trainer.sample.options import SampleOptions, SampleResult
from trainer.sample.plot import plot_motion
from trainer.sample.render import decoder_precision, encode_reference, render_to_mp4

OFFICIAL_SEED = 15  # the official options' --seed default
DETECT_HEIGHT = 360  # the official crop picks its resize filter by the image height against this


def official_state(path: Path) -> dict | None:
    """The state dict of ``path`` if it is an official float.pth, else None (a training checkpoint, a folder).

    Memory-mapped, so looking costs little even for a multi-GB file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = safe_torch_load(path, mmap=True)
    except CheckpointError:
        try:  # a legacy (non-zip) torch file cannot be mapped
            obj = safe_torch_load(path)
        except CheckpointError:
            return None  # the training-checkpoint loader reports why
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return obj if is_official_state(obj) else None


def official_crop_box(image: np.ndarray, path: Path, s3fd: Path | None = None, log: Callable[[str], None] = print):
    """The official crop's square of ``image``: S3FD's when its weights are given, else the better installed
    detector's (dlib, else Haar) mapped onto S3FD's box; the log names which. InputError when no face is found."""
    from preprocess.face_pick import default_detector, image_crop_box

    if s3fd is not None:
        from preprocess.s3fd import cached_s3fd, official_crop_box as s3fd_box

        try:
            square = s3fd_box(cached_s3fd(str(s3fd)), image)
        except PreprocessError as e:
            raise SampleError(str(e)) from None
        log(f"face crop: S3FD ({s3fd}), as the official code")
        found = "S3FD finds no face scoring over 0.95"
    else:
        kind = default_detector()
        square = image_crop_box(image, kind, DETECT_HEIGHT)
        log(f"face crop: {kind} mapped onto S3FD's box (S3FD itself with --s3fd s3fd-619a316812.pth)")
        found = "no face detected"
    if square is None:
        raise InputError(f"image {path}: {found} (pass --no-crop if it is already a face crop)")
    return square


def official_reference(path: Path, size: int, crop: bool = True, s3fd: Path | None = None,
                       log: Callable[[str], None] = print) -> np.ndarray:
    """The (size, size, 3) uint8 reference the official DataProcessor makes of an image."""
    image = read_image(path)
    if crop:
        square = official_crop_box(image, path, s3fd, log)
        region = crop_frame(image, square, square.side)  # black outside the image, not resized yet
        shrink = image.shape[0] > DETECT_HEIGHT  # the official rule: by image height, not by crop size
        image = cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)  # albumentations Resize(INTER_AREA)
    return np.ascontiguousarray(image)


def _folders(o: SampleOptions, official: OfficialModel, emotion: str, log) -> tuple[Wav2Vec2Features, object]:
    dim = official.cfg.audio_input_dim
    if o.wav2vec2 is None:
        raise SampleError(f"{o.checkpoint}: the official model reads wav2vec2 features of width {dim} per frame "
                          f"(every layer of facebook/wav2vec2-base-960h: 12 x 768 = 9216); pass --wav2vec2 DIR, "
                          "its Hugging Face folder (config.json + model.safetensors or pytorch_model.bin). Nothing "
                          "is downloaded here")
    if emotion == "auto" and o.ser is None:
        raise SampleError("--emotion auto (the default, as in the official inference when no emotion is given) "
                          "needs the speech-emotion model: pass --ser DIR (the Hugging Face folder of "
                          "r-f/wav2vec-english-speech-emotion-recognition), or pick --emotion LABEL")
    try:
        audio = Wav2Vec2Features.from_pretrained(o.wav2vec2)
    except (OSError, ValueError) as e:
        raise SampleError(f"--wav2vec2 {o.wav2vec2}: {e}") from None
    if dim not in (audio.feature_dim(True), audio.feature_dim(False)):
        raise SampleError(f"--wav2vec2 {o.wav2vec2}: gives {audio.num_layers} layers x {audio.hidden_size} = "
                          f"{audio.feature_dim(True)} features per frame (last layer: {audio.hidden_size}); "
                          f"{o.checkpoint} projects {dim}: not the wav2vec2 it was trained with")
    ser = None
    if o.ser is not None:
        try:
            ser = EmotionEncoder.from_pretrained(o.ser)
        except (OSError, ValueError) as e:
            raise SampleError(f"--ser {o.ser}: {e}") from None
    return audio, ser


class _SER:
    """emotion_vector's encoder interface over the official input: the normalised, unpadded clip."""

    def __init__(self, model):
        self.emotion = model

    def emotion_probs(self, wave: np.ndarray) -> np.ndarray:
        return self.emotion(torch.from_numpy(wave)[None])[0].float().cpu().numpy()


def run_official_sample(o: SampleOptions, state: dict, log: Callable[[str], None] = print) -> SampleResult:
    """Everything `floatctl sample float.pth` does; SampleError / InputError for bad input."""
    if o.audio is None or o.image is None:
        raise SampleError(f"{o.checkpoint} is an official float.pth: give --audio and --image (held-out clips "
                          "of shards are sampled with a training checkpoint)")
    if o.float_ckpt is not None:
        raise SampleError("--float-ckpt: the official float.pth given as the checkpoint already holds the motion "
                          "auto-encoder")
    emotion = parse_emotion(o.emotion) or "auto"
    waveform = load_audio(o.audio, reader="librosa")  # as the official code reads it; fail fast, before the models
    if not Path(o.image).is_file():
        raise InputError(f"image {o.image}: no such file")
    if o.s3fd is not None and o.crop:
        from preprocess.s3fd import cached_s3fd

        try:
            cached_s3fd(str(o.s3fd))  # a wrong file is refused before the slow model loads
        except PreprocessError as e:
            raise SampleError(str(e)) from None
    try:
        device = resolve_device(o.device)
        official = load_official_model(state, str(o.checkpoint))
    except (ValueError, CheckpointError) as e:
        raise SampleError(str(e)) from None
    cfg = official.cfg
    log(f"official checkpoint {o.checkpoint}: {official.loaded} parameter tensors (FMT depth {cfg.depth}, "
        f"dim_h {cfg.dim_h}, audio {cfg.audio_input_dim} -> {cfg.dim_a}, {cfg.input_size}px motion auto-encoder); "
        f"{official.skipped} wav2vec2 / speech-emotion tensors left to the --wav2vec2 / --ser folders")
    if official.ignored:
        log(f"note: {len(official.ignored)} other keys ignored, e.g. {official.ignored[:3]}")
    audio_model, ser = _folders(o, official, emotion, log)
    reference = official_reference(Path(o.image), cfg.input_size, crop=o.crop, s3fd=o.s3fd, log=log)
    model, autoencoder = official.model.to(device), official.autoencoder.to(device)
    if o.compile:
        compile_fmt(model, device, log)
    audio_model, ser = audio_model.to(device), ser.to(device) if ser is not None else None

    start = time.perf_counter()
    normalized = normalize_waveform(torch.from_numpy(waveform)[None])
    frames = frames_for_samples(len(waveform))
    with torch.no_grad():
        features = audio_model(pad_to_frames(normalized, frames), seq_len=frames,
                               all_layers=cfg.audio_input_dim == audio_model.feature_dim(True))[0]
    we = emotion_vector(emotion, normalized[0].numpy(), _SER(ser) if ser is not None else None)
    label = f"auto ({emotion_name(we)})" if emotion == "auto" else emotion_name(we)
    encode_seconds = time.perf_counter() - start
    log(f"audio {o.audio}: {len(waveform) / SAMPLING_RATE:.2f} s -> {frames} frames; emotion {label}")
    ref = encode_reference(autoencoder, reference)
    seed = o.seed if o.seed is not None else (OFFICIAL_SEED if o.official_grid else 0)
    gen = generate(model, features, ref.motion[0], we, o.nfe, o.solver, o.a_cfg, o.e_cfg, seed,
                   official_grid=o.official_grid)
    steps = o.nfe - 1 if o.official_grid else o.nfe
    log(f"motion: {frames} frames in {gen.seconds:.2f} s ({frames / max(gen.seconds, 1e-9):.1f} frames/s), "
        f"{'official grid, ' if o.official_grid else ''}{o.solver}, nfe {o.nfe} ({steps} field evaluations per "
        f"window), a_cfg {o.a_cfg}, e_cfg {o.e_cfg}, seed {seed}")

    out = Path(o.out) if o.out else default_output_dir(o.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{Path(o.audio).stem}-{Path(o.image).stem}"
    settings = {"checkpoint": str(o.checkpoint), "official": True, "official_grid": o.official_grid, "nfe": o.nfe,
                "field_evaluations_per_window": steps, "solver": o.solver, "a_cfg": o.a_cfg, "e_cfg": o.e_cfg,
                "r_cfg": 1.0, "seed": seed, "emotion": emotion, "crop": o.crop, "config": cfg.to_dict(),
                "s3fd": str(o.s3fd) if o.s3fd is not None and o.crop else None, "audio_reader": "librosa"}
    result = SampleResult(out)
    result.files["latents"] = [str(save_latents(out / f"{name}.motion.pt", {
        "motion": gen.motion, "ref_motion": ref.motion[0].cpu(), "emotion": torch.from_numpy(we), "name": name,
        "settings": settings}))]
    plot = plot_motion(out / f"{name}.plot.png", gen.motion.numpy(), frame_energy(waveform, frames),
                       title=f"{name}: official float.pth, NFE {o.nfe}, a_cfg {o.a_cfg}")
    result.files["plot"] = [str(plot["path"])]
    entry = {"name": name, "frames": frames, "emotion": label, "emotion_probs": [float(x) for x in we],
             "motion_fps": frames / max(gen.seconds, 1e-9)}
    speed = {"motion_frames_per_s": entry["motion_fps"], "audio_encode_seconds": encode_seconds, "nfe": o.nfe,
             "solver": o.solver, "device": str(device)}
    if o.render:
        start = time.perf_counter()
        video, path = render_to_mp4(autoencoder, ref, gen.motion, out / f"{name}.mp4", waveform, o.render_batch,
                                    o.decoder_precision, o.overlap_encoding)
        result.files["video"] = [str(path)]
        render_seconds = time.perf_counter() - start
        speed.update(render_frames_per_s=frames / max(render_seconds, 1e-9),
                     end_to_end_frames_per_s=frames / max(render_seconds + gen.seconds + encode_seconds, 1e-9))
        result.rendered = True
        log(f"rendered {frames} frames at {cfg.input_size}px ({decoder_precision(o.decoder_precision, device)}): "
            f"{speed['render_frames_per_s']:.2f} frames/s, "
            f"{speed['end_to_end_frames_per_s']:.2f} frames/s end to end")
        if o.face_checks:
            log(clip_lipsync(entry, name, waveform, video))
    result.metrics = {"items": [entry], "speed": speed, "settings": settings,
                      "decoder": {"source": str(o.checkpoint), "random": False, "available": True},
                      **mean_lipsync([entry])}
    metrics = out / "metrics.json"
    atomic_write_text(metrics, json.dumps(result.metrics, indent=2) + "\n")
    result.files["metrics"] = [str(metrics)]
    log(f"outputs in {out}:")
    for kind in ("video", "plot", "latents", "metrics"):
        for path in result.files.get(kind, []):
            log(f"  {kind:13s} {path}")
    return result
