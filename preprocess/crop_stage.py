"""The crop-shard side of the shard stage: every prepared clip's 25 fps face crops and
16 kHz audio go to a second folder of WebDataset shards (layout: shards/crops.py).

Written in the same pass as the latent shards, from the very frames the motion
encoder sees (no second decode), split by actor the same way, with the same
atomic writer, resume and part rules as the latent folder (preprocess/output.py):
the crop folder has its own manifest and fingerprint, which depends on the crop
settings and the actor split but not on the encoders, so a crop folder stays
valid whichever motion encoder the latents are made with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from preprocess.errors import PipelineError
from preprocess.output import ManifestKeeper, open_writers, prepare_out_folder
from preprocess.settings import crop_info, default_crops_out, frame_content
from shards.crops import CROPS_KIND, crop_manifest_base, crop_members
from shards.format import FORMAT_VERSION, SPLITS
from shards.writer import ShardWriter


class CropOutput:
    """Writers, manifest keeper and already-written keys of the crop folder of one run."""

    def __init__(self, folder: Path, keeper: ManifestKeeper, writers: dict[str, ShardWriter], done: set[str]):
        self.folder, self.keeper, self.writers, self.done = folder, keeper, writers, done
        self.written = {split: 0 for split in SPLITS}

    @classmethod
    def open(cls, s, cfg, input_size: int, split_of: dict, root: Path, kind: str, part,
             log: Callable[[str], None]) -> "CropOutput":
        folder = Path(s.crops_out) if s.crops_out is not None else default_crops_out(s.out)
        if folder.resolve() == Path(s.out).resolve():
            raise PipelineError(f"--crops-out {folder} is the latent shard folder --out: give crops a folder "
                                "of their own")
        crop = crop_info(s.crop, s.detector)
        content = frame_content(cfg, input_size, crop, split_of, s.segment_seconds)  # what changes crop samples or their split
        settings = {"input_root": str(root), "input_kind": kind, "input_size": input_size, "crop": s.crop,
                    "detector": s.detector,
                    "latents_out": str(s.out), "splits": {"val": content["val_actors"],
                                                         "test": content["test_actors"]},
                    "part": s.part, "shard_size_mb": s.shard_size_mb, "shard_samples": s.shard_samples,
                    "min_seconds": s.min_seconds, "segment_seconds": s.segment_seconds, "vocal_channels": list(s.vocal_channels)}
        base = crop_manifest_base(input_size, crop, content, settings)
        scans, known = prepare_out_folder(folder, part, s.overwrite, base, log)
        keeper, writers = open_writers(folder, part, base, scans, known, s.shard_size_mb, s.shard_samples)
        return cls(folder, keeper, writers, {k for sc in scans for k in sc.keys})

    def add(self, split: str, prepared) -> None:
        """Write one prepared clip's crops (a no-op when the folder already holds it)."""
        from shards.sample import emotion_one_hot

        src = prepared.source
        if src.clip_id in self.done:
            return
        meta = {
            "key": src.clip_id, "split": split, "actor": src.actor,
            "source": {"video": src.video, "audio": src.audio}, "sha256": prepared.sha256,
            "source_fps": round(float(prepared.source_fps), 6),
            "crop": prepared.box.as_dict() if prepared.box is not None else None,
            "emotion": src.emotion, "fields": src.fields, "kind": CROPS_KIND,
            "settings_fingerprint": self.keeper.base["fingerprint"], "format_version": FORMAT_VERSION,
        }
        if getattr(prepared, "segment", None):
            meta["segment"] = prepared.segment
        self.keeper.frames_of[src.clip_id] = len(prepared.frames)
        self.keeper.actor_of[src.clip_id] = src.actor
        self.writers[split].add(src.clip_id, crop_members(prepared.frames, prepared.audio,
                                                          emotion_one_hot(src.emotion), meta))
        self.written[split] += 1

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()

    def finish(self) -> dict:
        """Write the final manifest; returns it."""
        return self.keeper.write()

    def summary(self, manifest: dict) -> str:
        clips = {split: manifest["splits"][split]["clips"] for split in SPLITS}
        return (f"crop shards: {self.folder} ({manifest['input_size']} px JPEG + 16 kHz audio): {clips} clips "
                f"(+{sum(self.written.values())} this run)")
