"""`floatctl sample` and `floatctl export`.

``floatctl sample CKPT`` with no other option samples a few held-out clips of
the shards the checkpoint was trained on (test split, else val): their audio
features, reference frame and emotion. It prints the generation error against
the ground-truth latents with the audio and with the audio dropped, and writes
into ``--out`` (default runs/NAME/samples/<ckpt-stem>/) per clip:
  KEY.motion.pt          generated (and ground-truth) motion latents
  KEY.mp4                the motion decoder's rendering (25 fps), with the clip's audio
  KEY.gt_vs_generated.mp4  ground truth | generated, both rendered by the decoder
  KEY.truth.mp4, KEY.no_audio.mp4, KEY.reference.png  the ground truth, the audio dropped and the
                         reference crop on their own, for floatctl eval
  KEY.plot.png           motion principal components against the audio energy
  metrics.json           errors and speed
``--audio FILE --image FILE`` generates for new inputs instead (NAME.* files).

Exit codes: 0 done, 2 bad input (the message on stderr names the file and why).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import typer
from torch import Tensor

from float.config import SAMPLES_PER_FRAME, SAMPLING_RATE
from float.device import resolve_device
from preprocess import face_models
from preprocess.encode import EncoderSetupError
from preprocess.face_pick import detector_kind
from preprocess.manifest_encoders import build_audio_encoder, build_motion_autoencoder
from preprocess.media import frame_energy, source_waveform
from shards.files import atomic_write_text
from shards.heldout import pick_split, read_heldout_clips
from shards.tar import ShardError
from trainer.checkpoints import default_output_dir, load_manifest, load_sampling_model
from trainer.errors import SampleError, exit_with_error
from trainer.eval.clips import write_reference
from trainer.eval.lipsync import clip_lipsync, face_rate, mean_lipsync
from trainer.sample.generate import Generated, compile_fmt, generate_items, motion_errors, save_latents
from trainer.sample.media_input import (EMOTION_CHOICES, InputError, emotion_name, emotion_vector, load_audio,
                                        load_reference_image, parse_emotion)
from trainer.sample.official import official_state, run_official_sample
from trainer.sample.options import SampleOptions, SampleResult
from trainer.sample.plot import feature_energy, plot_motion
from trainer.sample.render import (PRECISIONS, decoder_precision, encode_reference, mp4_stream, render_to_mp4,
                                   side_by_side)

AUDIO_GAIN_EVIDENT = 1.05  # error without audio / error with audio above which the audio clearly helps
RANDOM_DECODER_NOTE = (
    "NOTE: the motion decoder has SEEDED RANDOM weights (the shards were made without float.pth), so the "
    "rendered video is NOT a face: it shows the decoder's response to the motion, nothing more. The evidence "
    "of learning is the motion plot and the generation error with vs without audio.")


@dataclass
class Item:
    """One thing to generate: a held-out clip or the user's audio + image."""

    name: str
    features: np.ndarray  # (T, A)
    wr: np.ndarray  # (dim_w,)
    we: np.ndarray  # (7,)
    waveform: np.ndarray | None  # 16 kHz mono, T * 640 samples, for muxing and the energy curve
    reference: np.ndarray | None  # (S, S, 3) uint8 crop to render from
    target: np.ndarray | None = None  # (T, dim_w) ground truth
    emotion_label: str = ""


def _heldout_items(o: SampleOptions, manifest: dict, folder: str, emotion: str | None, encoder, log) -> list[Item]:
    split = pick_split(manifest, o.split)
    clips = read_heldout_clips(folder, manifest, split, o.clips, log=log)
    log(f"held-out clips: {len(clips)} of the {split!r} split of {folder}")
    items = []
    for clip in clips:
        wave = source_waveform(clip.meta, len(clip.motion))
        if emotion is None:
            we = clip.emotion
        else:
            we = emotion_vector(emotion, wave, encoder)
        items.append(Item(clip.key, clip.audio, clip.motion[0], we, wave, clip.reference, clip.motion,
                          emotion_name(we)))
        if wave is None:
            log(f"note: {clip.key}: its source audio is not available here; the video is silent and the plot uses "
                "the audio-feature energy")
    return items


