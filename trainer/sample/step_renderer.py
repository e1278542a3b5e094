"""Rendering the motion samples the trainer saves every --sample-step.

Each saved window is decoded by the motion auto-encoder the shards were made
with (official weights, or the same seeded random ones), from its clip's
reference image, next to its ground truth: ``step_N.pt`` -> ``step_N/KEY.mp4``.
Without decoder weights the samples stay latents, said once in the log. Each
rendered window gets the lip-sync proxy (trainer/lipsync.py) of its generated
and ground-truth videos against the clip's source audio, when the source file is
still where meta.json says: logged, and saved as ``step_N/lipsync.json``.

With a ``media`` log (trainer/media_log.py) each window also goes to TensorBoard /
wandb: its motion plot (``step_N/KEY.plot.png``) and audio always, and when it
is rendered the ground truth | generated | audio dropped strip and a short video.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from float.config import SAMPLES_PER_FRAME
from float.safe_load import safe_torch_load
from preprocess.encode import EncoderSetupError
from preprocess.manifest_encoders import build_motion_autoencoder
from preprocess.media import frame_energy, source_waveform
from shards.files import atomic_write_text
from shards.format import META, REFERENCE
from shards.remote import join_location
from shards.sample import decode_reference, read_meta
from shards.tar import iter_tar_samples
from trainer.eval.lipsync import clip_lipsync, mean_lipsync
from trainer.media_log import MediaLog, clip_tag, strip_image, strip_picks
from trainer.sample.plot import plot_motion
from trainer.sample.render import encode_reference, label_frames, render_motion, side_by_side, write_mp4


class SampleRenderer:
    """A ``samples_hook`` for trainer.loop.train: renders ground truth | generated videos."""

    def __init__(self, manifest: dict, data_root: str | Path, dim_w: int, log: Callable[[str], None] = print,
                 media: MediaLog | None = None):
        self.manifest, self.data_root, self.dim_w, self.log = manifest, str(data_root), dim_w, log
        self.media = media
        self._decoder = None
        self._references: dict[str, object] = {}
        self._metas: dict[str, dict] = {}
        self._waves: dict[str, object] = {}  # source audio per key: decoded once, not at every sample step

    def _autoencoder(self):
        if self._decoder is None:
            try:
                self._decoder = build_motion_autoencoder(self.manifest, dim_w=self.dim_w)
            except EncoderSetupError as e:
                self._decoder = False
                self.log(f"samples are not rendered: {e}")
                return None
            if self._decoder.autoencoder is None:
                self.log(f"samples are saved as latents only: {self._decoder.note}")
            elif self._decoder.random:
                self.log("samples are rendered by a motion decoder with SEEDED RANDOM weights: not a face")
        return self._decoder.autoencoder if self._decoder else None

    def _reference_images(self, keys: list[str]) -> dict:
        """ref.jpg of each key, read once from the val shards."""
        missing = set(keys) - set(self._references)
        shards = self.manifest.get("splits", {}).get("val", {}).get("shards", [])
        for shard in shards if missing else []:
            for key, members in iter_tar_samples(join_location(self.data_root, shard["name"]),
                                                 read={REFERENCE, META}):
                if key in missing:
                    self._references[key] = decode_reference(members.get(REFERENCE))
                    self._metas[key] = read_meta(members)
                    missing.discard(key)
            if not missing:
                break
        return {k: self._references.get(k) for k in keys}

    @torch.no_grad()
    def __call__(self, path: Path) -> None:
        autoencoder = self._autoencoder()
        if autoencoder is None and self.media is None:
            return
        record = safe_torch_load(path, label="motion samples ")  # the one loader (float/safe_load.py)
        keys = list(record.get("keys") or [])
        images = self._reference_images(keys)
        folder = Path(path).with_suffix("")
        starts = list(record.get("starts") or [])
        step = int(record.get("step") or 0)
        scores = []
        for i, key in enumerate(keys):
            frames = record["motion"][i].shape[0]
            waveform = self._window_audio(key, starts[i] if i < len(starts) else None, frames)
            if self.media is not None:
                self._log_motion(i, key, record, waveform, folder, step)
            if autoencoder is None:
                continue
            if images.get(key) is None:
                self.log(f"sample {key}: no reference image in the val shards, not rendered")
                continue
            reference = encode_reference(autoencoder, images[key])
            truth = render_motion(autoencoder, reference, record["target"][i])
            generated = render_motion(autoencoder, reference, record["motion"][i])
            mp4 = write_mp4(folder / f"{key}.mp4", side_by_side(truth, generated))
            if self.media is not None:
                self._log_video(i, autoencoder, reference, record, truth, generated, mp4, step)
            if waveform is not None:
                entry = {"key": key}
                self.log(clip_lipsync(entry, f"sample {key}", waveform, generated, truth))
                scores.append(entry)
        if scores:
            summary = {"step": record.get("step"), "clips": scores, **mean_lipsync(scores)}
            atomic_write_text(folder / "lipsync.json", json.dumps(summary, indent=2))
        if self.media is not None:  # the issue asks for the cost of the media: say it where it is paid
            self.log(f"samples in TensorBoard/wandb: {self.media.seconds:.2f} s of media logging so far")

    def _log_motion(self, slot: int, key: str, record: dict, waveform, folder: Path, step: int) -> None:
        """The window's motion plot (also saved beside its video) and its audio, to the media log."""
        start = time.perf_counter()
        motion, target = record["motion"][slot].numpy(), record["target"][slot].numpy()
        energy = frame_energy(waveform, len(motion)) if waveform is not None else None
        plot = plot_motion(folder / f"{key}.plot.png", motion, energy, target, title=f"{key}: step {step}")
        self.media.seconds += time.perf_counter() - start  # the plot is made for the log: its cost too
        self.media.image_file(clip_tag(slot, "motion_plot"), plot["path"], step)
        if waveform is not None:
            self.media.audio(clip_tag(slot, "audio"), waveform, step)

    def _log_video(self, slot: int, autoencoder, reference, record: dict, truth, generated, mp4: Path,
                   step: int) -> None:
        """Ground truth | generated | audio dropped, every few frames, and the short video."""
        start = time.perf_counter()
        picks = strip_picks(min(len(truth), len(generated)))
        rows = [label_frames(truth[picks], "ground truth"), label_frames(generated[picks], "generated")]
        if "motion_no_audio" in record:  # sample files written before it existed have none
            # Only the strip's frames are rendered: a few of the window's, at a few % of the cost.
            dropped = render_motion(autoencoder, reference, record["motion_no_audio"][slot][picks])
            rows.append(label_frames(dropped, "audio dropped"))
        strip = strip_image(rows)
        self.media.seconds += time.perf_counter() - start
        self.media.image(clip_tag(slot, "strip"), strip, step)
        self.media.video(clip_tag(slot, "video"), side_by_side(truth, generated), step, mp4)

    def _window_audio(self, key: str, start: int | None, frames: int):
        """The window's 16 kHz audio from the clip's source file (None when it cannot be had)."""
        meta = self._metas.get(key) or {}
        if start is None or not meta.get("n_frames"):
            return None
        if key not in self._waves:
            self._waves[key] = source_waveform(meta, int(meta["n_frames"]))
        waveform = self._waves[key]
        if waveform is None:
            return None
        piece = waveform[start * SAMPLES_PER_FRAME:(start + frames) * SAMPLES_PER_FRAME]
        return piece if len(piece) == frames * SAMPLES_PER_FRAME else None
