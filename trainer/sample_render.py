"""Rendering the motion samples the trainer saves every --sample-step.

Each saved window is decoded by the motion auto-encoder the shards were made
with (official weights, or the same seeded random ones), from its clip's
reference image, next to its ground truth: ``step_N.pt`` -> ``step_N/KEY.mp4``.
Without decoder weights the samples stay latents, said once in the log. Each
rendered window gets the lip-sync proxy (trainer/lipsync.py) of its generated
and ground-truth videos against the clip's source audio, when the source file is
still where meta.json says: logged, and saved as ``step_N/lipsync.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

import json

from float.config import SAMPLES_PER_FRAME
from preprocess.encode import EncoderSetupError
from preprocess.manifest_encoders import build_motion_autoencoder
from preprocess.media import source_waveform
from shards.format import META, REFERENCE
from shards.sample import decode_reference, read_meta
from shards.remote import join_location
from shards.tar import iter_tar_samples
from trainer.eval.lipsync import clip_lipsync, mean_lipsync
from trainer.render import encode_reference, render_motion, side_by_side, write_mp4


class SampleRenderer:
    """A ``samples_hook`` for trainer.loop.train: renders ground truth | generated videos."""

    def __init__(self, manifest: dict, data_root: str | Path, dim_w: int, log: Callable[[str], None] = print):
        self.manifest, self.data_root, self.dim_w, self.log = manifest, str(data_root), dim_w, log
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
        if autoencoder is None:
            return
        record = torch.load(path, map_location="cpu", weights_only=True)
        keys = list(record.get("keys") or [])
        images = self._reference_images(keys)
        folder = Path(path).with_suffix("")
        starts = list(record.get("starts") or [])
        scores = []
        for i, key in enumerate(keys):
            if images.get(key) is None:
                self.log(f"sample {key}: no reference image in the val shards, not rendered")
                continue
            reference = encode_reference(autoencoder, images[key])
            truth = render_motion(autoencoder, reference, record["target"][i])
            generated = render_motion(autoencoder, reference, record["motion"][i])
            write_mp4(folder / f"{key}.mp4", side_by_side(truth, generated))
            waveform = self._window_audio(key, starts[i] if i < len(starts) else None, len(generated))
            if waveform is not None:
                entry = {"key": key}
                self.log(clip_lipsync(entry, f"sample {key}", waveform, generated, truth))
                scores.append(entry)
        if scores:
            summary = {"step": record.get("step"), "clips": scores, **mean_lipsync(scores)}
            (folder / "lipsync.json").write_text(json.dumps(summary, indent=2))

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
