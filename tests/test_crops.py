"""Crop shards: member round trip, the pair stream (exact resume, rank split, corrupt samples),
ValPairs, and refusing folders that hold no crops."""
from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch

from shards.crops import (CROP_MEMBERS, CROP_ONLY_MEMBERS, JPEGS, OFFSETS, SAMPLES_PER_FRAME, WAVE, CropClip,
                          CropSampleError,
                          check_crop_sample, crop_shard_urls, read_crop_manifest)
from shards.sources import check_compatible
from shards.format import EMOTION, META
from shards.manifest import ManifestError
from shards.pairs import CropPairs, PairSpec, ValPairs, make_pair_loader
from crop_factory import clip_sample, crop_frames, make_crop_shards
from shard_factory import make_shards, write_tar

SIZE = 32


@pytest.fixture(scope="module")
def crop_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crops")
    make_crop_shards(folder, {"train": 8, "val": 3}, frames=(6, 14), size=SIZE, seed=5, clips_per_shard=2)
    return folder


def _batches(loader, n):
    return list(itertools.islice(iter(loader), n))


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["key"] == y["key"]
        for name in ("source", "driving", "source_frame", "driving_frame"):
            assert torch.equal(x[name], y[name]), name


def test_members_round_trip_and_single_frames_decode():
    rng = np.random.default_rng(0)
    frames = crop_frames(rng, 7, SIZE)
    wave = rng.normal(size=7 * SAMPLES_PER_FRAME).astype(np.float32)
    members = clip_sample("k", "train", frames, wave, "fp", emotion_index=3)
    assert set(members) == set(CROP_MEMBERS)
    clip = CropClip("k", members)
    assert clip.num_frames == 7 and clip.offsets.dtype == np.int64 and clip.jpegs.dtype == np.uint8
    # JPEG at quality 90 on smooth frames: close, not exact.
    err = np.abs(clip.frames().astype(int) - frames.astype(int))
    assert err.mean() < 3 and clip.frames().shape == frames.shape
    assert np.array_equal(clip.frame(4), clip.frames()[4])  # one frame decodes alone
    assert np.array_equal(clip.wave(), wave)  # float32 audio is stored exactly
    assert clip.emotion().argmax() == 3 and clip.meta()["n_frames"] == 7 and clip.meta()["size"] == SIZE
    with pytest.raises(ValueError, match="samples for 7 frames"):
        clip_sample("k", "train", frames, wave[:-1], "fp")


def test_bad_offsets_are_named():
    rng = np.random.default_rng(0)
    members = clip_sample("k", "train", crop_frames(rng, 3, SIZE), np.zeros(3 * 640, np.float32), "fp")
    from shards.format import encode_npy

    members[OFFSETS] = encode_npy(np.array([0, 10, 5, 7], np.int64))
    with pytest.raises(CropSampleError, match="do not cut"):
        CropClip("k", members)


def test_pairs_are_two_different_frames_of_one_clip(crop_dir):
    urls = crop_shard_urls(crop_dir, "train")
    batches = _batches(make_pair_loader(urls, 5, seed=0, size=SIZE), 6)
    clips = {}
    for url in urls:
        from shards.tar import iter_tar_samples

        for key, members in iter_tar_samples(url, CROP_MEMBERS, known_members=CROP_ONLY_MEMBERS):
            clips[key] = CropClip(key, members)
    for b in batches:
        assert b["source"].dtype == torch.uint8 and b["source"].shape == (5, 3, SIZE, SIZE)
        assert (b["source_frame"] != b["driving_frame"]).all()
        for i, key in enumerate(b["key"]):
            s, d = int(b["source_frame"][i]), int(b["driving_frame"][i])
            assert np.array_equal(b["source"][i].permute(1, 2, 0).numpy(), clips[key].frame(s))
            assert np.array_equal(b["driving"][i].permute(1, 2, 0).numpy(), clips[key].frame(d))


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(crop_dir, workers):
    urls = crop_shard_urls(crop_dir, "train")
    kw = dict(seed=7, shuffle_buffer=8, size=SIZE)
    whole = _batches(make_pair_loader(urls, 3, workers, pairs_per_clip=3, **kw), 14)
    first = make_pair_loader(urls, 3, workers, pairs_per_clip=3, **kw)
    head = _batches(first, 5)
    state = first.state_dict()
    assert state["spec"] == ["pairs", 3, SIZE]
    resumed = make_pair_loader(urls, 3, workers, pairs_per_clip=3, state=state, **kw)
    _same(head + _batches(resumed, 9), whole)
    with pytest.raises(ValueError, match="spec"):
        make_pair_loader(urls, 3, workers, pairs_per_clip=2, state=state, **kw)


def test_ranks_read_disjoint_shards(crop_dir):
    urls = crop_shard_urls(crop_dir, "train")
    keys = []
    for rank in (0, 1):
        ds = CropPairs(urls, PairSpec(2), seed=0, rank=rank, world_size=2, resampled=False)
        keys.append({it["key"] for it in ds})
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert len(keys[0] | keys[1]) == 8


