"""``floatctl shards`` and ``floatctl inspect`` (registered by cli.py).

Plain functions with typer annotations; the work lives in preprocess/pipeline.py
and shards/inspect.py. Exit codes: 0 success, 1 nothing written / shards
invalid, 2 bad options or missing inputs (reported before any work).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from preprocess.settings import DEFAULT_SYNTHETIC_DIR, default_workers


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def shards(
    ravdess: Annotated[Optional[Path], typer.Option(
        help="RAVDESS root: Actor_NN/ folders of MM-VV-EE-II-SS-RR-AA.mp4 (+ .wav), or the Zenodo zips "
             "(Video_Speech_Actor_NN.zip, Audio_Speech_Actors_01-24.zip...) read in place.")] = None,
    input: Annotated[Optional[Path], typer.Option(
        "--input", help="Any folder of talking-head clips (mp4/mkv/mov with audio, or with a same-stem "
                        ".wav); emotion unknown. Speaker (splits are by speaker) = the first folder under "
                        "--input (root/SPEAKER/.../clip.mp4), or --speaker-pattern; a clip directly in "
                        "--input is its own speaker, with a warning (identity-leak risk). Videos longer than "
                        "--segment-seconds are cut into segments. With neither --ravdess nor "
                        f"--input, a synthetic RAVDESS-format set is made in {DEFAULT_SYNTHETIC_DIR} and used.")] = None,
    out: Annotated[Path, typer.Option(help="Shard folder ({split}-NNNNNN.tar, manifest.json, errors.jsonl).")]
        = Path("data/shards"),
    preset: Annotated[str, typer.Option(
        help="Model preset (paper|small|tiny): sets the face crop side (tiny 128, small 256, paper 512).")] = "tiny",
    input_size: Annotated[Optional[int], typer.Option(
        help="Override the preset's face crop side in pixels (power of two, >= 8).")] = None,
    crop: Annotated[str, typer.Option(
        help="auto: one fixed square face crop per clip from the face detector (clips with no face are "
             "rejected); none: the clips are already face crops, only resized.")] = "auto",
    detector: Annotated[Optional[str], typer.Option(
        help="Face detector of --crop auto: dlib (HOG + 68 landmarks, the box from the eyes and mouth; "
             "steadier, better centred) or haar (OpenCV's cascade; needs OpenCV 4). Default: the one recorded "
             "in --out's manifest when resuming or rebuilding (haar for shards made before this choice), "
             "else dlib when installed, else haar. Recorded in the manifest.")] = None,
    audio_features: Annotated[str, typer.Option(
        help="auto|wav2vec2|mel|mel-speech. auto = wav2vec2 when --wav2vec2 is given, else mel. wav2vec2: all 12 "
             "layers per 25 fps frame (9216 wide for base); without --wav2vec2, seeded RANDOM base weights "
             "(meaningless features, ~4 s per 3 s clip on 2 CPU cores). mel: 80 log-mel bands per 25 fps "
             "frame (80 ms Hann window centred on each frame, hop 640 at 16 kHz). mel-speech: those bands "
             "standardised over each clip plus their deltas (160 a frame; better on real speech, README). "
             "Stored as float16.")] = "auto",
    wav2vec2: Annotated[Optional[Path], typer.Option(
        help="Hugging Face folder of facebook/wav2vec2-base-960h (config.json + weights).")] = None,
    ser: Annotated[Optional[Path], typer.Option(
        help="Hugging Face folder of the speech-emotion model; adds its 7 probabilities per clip.")] = None,
    float_ckpt: Annotated[Optional[Path], typer.Option(
        help="Official float.pth: the motion encoder's weights (motion_autoencoder.*; 512 px, so use "
             "--preset paper). Without it the encoder has seeded RANDOM weights, labelled in the manifest.")] = None,
    vocal_channels: Annotated[str, typer.Option(
        help="RAVDESS vocal channels to use, comma-separated: speech, song or speech,song.")] = "speech,song",
    speaker_pattern: Annotated[Optional[str], typer.Option(
        help="With --input: a regular expression searched in each clip's path under --input ('/' "
             "separators); its first group is the speaker, e.g. '^([^/]+)/' (first folder) or "
             r"'(id\d+)_' (a name prefix). Clips it does not match are rejected (errors.jsonl).")] = None,
    val_actors: Annotated[int, typer.Option(
        help="Number of validation actors: the highest-numbered actors below the test actors. With few "
             "actors, val/test shrink (with a warning) until at most half the actors are held out "
             "(the 4-actor synthetic set: 2 train, 1 val, 1 test).")] = 2,
    test_actors: Annotated[int, typer.Option(
        help="Number of test actors: the highest-numbered actors (RAVDESS: 23, 24).")] = 2,
    val_ids: Annotated[Optional[str], typer.Option(
        help="Explicit validation actors, comma-separated (e.g. 03,07); overrides --val-actors.")] = None,
    test_ids: Annotated[Optional[str], typer.Option(
        help="Explicit test actors, comma-separated; overrides --test-actors.")] = None,
    workers: Annotated[int, typer.Option(
        help="Decode/crop worker processes (0 = in the main process).")] = default_workers(),
    batch_size: Annotated[int, typer.Option(help="Frames per motion-encoder batch (within one clip).")] = 64,
    device: Annotated[str, typer.Option(
        help="auto|cpu|cuda for the encoders; on CUDA the motion encoder runs in half precision.")] = "auto",
    part: Annotated[Optional[str], typer.Option(
        help="i/N: do only part i of N (clips assigned by a hash of their key) to spread the work over "
             "machines. Part i numbers its shards from (i-1)*(1000000//N) and writes "
             "manifest.part-i-of-N.json; gather all parts' files in one folder and run --merge.")] = None,
    merge: Annotated[bool, typer.Option(
        help="Only merge: combine manifest.part-*-of-N.json (all N parts required) in --out into "
             "manifest.json and errors.part-*.jsonl into errors.jsonl.")] = False,
    shard_size_mb: Annotated[float, typer.Option(help="Size cap per shard in MiB.")] = 256.0,
    shard_samples: Annotated[Optional[int], typer.Option(help="Optional cap on samples per shard.")] = None,
    min_seconds: Annotated[float, typer.Option(help="Reject clips shorter than this (seconds).")] = 2.0,
    segment_seconds: Annotated[float, typer.Option(
        help="Cut videos longer than this into segments of at most this many seconds (keys <clip>-s000, "
             "-s001...; meta.json 'segment' gives each one's start in the source), each with its own face "
             "crop; scene cuts and 2+ s without a face end a segment (left-out spans in errors.jsonl). "
             "Decoded twice, one segment in memory at a time. 0: never cut. With --crop auto only.")] = 15.0,
    seed: Annotated[int, typer.Option(help="Seed of the random encoder weights and the synthetic set.")] = 0,
    overwrite: Annotated[bool, typer.Option(
        help="Delete this run's existing shards, manifest and errors in --out and start over (needed "
             "when they were made with different settings).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (clips/s, frames/s).")] = True,
    crops: Annotated[bool, typer.Option(
        help="Also write crop shards (for stage 1, `floatctl train-motion`): each clip's 25 fps face crops "
             "(JPEG, quality 90) and 16 kHz audio, split like the latent shards, from the same decoded "
             "frames in the same pass.")] = True,
    crops_out: Annotated[Optional[Path], typer.Option(
        help="Crop shard folder (default: beside --out with '-crops' appended, e.g. data/shards-crops).")] = None,
    from_crops: Annotated[Optional[Path], typer.Option(
        help="Write the latent shards from this crop shard folder instead of videos: no decoding or face "
             "detection; audio features from the stored 16 kHz audio; same splits and member format.")] = None,
    motion_ckpt: Annotated[Optional[Path], typer.Option(
        help="Stage-1 checkpoint of `floatctl train-motion`, or its run folder (its final checkpoint, else its newest): its (EMA) motion auto-encoder encodes the "
             "latents; the manifest records its path and fingerprint. Usually with --from-crops.")] = None,
) -> None:
    """Turn RAVDESS, a folder of talking-head clips, or the built-in synthetic set into WebDataset shards.

    One sample per clip (motion latents, audio features, emotion, reference JPEG, meta.json), split by
    actor, written atomically; rerunning resumes where a previous run stopped. By default also writes
    crop shards (face crops + 16 kHz audio) to <out>-crops; --from-crops re-encodes latents from them.
    """
    from preprocess.errors import PipelineError
    from preprocess.output import merge_part_outputs
    from preprocess.pipeline import run_shards
    from preprocess.settings import ShardSettings
    from shards.errors import ManifestError, StorageError

    if merge:
        from preprocess.settings import default_crops_out
        from shards.manifest import list_part_manifests

        crop_folder = crops_out or default_crops_out(out)
        folders = [out] + ([crop_folder] if crops and list_part_manifests(crop_folder) else [])
        for folder in folders:
            try:
                manifest = merge_part_outputs(folder)
            except ManifestError as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(2)
            clips = {k: v["clips"] for k, v in manifest["splits"].items()}
            typer.echo(f"merged {manifest['parts']['count']} parts into {folder / 'manifest.json'}: {clips}")
        return
    settings = ShardSettings(
        ravdess=ravdess, input=input, out=out, preset=preset, input_size=input_size, crop=crop,
        detector=detector, audio_features=audio_features, wav2vec2=wav2vec2, ser=ser, float_ckpt=float_ckpt,
        vocal_channels=_csv(vocal_channels), speaker_pattern=speaker_pattern, val_actors=val_actors, test_actors=test_actors,
        val_ids=_csv(val_ids), test_ids=_csv(test_ids), workers=workers, batch_size=batch_size,
        device=device, part=part, shard_size_mb=shard_size_mb, shard_samples=shard_samples,
        min_seconds=min_seconds, segment_seconds=segment_seconds, seed=seed, overwrite=overwrite, progress=progress,
        crops=crops and from_crops is None, crops_out=crops_out, from_crops=from_crops, motion_ckpt=motion_ckpt)
    try:
        summary = run_shards(settings)
    except PipelineError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    except StorageError as e:  # a full disk or read-only --out: finished shards stay, the open one is dropped
        typer.echo(f"error: {e}; rerun the same command once there is room: it resumes", err=True)
        raise typer.Exit(1)
    raise typer.Exit(summary.exit_code)


def inspect(
    folder: Annotated[str, typer.Argument(help="Shard folder written by `floatctl shards`, or its URL "
                                                "(http/https, s3, gs).")] = "data/shards",
    manifest: Annotated[str, typer.Option(
        help="Manifest file name in the folder (e.g. manifest.part-1-of-4.json for one part).")] = "manifest.json",
    hash: Annotated[bool, typer.Option(help="Check every shard's sha256 against the manifest.")] = True,
) -> None:
    """Validate shards against their manifest (counts, shapes, dtypes, finite values, actor splits,
    sizes and sha256) and print a summary; exit 1 listing the problems when anything is wrong."""
    from shards.inspect import format_report, inspect_shards

    report = inspect_shards(folder, manifest_name=manifest, check_hash=hash)
    typer.echo(format_report(report))
    if not report.ok:
        raise typer.Exit(1)
