"""The measurements behind benchmarks/gpu.py: the real trainers and sampler, and the bare steps they are held to.

Each function makes its own synthetic data in a work folder, runs one thing and returns plain numbers;
gpu.py prints them against the issue's targets. The real runs go through the trainers' Python entry
points (``trainer.train_fmt.train`` / ``trainer.train_motion.train`` with the settings `floatctl train`
builds, ``trainer.sample.command.run_sample``), so their loop, loader, EMA, logging and checkpoint
cadence are what is timed; their throughput and data-wait figures are the ones they log.
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import time
import wave
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from float.config import FloatConfig, get_preset
from float.loss import rectified_flow_loss
from float.model import FloatMotionModel, count_parameters
from float.motion_autoencoder import MotionAutoEncoder
from float.motion_training import MotionLossWeights, generator_losses, prepare_for_training
from float.perceptual import build_perceptual

from crop_factory import make_crop_shards  # tests/crop_factory.py
from fmt_step import make_batch  # benchmarks/fmt_step.py
from loader import loader_throughput  # benchmarks/loader.py
from shard_factory import make_shards  # tests/shard_factory.py


@dataclass
class Sizes:
    """How big each row runs: the paper sizes on a GPU, tiny ones for --smoke on a CPU."""

    fmt_preset: str
    fmt_overrides: dict
    fmt_batch: int
    fmt_log_step: int  # steps per logged window; the first window (compilation, start-up) is not counted
    fmt_windows: int  # logged windows in all (the first one included)
    fmt_clips: int
    fmt_frames: int
    compile: bool
    motion_preset: str
    motion_size: int
    motion_batch: int
    motion_log_step: int
    motion_windows: int
    motion_clips: int
    motion_frames: int
    sample_seconds: float
    sample_size: int  # the motion decoder's input size for `floatctl sample`
    sample_nfe: int
    audio: str  # "wav2vec2" (the random wav2vec2-base, as the shard stage records it) or "mel"
    sample_render_batch: int  # frames per decoder pass of the new sampling path (the old one: 16, the CLI default)


GPU = Sizes("paper", {}, 256, 10, 4, 64, 200, True,
            "paper", 512, 32, 5, 4, 16, 24,
            10.0, 512, 10, "wav2vec2", 50)
SMOKE = Sizes("tiny", {"dim_w": 512, "dim_a": 32, "dim_h": 32, "depth": 1, "num_heads": 2}, 4, 2, 3, 6, 70, False,
              "tiny", 32, 2, 2, 3, 4, 8,
              1.0, 16, 2, "mel", 4)
# `floatctl sample` as it ran before the fast path: fp32 decoder, 16 frames a pass, mp4 encoded after decoding.
OLD_SAMPLING = {"decoder_precision": "fp32", "render_batch": 16, "overlap_encoding": False}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed_steps(step, batches: list, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step`` (alternating over ``batches``) after ``warmup`` untimed ones, the
    device synchronised at both ends; the peak memory counter starts before the warm-up."""
    reset_peak(device)
    for i in range(warmup):
        step(batches[i % len(batches)])
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    sync(device)
    return time.perf_counter() - t0


def amp_dtype(device: torch.device) -> torch.dtype | None:
    return torch.bfloat16 if device.type == "cuda" else None


def quiet_run(fn, *args, **kwargs):
    """Call fn with its console log captured; on failure the log's tail is printed, then the error raised."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            return fn(*args, **kwargs)
    except BaseException:
        print(buffer.getvalue()[-4000:])
        raise


def logged_windows(run_dir: Path, profiled: bool = False) -> list[dict]:
    """The trainer's logged train windows after the first (which holds compilation and start-up), and before the
    last when ``profiled`` (the profiler slows the steps it records)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("split") == "train" and "samples_per_s" in r]
    train = train[:-1] if profiled else train
    if len(train) < 2:
        raise RuntimeError(f"{run_dir}/metrics.jsonl: {len(train)} train window(s) logged, need at least 2")
    return train[1:]