def test_val_pairs_are_deterministic(crop_dir):
    urls = crop_shard_urls(crop_dir, "val")
    a, b = ValPairs(urls, 2, seed=1), ValPairs(urls, 2, seed=1)
    assert len(a) == 6
    _same(a.batches(4), b.batches(4))
    other = ValPairs(urls, 2, seed=2)
    assert [(p["source_frame"], p["driving_frame"]) for p in other.pairs] != \
        [(p["source_frame"], p["driving_frame"]) for p in a.pairs]
    assert len(ValPairs(urls, 2, max_clips=1)) == 2
    assert [len(x["key"]) for x in a.batches(2, rank=1, world_size=2)] == [2, 1]


def test_corrupt_crop_sample_is_skipped_with_a_warning(tmp_path, caplog):
    rng = np.random.default_rng(1)
    good = clip_sample("good", "train", crop_frames(rng, 5, SIZE), np.zeros(5 * 640, np.float32), "fp")
    from shards.format import encode_npy

    # offsets still cut the bytes into frames, but the bytes are no JPEG: found when a frame is drawn
    bad_jpeg = dict(good, **{JPEGS: encode_npy(np.full(len(CropClip("good", good).jpegs), 7, np.uint8))})
    no_offsets = {k: v for k, v in good.items() if k != OFFSETS}
    url = str(write_tar(tmp_path / "train-000000.tar",
                        [("badjpeg", bad_jpeg), ("nooffsets", no_offsets), ("good", good)]))
    with caplog.at_level(logging.WARNING):
        ds = CropPairs([url], PairSpec(2), resampled=False)
        items = list(ds)
    assert {it["key"] for it in items} == {"good"} and ds.skipped == 2
    assert "skipping corrupt sample badjpeg" in caplog.text and "skipping corrupt sample nooffsets" in caplog.text
    val = ValPairs([url], 2)
    assert val.skipped == 2 and {p["key"] for p in val.pairs} == {"good"}


def test_latent_folder_is_refused_as_crops_and_crops_as_latents(tmp_path, crop_dir):
    make_shards(tmp_path / "latents")
    for call in (read_crop_manifest, crop_shard_urls):
        with pytest.raises(ManifestError, match=r"latents holds latent shards, not crop shards: write crops "
                                                r"with `floatctl shards`"):
            call(tmp_path / "latents")
    with pytest.raises(ManifestError, match="does not exist"):
        read_crop_manifest(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="holds crop shards"):
        from float.config import get_preset

        check_compatible(read_crop_manifest(crop_dir), get_preset("tiny"))
    # a latent tar given to the pair stream directly: not a crop shard
    latent_url = str(tmp_path / "latents" / "train-000000.tar")
    from shards.errors import ShardError

    with pytest.raises(ShardError, match="no member named"):
        list(CropPairs([latent_url], resampled=False))


def test_check_crop_sample_reports_problems(crop_dir):
    manifest = read_crop_manifest(crop_dir)
    from shards.tar import iter_tar_samples

    url = crop_shard_urls(crop_dir, "train")[0]
    key, members = next(iter_tar_samples(url, CROP_MEMBERS, known_members=CROP_ONLY_MEMBERS))
    assert check_crop_sample(key, members, manifest, "train", "w")[0] == []
    problems, _ = check_crop_sample(key, members, manifest, "val", "w")
    assert any("split is 'train', expected 'val'" in p for p in problems)
    broken = {k: v for k, v in members.items() if k not in (WAVE, EMOTION)}
    problems, _ = check_crop_sample(key, broken, manifest, "train", "w")
    assert any("missing members ['emotion.npy', 'wave.npy']" in p for p in problems)
    assert META in members


def test_hard_pairs_take_the_farthest_candidate_and_stay_deterministic():
    from shards.pairs import HARD_CANDIDATES, draw_pairs

    rng = np.random.default_rng(3)
    frames = crop_frames(rng, 40, 32)
    clip = CropClip("c", clip_sample("c", "train", frames, np.zeros(40 * SAMPLES_PER_FRAME, np.float32), "fp"))

    def distance(pair):
        return float(np.abs(pair["source"].astype(float) - pair["driving"].astype(float)).mean())

    uniform = draw_pairs(clip, 200, np.random.default_rng(0))
    hard = draw_pairs(clip, 200, np.random.default_rng(0), hard_fraction=1.0)
    assert np.mean([distance(p) for p in hard]) > 1.3 * np.mean([distance(p) for p in uniform])
    assert all(p["source_frame"] != p["driving_frame"] for p in hard)
    again = draw_pairs(clip, 200, np.random.default_rng(0), hard_fraction=1.0)
    assert [p["driving_frame"] for p in again] == [p["driving_frame"] for p in hard]
    half = draw_pairs(clip, 400, np.random.default_rng(1), hard_fraction=0.5)
    assert np.mean([distance(p) for p in uniform]) < np.mean([distance(p) for p in half]) < \
        np.mean([distance(p) for p in hard])
    assert HARD_CANDIDATES >= 2
    with pytest.raises(ValueError, match="hard_fraction"):
        PairSpec(4, hard_fraction=1.5)
