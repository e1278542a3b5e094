"""``floatctl shards --from-crops DIR``: latent shards from crop shards, without video.

The stage-1 workflow: write crops once (the normal shard stage does, by
default), train the motion auto-encoder on them (``floatctl train-motion``),
then re-encode latents with it: ``floatctl shards --from-crops data/shards-crops
--motion-ckpt runs/motion --out data/shards-stage1``. No video decode and
no face detection: each crop sample's JPEG frames go through the motion encoder
and its stored 16 kHz audio through the usual audio encoder (log-mel, or the
wav2vec2 folder), so the audio features are bit-identical to the ones the
normal stage writes. The latent samples, member format, splits and shard order
are the normal stage's; the manifest's motion encoder entry records the
checkpoint (source, fingerprint, ``random: false``) and its fingerprint also
covers the crop folder's fingerprint (JPEG'd frames give slightly different
latents than the original frames, so the two kinds of latent shard never mix).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from preprocess.errors import EncoderSetupError, PipelineError
from preprocess.output import open_writers, output_names, prepare_out_folder, write_errors
from preprocess.output import sample_members
from preprocess.report import RunSummary, format_summary, progress_bar
from preprocess.settings import check_options, describe_run
from preprocess.splits import part_of
from shards.crops import CROP_MEMBERS, CROP_ONLY_MEMBERS, CropClip, CropSampleError, crop_shard_urls, \
    read_crop_manifest
from shards.errors import ManifestError, ShardError
from shards.files import check_writable
from shards.format import SPLITS
from shards.manifest import fingerprint_inputs, settings_fingerprint
from shards.tar import iter_tar_samples


def _prepared(clip: CropClip):
    """A PreparedClip (what sample_members takes) rebuilt from a crop sample."""
    from preprocess.clip import PreparedClip
    from preprocess.discover import ClipSource
    from preprocess.face import CropBox

    meta = clip.meta()
    src = meta.get("source") or {}
    box = meta.get("crop")
    source = ClipSource(clip.key, src.get("video"), src.get("audio"), str(meta["actor"]), meta.get("emotion"),
                        meta.get("fields") or {})
    return PreparedClip(source=source, frames=clip.frames(), audio=clip.wave(),
                        box=CropBox(**box) if box else None, source_fps=float(meta.get("source_fps") or 25.0),
                        sha256=meta.get("sha256") or "", segment=meta.get("segment"))


def run_from_crops(s, log: Callable[[str], None]):
    """The whole --from-crops run (called by preprocess.pipeline.run_shards); returns a RunSummary."""
    from preprocess.encode import build_encoder

    t0 = time.time()
    if s.ravdess is not None or s.input is not None:
        raise PipelineError("--from-crops reads no videos: drop --ravdess / --input")
    part, cfg, _ = check_options(s)
    folder = Path(s.from_crops)
    try:
        crops = read_crop_manifest(folder)
    except ManifestError as e:
        raise PipelineError(f"--from-crops: {e}") from None
    input_size = crops["input_size"]
    if s.input_size is not None and s.input_size != input_size:
        raise PipelineError(f"--input-size {s.input_size}: the crops in {folder} are {input_size} px")
    check_writable(s.out, "--out")  # a read-only or full --out: one StorageError line before any work
    try:
        encoder = build_encoder(input_size, s.audio_features, s.wav2vec2, s.ser, s.float_ckpt, s.device, s.seed,
                                s.batch_size, log=log, ae_width=cfg.ae_width, motion_ckpt=s.motion_ckpt)
    except EncoderSetupError as e:
        raise PipelineError(str(e)) from None

    # The crop manifest's content settings carry the actor split the crops were written with.
    crop_content = crops["fingerprint_inputs"]["settings"]
    split_of = {a: "val" for a in crop_content["val_actors"]} | {a: "test" for a in crop_content["test_actors"]}
    base = describe_run(s, cfg, input_size, encoder, split_of, folder, "crops")
    content = dict(base["fingerprint_inputs"]["settings"], crop=crops["crop"], from_crops=crops["fingerprint"])
    encoder_fps = encoder.fingerprints()
    base.update(crop=crops["crop"], fingerprint_inputs=fingerprint_inputs(content, encoder_fps),
                fingerprint=settings_fingerprint(content, encoder_fps),
                from_crops={"folder": str(folder), "fingerprint": crops["fingerprint"]})
    out = Path(s.out)
    if out.resolve() == folder.resolve():
        raise PipelineError(f"--out {out} is the crop folder: write latents to a folder of their own")
    scans, known = prepare_out_folder(out, part, s.overwrite, base, log)
    done = {k for scan in scans for k in scan.keys}
    manifest_name, errors_name = output_names(part)
    keeper, writers = open_writers(out, part, base, scans, known, s.shard_size_mb, s.shard_samples)
    if encoder.encoders_info["motion"]["random"]:
        log("NOTE: these shards will be labelled random-weight shards in the manifest")
    log(f"encoding latents from the crop shards in {folder} ({sum(e['clips'] for e in crops['splits'].values())} "
        f"clips, {input_size} px; {len(done)} already in {out})")

    written = {split: 0 for split in SPLITS}
    frames_written, errors = 0, []
    progress = progress_bar(sum(e["clips"] for e in crops["splits"].values()), s.progress)
    try:
        for split in SPLITS:
            if not crops["splits"].get(split, {}).get("clips"):
                continue
            for url in crop_shard_urls(folder, split, crops):
                for key, members in iter_tar_samples(url, CROP_MEMBERS, CROP_ONLY_MEMBERS):
                    progress.update(1)
                    if key in done or (part is not None and part_of(key, part[1]) != part[0]):
                        continue
                    try:
                        prepared = _prepared(CropClip(key, members))
                    except (CropSampleError, KeyError, TypeError) as e:
                        errors.append({"file": f"{url}:{key}", "reason": f"unusable crop sample: {e!r}"})
                        continue
                    encoded = encoder.encode(prepared.frames, prepared.audio)
                    keeper.frames_of[key] = len(prepared.frames)
                    keeper.actor_of[key] = prepared.source.actor
                    writers[split].add(key, sample_members(key, split, prepared, encoded, base["fingerprint"],
                                                           encoder_fps))
                    written[split] += 1
                    frames_written += len(prepared.frames)
        for w in writers.values():
            w.close()
    except ShardError as e:
        for w in writers.values():
            w.abort()
        raise PipelineError(f"--from-crops: {e}") from None
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        progress.close()

    manifest = keeper.write()
    errors_file = out / errors_name
    write_errors(errors_file, errors)
    present = {split: manifest["splits"][split]["clips"] for split in SPLITS}
    summary = RunSummary(out, written, present, frames_written, len(errors), errors_file, out / manifest_name,
                         time.time() - t0)
    log(format_summary(summary, manifest))
    return summary