def profile_window(log_step: int, windows: int) -> tuple[int, str]:
    """(steps in all, --profile-steps): one more logged window after the timed ones, its first steps profiled."""
    first = log_step * windows
    return first + log_step, f"{first}:{first + min(5, log_step)}"


# ---------------------------------------------------------------- data
def audio_encoder_info(kind: str) -> tuple[int, dict]:
    """(features per frame, the manifest's audio encoder entry) as the shard stage records them."""
    if kind == "mel":
        from preprocess.encode import LogMel

        mel = LogMel()
        return mel.dim, {"fingerprint": mel.fingerprint, "source": mel.description, "random": False, "kind": "mel"}
    from float.audio_encoder import Wav2Vec2Features

    w2v = Wav2Vec2Features.random(seed=0, size="base")
    return w2v.feature_dim(all_layers=True), {"fingerprint": w2v.fingerprint, "source": "random-seed-0",
                                              "random": True, "kind": "wav2vec2"}


def make_latent_shards(folder: Path, sizes: Sizes) -> FloatConfig:
    """Latent shards at the model's widths whose manifest names encoders `floatctl sample` can rebuild:
    the audio featuriser and a seeded random motion auto-encoder at ``sample_size`` px."""
    from preprocess.encode import load_motion_encoder
    from shards.manifest import write_manifest

    audio_dim, audio_info = audio_encoder_info(sizes.audio)
    cfg = get_preset(sizes.fmt_preset, **{"audio_input_dim": audio_dim, **sizes.fmt_overrides})
    _, motion_made = load_motion_encoder(sizes.sample_size, None, 0)
    manifest = make_shards(folder, {"train": sizes.fmt_clips, "val": 1}, frames=sizes.fmt_frames, dim_w=cfg.dim_w,
                           audio_dim=audio_dim, clips_per_shard=8, motion_fingerprint=motion_made["fingerprint"])
    manifest["input_size"] = sizes.sample_size
    manifest["features"]["audio"].update(kind=sizes.audio, layers="all" if sizes.audio == "wav2vec2" else None)
    manifest["encoders"]["audio"] = audio_info
    manifest["encoders"]["motion"].update(source="random-seed-0", width=1.0)
    write_manifest(folder, manifest)
    return cfg


