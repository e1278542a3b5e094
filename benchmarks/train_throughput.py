"""Training throughput: does the shard loader keep the trainer fed, and what does it save?

Measured in one process, on one device, with the same model and training step:
  (a) the shard loader alone (windows/s);
  (b) training samples/s fed by the shard loader vs by batches already in memory:
      the ratio is the input stall (1.00 = the loader never makes the step wait);
  (c) training fed on the fly, as older FLOAT training scripts do: every sample
      decodes its video and audio (PyAV), runs the motion encoder on the 60
      frames and wav2vec2 on the audio, then the same step.

Data is synthetic and made here: shards with the widths the encoders produce,
and one mp4 clip (with audio) for (c). Sizes follow --scale: "tiny" (CPU
default: tiny preset, tiny wav2vec2, random weights) or "paper" (GPU default:
paper preset, wav2vec2-base architecture, 512 px motion encoder).

    .venv/bin/python benchmarks/train_throughput.py [--scale tiny] [--device cpu] [--steps 20]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "tests", REPO / "benchmarks"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from loader import loader_throughput  # noqa: E402  benchmarks/loader.py
from shard_factory import make_shards  # noqa: E402  tests/shard_factory.py

from float.audio_encoder import Wav2Vec2Features  # noqa: E402
from float.config import get_preset  # noqa: E402
from float.loss import rectified_flow_loss  # noqa: E402
from float.model import FloatMotionModel, count_parameters  # noqa: E402
from float.motion_autoencoder import MotionAutoEncoder  # noqa: E402
from preprocess.media import decode_audio, decode_video  # noqa: E402
from preprocess.mp4 import write_mp4  # noqa: E402
from shards.loader import make_loader  # noqa: E402
from shards.sources import shard_urls  # noqa: E402
from shards.windows import WindowSpec  # noqa: E402
from trainer.ema import EMA  # noqa: E402
from trainer.run import resolve_precision, to_device  # noqa: E402

SCALES = {"tiny": ("tiny", "tiny"), "paper": ("paper", "base")}  # scale -> (preset, wav2vec2 size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Trainer:
    """The trainer's step (autocast, backward, clip 1.0, AdamW, EMA) on one model, for every feed."""

    def __init__(self, cfg, device: torch.device, precision: str):
        torch.manual_seed(0)
        self.model = FloatMotionModel(cfg).to(device).train()
        self.ema = EMA(self.model, 0.9999)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.amp_dtype, _ = resolve_precision(precision, device)
        self.device = device

    def step(self, batch: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            loss = rectified_flow_loss(self.model, batch)["total"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.ema.update(self.model)


def timed_steps(trainer: Trainer, batches, steps: int) -> float:
    """Seconds for ``steps`` training steps fed from the iterator ``batches`` (the data wait included)."""
    sync(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(to_device(next(batches), trainer.device))
    sync(trainer.device)
    return time.perf_counter() - start


def compare_feeds(trainer: Trainer, feeds: dict, steps: int, batch_size: int, warmup: int = 1) -> dict[str, float]:
    """Samples/s of each feed (name -> batch iterator) over ``steps`` steps each, the feeds taking turns
    step by step so that other load on the machine hits every feed alike."""
    for batches in feeds.values():
        timed_steps(trainer, batches, warmup)
    seconds = dict.fromkeys(feeds, 0.0)
    for _ in range(steps):
        for name, batches in feeds.items():
            seconds[name] += timed_steps(trainer, batches, 1)
    return {name: steps * batch_size / t for name, t in seconds.items()}


# ---------------------------------------------------------------- the on-the-fly baseline
def write_synthetic_clip(path: Path, size: int, seconds: float, seed: int = 0) -> Path:
    """An mp4 of a moving colour pattern with a voiced-sounding audio track."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * 25)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for k in range(frames):
        phase = 2 * np.pi * k / 25
        rgb = [np.sin(6 * xx + phase + c) * np.cos(4 * yy - phase / 2 + c) for c in range(3)]
        images.append(((np.stack(rgb, -1) * 0.5 + 0.5) * 255).astype(np.uint8))
    t = np.arange(int(seconds * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.normal(size=t.shape))
    return write_mp4(path, images, (size, size), fps=25, audio=audio[None].astype(np.float32), audio_rate=16000)


class OnTheFly:
    """Batches made per step from the raw clip: decode, motion encoder, wav2vec2 (no precomputed features)."""

    def __init__(self, clip: Path, cfg, motion_encoder: MotionAutoEncoder, wav2vec2: Wav2Vec2Features,
                 batch_size: int, device: torch.device, seed: int = 0):
        self.clip, self.cfg, self.batch_size, self.device = clip, cfg, batch_size, device
        self.motion_encoder, self.wav2vec2 = motion_encoder.to(device).eval(), wav2vec2.to(device).eval()
        self.rng = np.random.default_rng(seed)

    @torch.no_grad()
    def sample(self) -> dict:
        cfg = self.cfg
        P, N = cfg.num_prev_frames, cfg.num_frames
        frames, _ = decode_video(str(self.clip))  # (T, S, S, 3) uint8; the whole clip, every time
        audio = decode_audio(str(self.clip))
        start = int(self.rng.integers(P, len(frames) - N + 1))  # a window with real preceding frames
        picked = np.concatenate([frames[start - P:start + N], frames[:1]])  # 60 frames + reference
        images = torch.from_numpy(picked).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1
        # In chunks: the StyleGAN2-style encoder needs a lot of memory per frame on a CPU.
        motion = torch.cat([self.motion_encoder.encode_motion(chunk)[0] for chunk in images.split(16)])
        spf = cfg.samples_per_frame
        wave = torch.from_numpy(audio[(start - P) * spf:(start + N) * spf].copy()).to(self.device)[None]
        features = self.wav2vec2(self.wav2vec2.normalize(wave), seq_len=P + N)[0]
        return {"motion": motion[P:P + N], "prev_motion": motion[:P], "prev_mask": torch.ones(P, dtype=torch.bool),
                "audio": features[P:], "prev_audio": features[:P], "ref_motion": motion[-1],
                "emotion": torch.zeros(cfg.dim_e)}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        samples = [self.sample() for _ in range(self.batch_size)]
        return {k: torch.stack([s[k].to(self.device) for s in samples]) for k in samples[0]}


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", choices=sorted(SCALES), default=None,
                        help="model and encoder sizes [default: paper on CUDA, tiny on CPU]")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps for (b)")
    parser.add_argument("--fly-steps", type=int, default=None, help="timed steps for (c) [default: 1 on CPU, 5 on CUDA]")
    parser.add_argument("--fly-batch", type=int, default=None,
                        help="samples per step for (c) [default: 1 on CPU (the encoders dominate), --batch-size on CUDA]")
    parser.add_argument("--face-size", type=int, default=None,
                        help="motion encoder input for (c) [default: the preset's; 64 at tiny scale on CPU]")
    parser.add_argument("--workers", type=int, default=None, help="loader workers [default: 0 on CPU, 4 on CUDA]")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args()

    device = torch.device(args.device)
    scale = args.scale or ("paper" if device.type == "cuda" else "tiny")
    preset, w2v_size = SCALES[scale]
    on_gpu = device.type == "cuda"
    workers = args.workers if args.workers is not None else (4 if on_gpu else 0)
    fly_steps = args.fly_steps or (5 if on_gpu else 1)
    fly_batch = args.fly_batch or (args.batch_size if on_gpu else 1)
    wav2vec2 = Wav2Vec2Features.random(seed=0, size=w2v_size)
    cfg = get_preset(preset, audio_input_dim=wav2vec2.feature_dim(all_layers=True))
    face = args.face_size or (64 if scale == "tiny" and not on_gpu else cfg.input_size)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    spec = WindowSpec.from_config(cfg)
    trainer = Trainer(cfg, device, args.precision)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"scale {scale}: preset {preset}, {count_parameters(trainer.model) / 1e6:.2f} M trainable, "
          f"audio features {cfg.audio_input_dim}, batch {args.batch_size}, "
          f"precision {trainer.amp_dtype or 'fp32'}, loader workers {workers}; (c): motion encoder {face} px, "
          f"{fly_batch} sample(s) x {fly_steps} step(s)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        t0 = time.perf_counter()
        make_shards(folder, {"train": args.clips}, frames=args.frames, dim_w=cfg.dim_w,
                    audio_dim=cfg.audio_input_dim, clips_per_shard=8)
        print(f"wrote {args.clips} synthetic clips x {args.frames} frames in {time.perf_counter() - t0:.1f} s")
        urls = shard_urls(folder, "train")

        def loader():
            return make_loader(urls, spec, args.batch_size, workers, seed=0, pin_memory=device.type == "cuda",
                               motion_dim=cfg.dim_w, audio_dim=cfg.audio_input_dim)

        # (a) the loader alone
        alone = loader_throughput(loader(), batches=max(args.steps, 20))["windows_per_s"]
        print(f"(a) shard loader alone              {alone:10.4g} windows/s", flush=True)
        # (b) training from memory vs from the loader
        cached = [to_device(b, device) for b in itertools.islice(iter(loader()), 4)]
        rates = compare_feeds(trainer, {"memory": itertools.cycle(cached), "loader": iter(loader())},
                              args.steps, args.batch_size)
        in_memory, streamed = rates["memory"], rates["loader"]
        print(f"(b) training, batches in memory     {in_memory:10.4g} samples/s", flush=True)
        print(f"    training, shard loader          {streamed:10.4g} samples/s   "
              f"loader/memory = {streamed / in_memory:.2f} (1.00 = no input stall)", flush=True)
        # (c) on-the-fly decoding and encoders
        clip = write_synthetic_clip(Path(tmp) / "clip.mp4", face, seconds=args.frames / 25)
        motion_encoder = MotionAutoEncoder(face, style_dim=cfg.dim_w, motion_dim=cfg.dim_m)
        fly_feed = OnTheFly(clip, cfg, motion_encoder, wav2vec2, fly_batch, device)
        if on_gpu:
            timed_steps(trainer, fly_feed, 1)  # warm-up (kernels, allocator)
        fly = fly_steps * fly_batch / timed_steps(trainer, fly_feed, fly_steps)
        print(f"(c) training, on-the-fly encoders   {fly:10.4g} samples/s   "
              f"on-the-fly/memory = {fly / in_memory:.3f}; the shard loader is {streamed / fly:.1f}x faster")


if __name__ == "__main__":
    main()