def _new_item(o: SampleOptions, manifest: dict, waveform: np.ndarray, emotion: str | None, decoder, device,
              no_reference: np.ndarray, log) -> Item:
    """The user's audio and portrait, encoded exactly as the training shards were."""
    size = int(manifest.get("input_size") or 0)
    shard_crop = manifest.get("crop") or {}
    # The portrait is cropped by the detector the training clips were cropped with (Haar for older shards).
    detector = detector_kind(shard_crop.get("detector")) if shard_crop.get("mode") == "auto" else None
    reference = load_reference_image(o.image, size, crop=o.crop, warn=log, detector=detector)  # before the slow audio encoder
    spf = SAMPLES_PER_FRAME
    frames = -(-len(waveform) // spf)
    wave = np.zeros(frames * spf, np.float32)
    wave[: len(waveform)] = waveform  # zero-pad the last partial frame, as the shard stage does
    encoder = build_audio_encoder(manifest, o.wav2vec2, o.ser, device)
    features = encoder.encode_audio(wave, frames).astype(np.float32)
    log(f"audio {o.audio}: {len(waveform) / SAMPLING_RATE:.2f} s -> {frames} frames of {encoder.audio_kind} features")
    reason = ""
    if emotion is None:
        emotion = "auto" if encoder.emotion is not None else "none"
        reason = "" if encoder.emotion is not None else \
            " (no speech-emotion model recorded in the manifest or given with --ser)"
    we = emotion_vector(emotion, wave, encoder)
    label = f"auto ({emotion_name(we)})" if emotion == "auto" else emotion_name(we)
    log(f"emotion: {label}{reason}")
    if decoder.autoencoder is not None:
        wr = encode_reference(decoder.autoencoder, reference).motion[0].float().cpu().numpy()
    else:
        # Without the encoder the image cannot become a motion latent: use the no-reference input the
        # model learned under reference dropout (zeros in its latent space, i.e. the mean raw latent
        # when it standardises latents; the sampler standardises wr).
        wr = no_reference
        log("note: the reference image is not encoded (no motion auto-encoder): generating with the "
            "no-reference input (zeros), as seen under reference dropout in training")
    return Item(f"{Path(o.audio).stem}-{Path(o.image).stem}", features, wr, we, wave, reference, None, label)


@dataclass
class Session:
    """What every item of one `floatctl sample` run shares, and the running totals."""

    o: SampleOptions
    sm: object  # trainer.checkpoints.SamplingModel
    manifest: dict
    decoder: object  # preprocess.manifest_encoders.MotionDecoder
    out: Path
    result: SampleResult
    settings: dict
    gen_frames: int = 0
    gen_seconds: float = 0.0
    rendered_frames: int = 0
    render_seconds: float = 0.0

    def add_file(self, kind: str, path) -> None:
        self.result.files.setdefault(kind, []).append(str(path))


def _announce_decoder(decoder, render: bool, log) -> None:
    if decoder.autoencoder is None:
        log(f"no motion-decoder weights: {decoder.note.rstrip('.')}. Writing motion latents and the plot only "
            "(pass --float-ckpt float.pth to render video).")
        return
    if decoder.note:
        log(decoder.note)
    if decoder.random and render:
        log(RANDOM_DECODER_NOTE)


def _errors(item: Item, gen: Generated, silent: Generated, entry: dict, record: dict, log) -> None:
    """Generation error against the ground truth, with the audio and with the audio dropped."""
    with_audio, without = motion_errors(gen.motion, item.target), motion_errors(silent.motion, item.target)
    entry.update({"l1_audio": with_audio["l1"], "mse_audio": with_audio["mse"], "l1_no_audio": without["l1"],
                  "mse_no_audio": without["mse"], "audio_gain": without["l1"] / max(with_audio["l1"], 1e-12)})
    record.update(target=torch.as_tensor(item.target), motion_no_audio=silent.motion)
    log(f"{item.name} ({entry['frames']} frames): L1 to ground truth {with_audio['l1']:.4g} with audio, "
        f"{without['l1']:.4g} with the audio dropped (x{entry['audio_gain']:.2f}); "
        f"MSE {with_audio['mse']:.4g} vs {without['mse']:.4g}")


def _plot(s: Session, item: Item, motion: Tensor) -> dict:
    if item.waveform is not None:
        energy, label = frame_energy(item.waveform, len(motion)), "audio RMS"
    else:
        kind = s.manifest["features"]["audio"].get("kind", "wav2vec2")
        energy, label = feature_energy(item.features, kind), f"{kind} feature energy"
    return plot_motion(s.out / f"{item.name}.plot.png", motion.numpy(), energy, item.target,
                       title=f"{item.name}: step {s.sm.step} {s.sm.weights}, NFE {s.o.nfe}, a_cfg {s.o.a_cfg}",
                       energy_label=label)


def _render(s: Session, item: Item, motion: Tensor, entry: dict, silent: Tensor | None, log) -> None:
    """item.mp4 (with its audio) and, for held-out clips, ground truth | generated."""
    autoencoder = s.decoder.autoencoder
    if item.reference is None:
        log(f"note: {item.name}: no reference image in the shard sample; not rendered")
        return
    o = s.o

    def render(motion: Tensor, suffix: str) -> np.ndarray:
        """Decode and encode at once: each batch goes to the mp4 writer thread as the next one decodes."""
        frames, _ = render_to_mp4(autoencoder, reference, motion, s.out / f"{item.name}{suffix}.mp4", item.waveform,
                                  o.render_batch, o.decoder_precision, o.overlap_encoding)
        return frames

    start = time.perf_counter()
    reference = encode_reference(autoencoder, item.reference)
    video = render(motion, "")
    s.add_file("video", s.out / f"{item.name}.mp4")
    s.render_seconds += time.perf_counter() - start
    s.rendered_frames += len(motion)
    s.add_file("reference", write_reference(s.out / f"{item.name}.reference.png", item.reference))
    truth = no_audio = None
    if item.target is not None:
        # On its own (no caption) for floatctl eval, as are the audio-dropped video and the reference image.
        truth = render(torch.as_tensor(item.target), ".truth")
        s.add_file("truth", s.out / f"{item.name}.truth.mp4")
        pair = side_by_side(truth, video)
        # Encoded in its thread while the audio-dropped motion decodes.
        with mp4_stream(s.out / f"{item.name}.gt_vs_generated.mp4", len(pair), (pair.shape[2], pair.shape[1]),
                        item.waveform) as stream:
            stream.put(pair)
            if silent is not None:
                no_audio = render(silent, ".no_audio")
        s.add_file("side_by_side", s.out / f"{item.name}.gt_vs_generated.mp4")
    elif silent is not None:
        no_audio = render(silent, ".no_audio")
    if no_audio is not None:
        s.add_file("no_audio", s.out / f"{item.name}.no_audio.mp4")
    s.result.rendered = True
    if not o.face_checks:  # the checks below run a face detector on the CPU over every clip: seconds at 512 px
        return
    if item.waveform is not None:  # the lip-sync proxy of the generated, ground-truth and audio-dropped videos
        log(clip_lipsync(entry, item.name, item.waveform, video, truth, no_audio))
    entry["face_rate_generated"] = face_rate(video)
    if truth is not None:
        entry["face_rate_truth"] = face_rate(truth)
    log(f"{item.name}: a face ({'dlib' if face_models.available() else 'Haar'}) is found in {100 * entry['face_rate_generated']:.0f}% of the generated frames"
        + (f" ({100 * entry['face_rate_truth']:.0f}% of the ground-truth reconstruction's)" if truth is not None
           else ""))


def _sample_item(s: Session, item: Item, gen: Generated, silent: Generated | None, log) -> dict:
    o = s.o
    frames = len(gen.motion)
    s.gen_frames, s.gen_seconds = s.gen_frames + frames, s.gen_seconds + gen.seconds
    entry = {"name": item.name, "frames": frames, "emotion": item.emotion_label,
             "motion_fps": frames / max(gen.seconds, 1e-9)}
    record = {"motion": gen.motion, "ref_motion": torch.as_tensor(item.wr), "emotion": torch.as_tensor(item.we),
              "name": item.name, "settings": s.settings}
    if item.target is not None:
        _errors(item, gen, silent, entry, record, log)
    s.add_file("latents", save_latents(s.out / f"{item.name}.motion.pt", record))
    plot = _plot(s, item, gen.motion)
    entry.update({k: plot[k] for k in ("energy_component", "corr_energy", "corr_target_energy", "corr_target")
                  if k in plot})
    s.add_file("plot", plot["path"])
    if "corr_target_energy" in plot:
        log(f"{item.name}: motion component PC{plot['energy_component']} follows the audio energy with correlation "
            f"{plot['corr_target_energy']:+.2f} in the ground truth, {plot['corr_energy']:+.2f} in the generated "
            "motion (see the plot)")
    if o.render and s.decoder.autoencoder is not None:
        _render(s, item, gen.motion, entry, record.get("motion_no_audio"), log)
    return entry


def _summary(s: Session, entries: list[dict], device: torch.device, log) -> dict:
    o = s.o
    speed = {"motion_frames_per_s": s.gen_frames / max(s.gen_seconds, 1e-9), "nfe": o.nfe, "solver": o.solver,
             "device": str(device)}
    log(f"speed: motion {speed['motion_frames_per_s']:.1f} frames/s at NFE {o.nfe} ({o.solver}, {device})")
    if s.rendered_frames:
        # Generation time of the rendered frames plus their rendering (decoder + mp4 encoding).
        seconds = s.gen_seconds * s.rendered_frames / s.gen_frames + s.render_seconds
        speed.update(render_frames_per_s=s.rendered_frames / max(s.render_seconds, 1e-9),
                     end_to_end_frames_per_s=s.rendered_frames / max(seconds, 1e-9))
        log(f"speed: rendering {speed['render_frames_per_s']:.1f} frames/s at {s.decoder.autoencoder.size}px; "
            f"{speed['end_to_end_frames_per_s']:.1f} frames/s including rendering")
    summary = {"items": entries, "speed": speed, "settings": s.settings,
               "decoder": {"source": s.decoder.source, "random": s.decoder.random,
                           "available": s.decoder.autoencoder is not None}}
    summary.update(mean_lipsync(entries, log))
    rates = [e["face_rate_generated"] for e in entries if "face_rate_generated" in e]
    if rates:
        summary["face_rate_generated"] = float(np.mean(rates))
    scored = [e for e in entries if "l1_audio" in e]
    if scored:
        mean = {k: float(np.mean([e[k] for e in scored])) for k in ("l1_audio", "l1_no_audio", "mse_audio",
                                                                      "mse_no_audio")}
        mean["audio_gain"] = mean["l1_no_audio"] / max(mean["l1_audio"], 1e-12)
        summary["mean"] = mean
        # Below a 5% gain the difference is within what the noise seed alone moves.
        verdict = "the model uses the audio" if mean["audio_gain"] > AUDIO_GAIN_EVIDENT else \
            "no clear sign yet that the audio helps (train longer)"
        log(f"mean over {len(scored)} held-out clips: L1 {mean['l1_audio']:.4g} with audio vs "
            f"{mean['l1_no_audio']:.4g} without (x{mean['audio_gain']:.2f}: {verdict})")
    return summary


def run_sample(o: SampleOptions, log: Callable[[str], None] = print) -> SampleResult:
    """Everything `floatctl sample` does; raises SampleError / InputError for bad input."""
    if o.decoder_precision not in PRECISIONS:
        raise SampleError(f"--decoder-precision {o.decoder_precision!r}: choose one of {', '.join(PRECISIONS)}")
    if o.clip_batch < 1:
        raise SampleError("--clip-batch must be at least 1")
    try:
        state = official_state(o.checkpoint)  # an official float.pth takes its own path
        if state is not None:
            return run_official_sample(o, state, log)
        return _run_sample(replace(o, seed=o.seed or 0), log)
    except (EncoderSetupError, ShardError) as e:  # the encoders or shards the checkpoint names
        raise SampleError(str(e)) from None


def _run_sample(o: SampleOptions, log: Callable[[str], None]) -> SampleResult:
    emotion = parse_emotion(o.emotion)
    if (o.audio is None) != (o.image is None):
        raise SampleError("--audio and --image go together (a new portrait speaking new audio); "
                          "give neither to sample held-out clips of the shards")
    if o.clips < 1 or o.render_batch < 1:
        raise SampleError("--clips and --render-batch must be at least 1")
    if o.s3fd is not None:
        raise SampleError("--s3fd crops the portrait as the official code does, for the official float.pth; a "
                          "training checkpoint's portrait is cropped by the detector its shards were made with")
    waveform = load_audio(o.audio) if o.audio is not None else None  # fail fast, before loading models
    if o.image is not None and not Path(o.image).is_file():
        raise InputError(f"image {o.image}: no such file")
    try:
        device = resolve_device(o.device)
    except ValueError as e:
        raise SampleError(str(e)) from None
    sm = load_sampling_model(o.checkpoint, o.use_ema, device, log)
    log(f"checkpoint {sm.checkpoint}: step {sm.step}, {sm.weights.upper()} weights, model {sm.cfg.name} "
        f"(dim_w {sm.cfg.dim_w}, audio {sm.cfg.audio_input_dim}), device {device}")
    if o.compile:
        compile_fmt(sm.model, device, log)
    manifest, folder = load_manifest(sm, o.data_root, log)
    decoder = build_motion_autoencoder(manifest, o.float_ckpt, sm.cfg.dim_w, device)
    _announce_decoder(decoder, o.render, log)

    if waveform is not None:
        mean = getattr(sm.model, "motion_mean", None)
        no_reference = mean.float().cpu().numpy() if mean is not None else np.zeros(sm.cfg.dim_w, np.float32)
        items = [_new_item(o, manifest, waveform, emotion, decoder, device, no_reference, log)]
    else:
        encoder = build_audio_encoder(manifest, o.wav2vec2, o.ser, device, need_audio=False) \
            if emotion == "auto" else None
        items = _heldout_items(o, manifest, folder, emotion, encoder, log)

    out = Path(o.out) if o.out else default_output_dir(sm.checkpoint)  # a run folder: the checkpoint it named
    out.mkdir(parents=True, exist_ok=True)
    settings = {"nfe": o.nfe, "solver": o.solver, "a_cfg": o.a_cfg, "e_cfg": o.e_cfg, "seed": o.seed,
                "weights": sm.weights, "step": sm.step, "checkpoint": str(sm.checkpoint),
                "decoder_precision": decoder_precision(o.decoder_precision, device), "compile": o.compile}
    s = Session(o, sm, manifest, decoder, out, SampleResult(out, decoder_random=decoder.autoencoder is not None
                                                            and decoder.random), settings)
    entries = [_sample_item(s, item, gen, silent, log)
               for item, (gen, silent) in zip(items, generate_items(sm.model, items, o, log))]
    s.result.metrics = _summary(s, entries, device, log)
    metrics_path = out / "metrics.json"
    atomic_write_text(metrics_path, json.dumps(s.result.metrics, indent=2) + "\n")
    s.add_file("metrics", metrics_path)
    log(f"outputs in {out}:")
    for kind in ("video", "side_by_side", "truth", "no_audio", "reference", "plot", "latents", "metrics"):
        for path in s.result.files.get(kind, []):
            log(f"  {kind.replace('_', ' '):13s} {path}")
    if s.result.decoder_random and s.result.rendered:
        log("(the videos come from random decoder weights: not a face; see the plot and metrics)")
    return s.result


def sample(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (runs/NAME/checkpoints/final_step_N.pt), a run folder (its final checkpoint, else its newest; says which) or the official float.pth (with --audio, --image, --wav2vec2, --ser)."),
    audio: Optional[Path] = typer.Option(None, help="New speech: wav, mp3, flac, or a video's audio track "
                                                    "(with --image)."),
    image: Optional[Path] = typer.Option(None, help="New reference portrait of any size (with --audio)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: runs/NAME/samples/<ckpt-stem>)."),
    data_root: Optional[str] = typer.Option(None, help="Shard folder or URL (default: the one the checkpoint was trained "
                                                        "on); its manifest names the encoders to use."),
    split: str = typer.Option("auto", help="Held-out split to sample: auto (test, else val), val or test."),
    clips: int = typer.Option(2, help="Held-out clips to sample."),
    emotion: Optional[str] = typer.Option(None, help=f"One of {', '.join(EMOTION_CHOICES)} (default: the clip's "
                                                     "own emotion; for --audio: auto when an SER model is known, "
                                                     "else none)."),
    ser: Optional[Path] = typer.Option(None, help="Speech-emotion model folder for --emotion auto (default: the "
                                                  "one recorded in the manifest)."),
    wav2vec2: Optional[Path] = typer.Option(None, help="wav2vec2 folder (default: the one recorded in the "
                                                       "manifest)."),
    float_ckpt: Optional[Path] = typer.Option(None, help="Official float.pth whose motion auto-encoder renders "
                                                         "(default: the one recorded in the manifest)."),
    no_crop: bool = typer.Option(False, "--no-crop", help="The image is already a face crop: only resize it."),
    a_cfg: float = typer.Option(2.0, help="Audio guidance scale."),
    e_cfg: float = typer.Option(1.0, help="Emotion guidance scale."),
    nfe: int = typer.Option(10, help="Vector-field evaluations per window."),
    solver: str = typer.Option("euler", help="euler, midpoint or rk4."),
    seed: Optional[int] = typer.Option(None, help="Noise seed (default 0; 15, the official one, with --official-grid "
                                                   "on float.pth)."),
    official_grid: bool = typer.Option(False, "--official-grid", help="The official sampler: Euler on linspace(0, 1, "
                                       "nfe) (nfe-1 steps), the noise re-seeded before every window."),
    ema: bool = typer.Option(True, "--ema/--raw", help="EMA weights (default) or the raw training weights."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    render: bool = typer.Option(True, "--render/--no-render", help="Render video (needs the motion decoder)."),
    render_batch: int = typer.Option(16, help="Frames per motion-decoder pass."),
    decoder_precision: str = typer.Option("auto", help="The motion decoder's precision: auto (bf16 autocast on CUDA, "
                                                       "fp32 elsewhere), fp32 or bf16."),
    clip_batch: int = typer.Option(8, help="Held-out clips generated together, in one batch through the FMT."),
    face_checks: bool = typer.Option(True, "--face-checks/--no-face-checks", help="The lip-sync proxy and the share of "
                                     "frames with a face (a face detector on the CPU over every video: seconds at "
                                     "512 px)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the FMT's forward (CUDA only; the first "
                                                          "window pays the compilation)."),
    s3fd: Optional[Path] = typer.Option(None, help="float.pth only: face_alignment's S3FD weights "
                                                   "(s3fd-619a316812.pth) to crop the portrait with the official "
                                                   "detector; without it dlib (or Haar) stands in, mapped onto S3FD's "
                                                   "box."),
) -> None:
    """Generate motion with a checkpoint: held-out clips by default, or --audio with --image; render and plot."""
    options = SampleOptions(checkpoint, audio, image, out, data_root, split, clips, emotion, ser, wav2vec2,
                            float_ckpt, not no_crop, a_cfg, e_cfg, nfe, solver, seed, ema, device, render,
                            render_batch, official_grid, s3fd, decoder_precision, clip_batch, compile,
                            face_checks=face_checks)
    try:
        run_sample(options, log=lambda m: print(m, flush=True))
    except (SampleError, InputError) as e:
        exit_with_error(str(e))