def write_speech(path: Path, seconds: float, rate: int = 16000) -> Path:
    """A voiced, syllable-like 16 kHz wav."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    samples = 0.5 * envelope * np.sin(2 * np.pi * 180 * t) * (1 + 0.3 * np.sin(2 * np.pi * 900 * t))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def write_portrait(path: Path) -> Path:
    """The public-domain astronaut of scikit-image (the synthetic set's face) as a PNG."""
    import cv2
    import skimage.data

    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


# ---------------------------------------------------------------- stage 2: the FMT
def fmt_flops_per_sample(cfg: FloatConfig, parameters: int) -> float:
    """6 * N * tokens: forward + backward of every trainable weight once per token of the window
    (preceding + current frames); attention's own FLOPs are left out, so MFU is a slight underestimate."""
    return 6.0 * parameters * (cfg.num_prev_frames + cfg.num_frames)


def real_fmt(shards: Path, out: Path, sizes: Sizes, device: torch.device) -> dict:
    """`floatctl train --preset P --compile` on the shards: samples/s and data wait as the trainer logs them."""
    from trainer.settings import TrainSettings
    from trainer.train_fmt import train

    steps, profile = profile_window(sizes.fmt_log_step, sizes.fmt_windows)
    settings = TrainSettings(data_root=str(shards), out=str(out), preset=sizes.fmt_preset,
                             overrides=dict(sizes.fmt_overrides), steps=steps, batch_size=sizes.fmt_batch,
                             compile=sizes.compile, device=device.type, log_step=sizes.fmt_log_step, val_step=0,
                             sample_step=0, progress=False, profile_steps=profile)
    reset_peak(device)
    t0 = time.perf_counter()
    result = quiet_run(train, settings)
    wall = time.perf_counter() - t0
    windows = logged_windows(out, profiled=True)
    config = json.loads((out / "config.json").read_text())["resolved"]
    return {"samples_per_s": float(np.mean([w["samples_per_s"] for w in windows])),
            "data_wait": float(np.mean([w["data_wait_fraction"] for w in windows])),
            "peak_gib": peak_gib(device), "wall_s": wall, "steps": steps, "workers": config["num_workers"],
            "parameters": config["parameters"], "precision": config["precision"],
            "checkpoint": result.final_checkpoint, "profile": profile_summary(out)}


def profile_summary(run_dir: Path) -> dict | None:
    """The run's --profile-steps summary (trainer/step_profiler.py), or None when none was written."""
    path = run_dir / "profile" / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def bare_fmt(cfg: FloatConfig, sizes: Sizes, device: torch.device, steps: int, warmup: int = 3) -> dict:
    """The same model and batch with nothing around the step: autocast bf16, backward, fused AdamW (no clip,
    EMA, loader or logging), on random batches already on the device; compiled as the real run is."""
    torch.manual_seed(0)
    model = FloatMotionModel(cfg).to(device).train()
    forward = torch.compile(model) if sizes.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    batches = [make_batch(cfg, sizes.fmt_batch, device) for _ in range(2)]
    dtype = amp_dtype(device)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = rectified_flow_loss(forward, batch)["total"]
        loss.backward()
        optimizer.step()

    rate = steps * sizes.fmt_batch / timed_steps(step, batches, warmup, steps, device)
    return {"samples_per_s": rate, "peak_gib": peak_gib(device), "parameters": count_parameters(model)}


def loader_alone(shards: Path, cfg: FloatConfig, sizes: Sizes, workers: int, device: torch.device) -> float:
    """Windows/s of the trainer's shard loader alone, with the real run's workers and batch, used as the real
    run uses it: clip records (cut="device" where --window-cut auto picks it), copied and cut on the device by
    trainer/device_feed.py one batch ahead, synchronised before the clock stops."""
    from trainer.train_fmt import resolve_window_cut

    from shards.loader import make_loader
    from shards.sources import shard_urls
    from shards.windows import WindowSpec

    loader = make_loader(shard_urls(shards, "train"), WindowSpec.from_config(cfg), sizes.fmt_batch, workers, seed=0,
                         pin_memory=device.type == "cuda", cut=resolve_window_cut("auto", device),
                         motion_dim=cfg.dim_w, audio_dim=cfg.audio_input_dim)
    return loader_throughput(loader, batches=max(10, sizes.fmt_log_step * 2), device=device)["windows_per_s"]


# ---------------------------------------------------------------- stage 1: the motion auto-encoder
def trainer_loss_weights() -> MotionLossWeights:
    """The loss weights `floatctl train-motion` uses by default (L1 + structure loss, no adversarial term)."""
    from trainer.settings import MotionSettings

    s = MotionSettings()
    return MotionLossWeights(s.l1_weight, s.perceptual_weight, s.adversarial_weight)


def motion_config(sizes: Sizes) -> FloatConfig:
    return get_preset(sizes.motion_preset, input_size=sizes.motion_size)


def motion_step_flops(cfg: FloatConfig, device: torch.device) -> float:
    """FLOPs of one pair's training step (forward + backward, L1 + structure loss), counted by
    torch.utils.flop_counter on a batch of one: convolutions and matrix products."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = prepare_for_training(MotionAutoEncoder(cfg.input_size, cfg.dim_w, cfg.dim_m, cfg.ae_width)).to(device)
    perceptual, _ = build_perceptual(None, device)
    images = torch.rand(2, 1, 3, cfg.input_size, cfg.input_size, device=device) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        losses, _ = generator_losses(model, images[0], images[1], perceptual, None, trainer_loss_weights())
        losses["total"].backward()
    return float(counter.get_total_flops())


def real_motion(crops: Path, out: Path, sizes: Sizes, device: torch.device) -> dict:
    """`floatctl train-motion` at ``motion_size`` px (its defaults: L1 + structure loss, bf16 on CUDA)."""
    from trainer.settings import MotionSettings
    from trainer.train_motion import train

    steps, profile = profile_window(sizes.motion_log_step, sizes.motion_windows)
    settings = MotionSettings(data_root=str(crops), out=str(out), preset=sizes.motion_preset, steps=steps,
                              batch_size=sizes.motion_batch, device=device.type, log_step=sizes.motion_log_step,
                              val_step=0, sample_step=0, progress=False, profile_steps=profile)
    reset_peak(device)
    quiet_run(train, settings)
    windows = logged_windows(out, profiled=True)
    return {"pairs_per_s": float(np.mean([w["samples_per_s"] for w in windows])),
            "data_wait": float(np.mean([w["data_wait_fraction"] for w in windows])), "peak_gib": peak_gib(device),
            "profile": profile_summary(out)}


def bare_motion(cfg: FloatConfig, sizes: Sizes, device: torch.device, steps: int, warmup: int = 2) -> dict:
    """The auto-encoder's step alone: the same losses under autocast bf16, backward, fused AdamW, on random
    (source, driving) batches already on the device."""
    torch.manual_seed(0)
    model = prepare_for_training(MotionAutoEncoder(cfg.input_size, cfg.dim_w, cfg.dim_m, cfg.ae_width)).to(device)
    perceptual, _ = build_perceptual(None, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    shape = (2, sizes.motion_batch, 3, cfg.input_size, cfg.input_size)
    batches = [torch.rand(shape, device=device) * 2 - 1 for _ in range(2)]
    dtype = amp_dtype(device)

    def step(pair):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            losses, _ = generator_losses(model, pair[0], pair[1], perceptual, None, trainer_loss_weights())
        losses["total"].backward()
        optimizer.step()

    seconds = timed_steps(step, batches, warmup, steps, device)
    return {"pairs_per_s": steps * sizes.motion_batch / seconds, "peak_gib": peak_gib(device)}


# Memory torch reports for the two card sizes the issue asks about (torch.cuda.get_device_properties.total_memory):
# an 80 GB H100/A100 shows about 79.1 GiB, a 141 GB H200 about 139.8 GiB.
CARDS_GIB = {"80 GB": 79.1, "141 GB": 139.8}
FIT_HEADROOM = 0.9  # of a card's memory a batch may plan on: the allocator's fragmentation and the CUDA context


def largest_batch(peaks: dict[int, float], capacity_gib: float, headroom: float = FIT_HEADROOM) -> int:
    """The largest batch whose peak stays under ``headroom * capacity_gib``, on the line through two measured
    (batch, peak GiB) points: a step's memory is the weights and optimizer state plus activations per pair."""
    (b1, m1), (b2, m2) = sorted(peaks.items())[:2]
    per_pair = (m2 - m1) / (b2 - b1)
    if per_pair <= 0:
        raise ValueError(f"peak memory did not grow with the batch: {peaks}")
    return max(0, int((headroom * capacity_gib - (m1 - per_pair * b1)) // per_pair))


def motion_batch_fit(cfg: FloatConfig, sizes: Sizes, device: torch.device) -> dict:
    """Stage 1's bare step at two batches (a quarter and half of ``motion_batch``): its peak memory, the line
    through them, the largest batch that fits each card of CARDS_GIB and this card by that line, and one step at
    this card's largest batch, run to check it (smaller by a tenth each time it runs out of memory)."""
    probes = (max(1, sizes.motion_batch // 4), max(2, sizes.motion_batch // 2))
    runs = {b: bare_motion(cfg, replace(sizes, motion_batch=b), device, steps=1, warmup=1) for b in probes}
    if device.type != "cuda":
        return {"probes": probes, "pairs_per_s": {b: r["pairs_per_s"] for b, r in runs.items()}}
    peaks = {b: r["peak_gib"] for b, r in runs.items()}
    here = torch.cuda.get_device_properties(device).total_memory / 2**30
    fits = {card: largest_batch(peaks, gib) for card, gib in CARDS_GIB.items()}
    batch, checked = largest_batch(peaks, here), None
    while batch >= probes[1] and checked is None:
        try:
            checked = bare_motion(cfg, replace(sizes, motion_batch=batch), device, steps=1, warmup=1)
        except torch.OutOfMemoryError:
            gc.collect()  # the failed step's model and batches
            torch.cuda.empty_cache()
            batch = int(batch * 0.9)
    return {"probes": probes, "peaks": peaks, "fits": fits, "here_gib": here, "checked_batch": batch,
            "checked": checked}


def make_crops(folder: Path, sizes: Sizes) -> None:
    make_crop_shards(folder, {"train": sizes.motion_clips}, frames=sizes.motion_frames, size=sizes.motion_size,
                     clips_per_shard=4)


# ---------------------------------------------------------------- sampling
def result_frames(metrics: dict) -> int:
    return int(sum(item["frames"] for item in metrics["items"]))


def sample_clip(checkpoint: Path, work: Path, sizes: Sizes, device: torch.device) -> dict:
    """`floatctl sample CKPT --audio A.wav --image P.png` of a ``sample_seconds`` clip, three times in this process:
    a cold call (CUDA kernels, allocator, model loading; with the face checks), then warm with the old settings
    (OLD_SAMPLING) and warm with the new path (bf16 decoder on CUDA, ``sample_render_batch`` frames a pass, mp4
    encoded during decoding), both with --no-face-checks: the dlib lip-sync proxy and face rate are diagnostics
    on the CPU, not sampling.
    {"new": figures, "old": figures}, each with its wall seconds, frames/s and the video written."""
    from trainer.sample.command import run_sample
    from trainer.sample.options import SampleOptions

    audio = write_speech(work / "speech.wav", sizes.sample_seconds)
    image = write_portrait(work / "portrait.png")
    new = {"render_batch": sizes.sample_render_batch}
    unchecked = {"face_checks": False}  # the timed calls: no dlib lip-sync proxy / face rate on the CPU
    figures = {}
    for attempt, settings in (("cold", new), ("old", {**OLD_SAMPLING, **unchecked}), ("new", {**new, **unchecked})):
        options = SampleOptions(checkpoint, audio=audio, image=image, out=work / f"sample-{attempt}",
                                emotion="neutral", nfe=sizes.sample_nfe, device=device.type, **settings)
        sync(device)
        t0 = time.perf_counter()
        result = quiet_run(run_sample, options, log=print)
        sync(device)
        seconds = time.perf_counter() - t0
        videos = result.files.get("video", [])
        if not videos or not Path(videos[0]).is_file():
            raise RuntimeError(f"floatctl sample wrote no video in {result.out}")
        speed = result.metrics["speed"]
        figures[attempt] = {
            "s": seconds, "motion_fps": speed["motion_frames_per_s"], "render_fps": speed.get("render_frames_per_s", 0.0),
            # generation + decoding + mp4 of the rendered clip, as the command times them (no loading, no checks)
            "generate_render_s": result_frames(result.metrics) / max(speed.get("end_to_end_frames_per_s", 0.0), 1e-9),
            "precision": result.metrics["settings"]["decoder_precision"], "video": videos[0]}
    figures["new"]["cold_s"] = figures["cold"]["s"]
    figures["frames"] = int(round(sizes.sample_seconds * 25))
    return figures


def decoder_alone(sizes: Sizes, device: torch.device, precision: str, batches: int = 5) -> float:
    """Frames/s of the motion decoder alone at ``sample_size`` px (render_motion: decode and convert to uint8
    frames, no mp4), ``sample_render_batch`` frames a pass, under ``precision``; a seeded random auto-encoder
    of the sampling path's width."""
    from trainer.sample.render import encode_reference, render_motion

    torch.manual_seed(0)
    autoencoder = MotionAutoEncoder(sizes.sample_size).to(device).eval()
    image = np.random.default_rng(0).integers(0, 256, (sizes.sample_size, sizes.sample_size, 3), dtype=np.uint8)
    reference = encode_reference(autoencoder, image)
    motion = reference.motion.cpu() + 0.1 * torch.randn(sizes.sample_render_batch * batches, reference.motion.shape[1])

    def decode(_):
        render_motion(autoencoder, reference, motion, sizes.sample_render_batch, precision)

    seconds = timed_steps(decode, [None], warmup=1, steps=1, device=device)
    return len(motion) / seconds
