"""The shard stage's crop shards end to end on a tiny synthetic set, re-encoding latents from
them (--from-crops) with the seeded-random and a stage-1 encoder, and the stage-1 checkpoint loader."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from float.checkpoint import CheckpointError
from float.motion_checkpoint import load_motion_checkpoint
from preprocess.encode import LogMel, load_motion_encoder
from preprocess.errors import PipelineError
from preprocess.pipeline import run_shards
from preprocess.settings import ShardSettings
from preprocess.synthetic import make_synthetic_ravdess
from shards.crops import CROP_MEMBERS, CROP_ONLY_MEMBERS, CropClip, crop_shard_urls, read_crop_manifest
from shards.tar import iter_tar_samples
from shards.format import AUDIO, LAMBDAS, MANIFEST, META, MOTION, SPLITS, decode_npy
from shards.inspect import format_report, inspect_shards, iter_samples, list_shards
from shards.pairs import ValPairs, make_pair_loader
from preprocess.encode import EncoderSetupError
from preprocess.manifest_encoders import build_motion_autoencoder
from crop_factory import write_stage1_checkpoint

SIZE = 32
quiet = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synthetic_ravdess(tmp_path_factory.mktemp("synth"), actors=(1, 2, 3, 4), statements=(1,),
                                  emotions=(3,), size=(64, 64))


def settings(**kw) -> ShardSettings:
    return ShardSettings(**(dict(input_size=SIZE, crop="none", workers=0, progress=False, shard_samples=1) | kw))


@pytest.fixture(scope="module")
def normal_run(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "shards"
    run_shards(settings(ravdess=synth, out=out), **quiet)
    return out


def samples(folder: Path) -> dict[str, dict[str, bytes]]:
    return {k: m for p in list_shards(folder) for k, m in iter_samples(p)}


def test_crops_are_written_beside_the_latents_with_the_same_split(normal_run):
    crops = normal_run.with_name("shards-crops")
    manifest = read_crop_manifest(crops)
    latent = json.loads((normal_run / MANIFEST).read_text())
    assert manifest["kind"] == "crops" and manifest["input_size"] == SIZE
    for split in SPLITS:
        assert manifest["splits"][split]["clips"] == latent["splits"][split]["clips"]
        assert manifest["splits"][split]["frames"] == latent["splits"][split]["frames"]
    lat, crp = samples(normal_run), samples(crops)
    assert set(lat) == set(crp) and all(set(m) == set(CROP_MEMBERS) for m in crp.values())
    for key, members in crp.items():
        meta, lmeta = json.loads(members[META]), json.loads(lat[key][META])
        assert (meta["split"], meta["actor"], meta["n_frames"]) == (lmeta["split"], lmeta["actor"], lmeta["n_frames"])
        assert meta["size"] == SIZE and meta["sha256"] == lmeta["sha256"]
    report = inspect_shards(crops)
    assert report.problems == [] and "bytes/frame" in format_report(report)
    assert inspect_shards(normal_run).problems == []
    # the crops feed the pair stream and the validation pairs
    batch = next(iter(make_pair_loader(crop_shard_urls(crops, "train"), 4, size=SIZE)))
    assert batch["source"].shape == (4, 3, SIZE, SIZE)
    assert len(ValPairs(crop_shard_urls(crops, "val"), 2, size=SIZE)) == 2


def test_crop_frames_are_the_frames_the_encoder_saw(normal_run):
    """Encoding the stored crops with the same (seeded-random) encoder gives the latents the stage
    wrote up to JPEG error; the stored audio reproduces the audio features exactly."""
    crops = normal_run.with_name("shards-crops")
    model, _ = load_motion_encoder(SIZE, None, 0, width=0.125)
    lat = samples(normal_run)
    mel = LogMel()
    for url in crop_shard_urls(crops, "train"):
        for key, members in iter_tar_samples(url, CROP_MEMBERS, CROP_ONLY_MEMBERS):
            clip = CropClip(key, members)
            frames = torch.from_numpy(clip.frames()).permute(0, 3, 1, 2).float() / 127.5 - 1
            with torch.no_grad():
                motion = model.encode_motion(frames)[0].numpy()
            assert np.allclose(motion, decode_npy(lat[key][MOTION]), atol=0.05)
            audio = mel(clip.wave(), clip.num_frames).astype(np.float16)
            assert np.array_equal(audio, decode_npy(lat[key][AUDIO]))


def test_from_crops_with_the_same_encoder_matches_the_normal_stage(normal_run, tmp_path):
    out = tmp_path / "again"
    summary = run_shards(settings(from_crops=normal_run.with_name("shards-crops"), out=out), **quiet)
    assert summary.written == {"train": 2, "val": 1, "test": 1}
    assert inspect_shards(out).problems == []
    before, after = samples(normal_run), samples(out)
    assert set(before) == set(after)
    assert [p.name for p in list_shards(out)] == [p.name for p in list_shards(normal_run)]
    for key in before:
        a, b = before[key], after[key]
        assert np.array_equal(decode_npy(a[AUDIO]), decode_npy(b[AUDIO]))  # bit-identical audio features
        assert np.allclose(decode_npy(a[MOTION]), decode_npy(b[MOTION]), atol=0.05)  # JPEG'd frames
        assert np.allclose(decode_npy(a[LAMBDAS]), decode_npy(b[LAMBDAS]), atol=0.05)
        ma, mb = json.loads(a[META]), json.loads(b[META])
        assert {k: v for k, v in ma.items() if k != "settings_fingerprint"} == \
            {k: v for k, v in mb.items() if k != "settings_fingerprint"}
    m0, m1 = (json.loads((f / MANIFEST).read_text()) for f in (normal_run, out))
    assert m0["encoders"]["motion"]["fingerprint"] == m1["encoders"]["motion"]["fingerprint"]
    assert m0["fingerprint"] != m1["fingerprint"]  # JPEG'd latents never mix with video latents on resume
    assert m1["settings"]["splits"] == m0["settings"]["splits"]
    again = run_shards(settings(from_crops=normal_run.with_name("shards-crops"), out=out), **quiet)
    assert sum(again.written.values()) == 0 and again.total_present == 4  # resumes: nothing left to do


def test_from_crops_with_a_stage1_checkpoint(normal_run, tmp_path):
    ckpt = write_stage1_checkpoint(tmp_path / "motion.pt", size=SIZE)
    model, info, cfg = load_motion_checkpoint(ckpt)
    ema = torch.load(ckpt, weights_only=True)["ema"]
    raw = torch.load(ckpt, weights_only=True)
    assert info["weights"] == "ema" and info["step"] == 3 and cfg.input_size == SIZE
    assert all(torch.equal(v, raw["ema"][k]) for k, v in model.state_dict().items())  # EMA, not the raw weights
    assert not all(torch.equal(v, raw["model"][k]) for k, v in model.state_dict().items())
    out = tmp_path / "stage1"
    run_shards(settings(from_crops=normal_run.with_name("shards-crops"), out=out, motion_ckpt=ckpt), **quiet)
    manifest = json.loads((out / MANIFEST).read_text())
    motion = manifest["encoders"]["motion"]
    assert motion["fingerprint"] == info["fingerprint"] and motion["source"] == str(ckpt)
    assert motion["random"] is False and motion["kind"] == "motion_autoencoder"
    assert inspect_shards(out).problems == []
    # latents are that encoder's: re-encode one clip's stored crops by hand
    crops = normal_run.with_name("shards-crops")
    key, members = next(iter_tar_samples(crop_shard_urls(crops, "val")[0], CROP_MEMBERS, CROP_ONLY_MEMBERS))
    frames = torch.from_numpy(CropClip(key, members).frames()).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        want = model.encode_motion(frames)[0].numpy()
    assert np.allclose(decode_npy(samples(out)[key][MOTION]), want, atol=1e-5)
    # rendering rebuilds exactly this encoder from the manifest, and refuses a changed checkpoint
    decoder = build_motion_autoencoder(manifest, dim_w=512)
    assert decoder.autoencoder is not None and decoder.source == str(ckpt) and not decoder.random
    write_stage1_checkpoint(ckpt, size=SIZE, seed=1)
    with pytest.raises(EncoderSetupError, match=r"motion\.pt: its motion auto-encoder \(fingerprint \w+\) is not the one"):
        build_motion_autoencoder(manifest, dim_w=512)
    ckpt.unlink()
    assert build_motion_autoencoder(manifest).autoencoder is None


def test_bad_checkpoints_and_folders_are_refused(normal_run, tmp_path):
    crops = normal_run.with_name("shards-crops")
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such file"):
        load_motion_checkpoint(missing)
    with pytest.raises(PipelineError, match=r"--motion-ckpt .*nope\.pt: no such file"):
        run_shards(settings(from_crops=crops, out=tmp_path / "x", motion_ckpt=missing), **quiet)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt: (unreadable|refused)"):
        load_motion_checkpoint(tmp_path / "junk.pt")
    fmt = tmp_path / "fmt.pt"
    torch.save({"step": 5, "model": {"w": torch.zeros(1)}, "config": {}}, fmt)
    with pytest.raises(CheckpointError, match=r"fmt\.pt is an FMT training checkpoint .*takes a stage-1 checkpoint"):
        load_motion_checkpoint(fmt)
    torch.save({"kind": "fmt", "model": {}}, fmt)
    with pytest.raises(PipelineError, match=r"--motion-ckpt .*fmt\.pt is an FMT training checkpoint"):
        run_shards(settings(from_crops=crops, out=tmp_path / "x", motion_ckpt=fmt), **quiet)
    wrong_size = write_stage1_checkpoint(tmp_path / "big.pt", size=64)
    with pytest.raises(PipelineError, match=r"big\.pt: a 64px motion auto-encoder, but the crops are 32px"):
        run_shards(settings(from_crops=crops, out=tmp_path / "x", motion_ckpt=wrong_size), **quiet)
    with pytest.raises(PipelineError, match=r"shards holds latent shards, not crop shards"):
        run_shards(settings(from_crops=normal_run, out=tmp_path / "x"), **quiet)
    assert not (tmp_path / "x").exists() or not list_shards(tmp_path / "x")


def test_resume_writes_missing_crops_only_and_no_crops_writes_none(synth, normal_run, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(normal_run, out)
    shutil.copytree(normal_run.with_name("shards-crops"), tmp_path / "shards-crops")
    (tmp_path / "shards-crops" / "val-000000.tar").unlink()
    summary = run_shards(settings(ravdess=synth, out=out), **quiet)
    assert sum(summary.written.values()) == 0  # latents were complete
    assert read_crop_manifest(tmp_path / "shards-crops")["splits"]["val"]["clips"] == 1
    assert inspect_shards(tmp_path / "shards-crops").problems == []
    assert samples(tmp_path / "shards-crops").keys() == samples(normal_run.with_name("shards-crops")).keys()
    plain = tmp_path / "plain"
    run_shards(settings(ravdess=synth, out=plain, crops=False), **quiet)
    assert not (tmp_path / "plain-crops").exists()
