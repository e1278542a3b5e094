"""The streaming training dataset: window content, reproducibility, sharding, resume, bad input."""
from __future__ import annotations

import itertools
import json
import logging
import threading

import numpy as np
import pytest
import torch

from float.config import get_preset
from shards.dataset import TrainWindows, assign_shards
from shards.errors import ShardError
from shards.loader import make_loader
from shards.sources import check_compatible, manifest_dims, manifest_of, shard_urls
from shards.validation import ValWindows
from shards.format import AUDIO, MOTION, encode_npy
from shards.manifest import ManifestError
from shards.windows import WindowSpec, collate
from shard_factory import clip_members, make_shards, read_clips, read_split, write_tar

D, A = 16, 12
SPEC = WindowSpec(num_frames=50, num_prev_frames=10, windows_per_clip=3)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    # 4 train shards of 3 clips; lengths 50..70 so many windows start before frame 10.
    make_shards(folder, {"train": 12, "val": 3}, frames=(50, 70), dim_w=D, audio_dim=A, seed=3,
                clips_per_shard=3)
    return folder


def _train_urls(folder):
    return shard_urls(folder, "train")


def _batches(loader, n):
    return list(itertools.islice(iter(loader), n))


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["key"] == y["key"]
        for name in ("start", "ref_frame", "motion", "audio", "ref_motion", "prev_mask"):
            assert torch.equal(x[name], y[name]), name


# ------------------------------------------------------------------ window content
def test_windows_are_clip_slices_with_zero_padded_prev_frames(shard_dir):
    clips = read_split(shard_dir, "train")
    ds = TrainWindows(_train_urls(shard_dir), SPEC, seed=0, motion_dim=D, audio_dim=A)
    windows = list(itertools.islice(iter(ds), 60))
    early = 0
    for w in windows:
        c = clips[w["key"]]
        m, a = c["motion"], c["audio"].astype(np.float32)
        s, T = w["start"], len(m)
        assert 0 <= s <= T - 50
        np.testing.assert_array_equal(w["motion"], m[s:s + 50])
        np.testing.assert_array_equal(w["audio"], a[s:s + 50])
        assert w["motion"].dtype == np.float32 and w["audio"].dtype == np.float32
        real = np.arange(s - 10, s) >= 0
        np.testing.assert_array_equal(w["prev_mask"], real)
        np.testing.assert_array_equal(w["prev_motion"][real], m[max(0, s - 10):s])
        np.testing.assert_array_equal(w["prev_audio"][real], a[max(0, s - 10):s])
        assert not w["prev_motion"][~real].any() and not w["prev_audio"][~real].any()
        early += s < 10
        # the reference is a row of the same clip, at the recorded frame
        np.testing.assert_array_equal(w["ref_motion"], m[w["ref_frame"]])
        np.testing.assert_array_equal(w["emotion"], c["emotion"])
    assert early > 0, "the data should include windows that start before frame 10"
    assert len({w["ref_frame"] for w in windows}) > 5, "reference frames should vary"


def test_collate_gives_contiguous_batched_tensors(shard_dir):
    ds = TrainWindows(_train_urls(shard_dir), SPEC, seed=0)
    windows = list(itertools.islice(iter(ds), 5))
    batch = collate(windows)
    shapes = {"motion": (5, 50, D), "prev_motion": (5, 10, D), "prev_mask": (5, 10), "audio": (5, 50, A),
              "prev_audio": (5, 10, A), "ref_motion": (5, D), "emotion": (5, 7)}
    for name, shape in shapes.items():
        assert tuple(batch[name].shape) == shape and batch[name].is_contiguous(), name
    assert batch["prev_mask"].dtype == torch.bool and batch["motion"].dtype == torch.float32
    assert batch["key"] == [w["key"] for w in windows]
    torch.testing.assert_close(batch["audio"][3], torch.from_numpy(windows[3]["audio"]))
    wrong = dict(windows[1], audio=np.zeros((50, A + 1), np.float32))
    with pytest.raises(ValueError, match="audio"):
        collate([windows[0], wrong])


def test_short_clips_are_skipped_and_a_50_frame_clip_is_usable(tmp_path):
    rng = np.random.default_rng(0)
    samples = [(f"c{n}", clip_members(rng.normal(size=(n, D)), rng.normal(size=(n, A)), 1)) for n in (49, 50, 30)]
    url = str(write_tar(tmp_path / "train-000000.tar", samples))
    ds = TrainWindows([url], SPEC, seed=0, resampled=False)
    windows = list(ds)
    assert [(w["key"], w["start"]) for w in windows] == [("c50", 0)]  # one distinct start, no duplicates
    assert not windows[0]["prev_mask"].any()
    assert ds.skipped == 2


def test_emotion_modes(tmp_path):
    rng = np.random.default_rng(0)
    probs = np.full(7, 1 / 7, np.float32)
    with_probs = clip_members(rng.normal(size=(60, D)), rng.normal(size=(60, A)), 2, probs=probs)
    label_only = clip_members(rng.normal(size=(60, D)), rng.normal(size=(60, A)), 4)
    url = str(write_tar(tmp_path / "train-000000.tar", [("p", with_probs), ("l", label_only)]))

    def emotions(mode):
        ds = TrainWindows([url], WindowSpec(windows_per_clip=1), seed=0, resampled=False, emotion=mode)
        return {w["key"]: w["emotion"] for w in ds}, ds.skipped

    auto, _ = emotions("auto")
    np.testing.assert_allclose(auto["p"], probs)
    assert auto["l"].argmax() == 4 and auto["l"].sum() == 1
    label, _ = emotions("label")
    assert label["p"].argmax() == 2 and label["p"].sum() == 1
    strict, skipped = emotions("probs")
    assert set(strict) == {"p"} and skipped == 1


# ------------------------------------------------------------------ reproducibility and sharding
def test_same_seed_same_stream_different_seed_different(shard_dir):
    urls = _train_urls(shard_dir)
    a = _batches(make_loader(urls, SPEC, batch_size=4, seed=7), 6)
    b = _batches(make_loader(urls, SPEC, batch_size=4, seed=7), 6)
    c = _batches(make_loader(urls, SPEC, batch_size=4, seed=8), 6)
    _assert_same_batches(a, b)
    key = lambda bs: [(k, s) for x in bs for k, s in zip(x["key"], x["start"].tolist())]  # noqa: E731
    assert key(a) != key(c)


def test_assign_shards_cases():
    # enough shards: every (rank, worker) stream gets its own disjoint set
    sets = [set(assign_shards(8, r, 2, w, 2)) for r in range(2) for w in range(2)]
    assert set().union(*sets) == set(range(8)) and sum(map(len, sets)) == 8
    # fewer than ranks x workers but >= ranks: ranks disjoint, workers of a rank share
    assert assign_shards(3, 0, 2, 0, 4) == assign_shards(3, 0, 2, 3, 4) == [0, 2]
    assert assign_shards(3, 1, 2, 1, 4) == [1]
    # fewer than ranks: everyone reads everything
    assert assign_shards(1, 1, 2, 1, 2) == [0]
    with pytest.raises(ValueError):
        assign_shards(4, 2, 2, 0, 1)


def test_ranks_read_disjoint_shards(shard_dir):
    urls = _train_urls(shard_dir)
    shard_of = lambda key: key.split("-")[1]  # noqa: E731  ("train-s002-c0007" -> "s002")
    seen = []
    for rank in range(2):
        loader = make_loader(urls, SPEC, batch_size=4, num_workers=2, seed=0, rank=rank, world_size=2)
        seen.append({shard_of(k) for b in _batches(loader, 12) for k in b["key"]})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == {"s000", "s001", "s002", "s003"}


def test_one_shard_two_ranks_two_workers_nobody_hangs(tmp_path):
    folder = tmp_path / "one"
    make_shards(folder, {"train": 2}, frames=60, dim_w=D, audio_dim=A, clips_per_shard=8)
    urls = shard_urls(folder, "train")
    assert len(urls) == 1
    results = {}

    def run(rank):
        loader = make_loader(urls, SPEC, batch_size=2, num_workers=2, seed=0, rank=rank, world_size=2)
        results[rank] = _batches(loader, 4)

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a rank hung waiting for data"
    assert all(len(results[r]) == 4 for r in range(2))
    # streams share the shard but are seeded differently
    assert results[0][0]["start"].tolist() != results[1][0]["start"].tolist() or \
        results[0][0]["ref_frame"].tolist() != results[1][0]["ref_frame"].tolist()


def test_single_pass_mode_yields_each_clip_once_and_ends(shard_dir):
    ds = TrainWindows(_train_urls(shard_dir), SPEC, seed=0, resampled=False)
    windows = list(ds)
    keys = [w["key"] for w in windows]
    clips = read_split(shard_dir, "train")
    assert set(keys) == set(clips)
    assert all(keys.count(k) == min(3, len(c["motion"]) - 49) for k, c in clips.items())
    starts = {(w["key"], w["start"]) for w in windows}
    assert len(starts) == len(windows), "windows of a clip start at distinct frames"


# ------------------------------------------------------------------ exact resume
@pytest.mark.parametrize("num_workers,k", [(0, 5), (2, 7)])
def test_resume_continues_the_uninterrupted_stream(shard_dir, num_workers, k):
    urls = _train_urls(shard_dir)
    full_loader = make_loader(urls, SPEC, batch_size=5, num_workers=num_workers, seed=1, shuffle_buffer=8)
    it = iter(full_loader)
    head = [next(it) for _ in range(k)]
    state = json.loads(json.dumps(full_loader.state_dict()))  # what a checkpoint stores
    tail = [next(it) for _ in range(8)]
    del it
    assert any(s[1] > 0 for s in state["streams"]), "the test should stop in the middle of a block"
    resumed = make_loader(urls, SPEC, batch_size=5, num_workers=num_workers, seed=1, shuffle_buffer=8,
                          state=state)
    _assert_same_batches(_batches(resumed, 8), tail)
    assert head[0]["key"] != tail[0]["key"] or head[0]["start"].tolist() != tail[0]["start"].tolist()


def test_resume_with_other_stream_settings_is_refused_or_restarted(shard_dir):
    urls = _train_urls(shard_dir)
    loader = make_loader(urls, SPEC, batch_size=4, seed=1)
    _batches(loader, 3)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="seed: saved 1, now 2"):
        make_loader(urls, SPEC, batch_size=4, seed=2, state=state)
    other = make_loader(urls, SPEC, batch_size=4, num_workers=2, seed=1)
    other.load_state_dict(state, strict=False)
    assert other.batches == 3 and other.restart == 3 and other.streams is None


# ------------------------------------------------------------------ bad input
def test_corrupt_members_are_skipped_counted_and_logged(tmp_path, caplog):
    rng = np.random.default_rng(0)
    good = lambda: clip_members(rng.normal(size=(60, D)), rng.normal(size=(60, A)), 0)  # noqa: E731
    bad_npy, no_audio, short_audio, wide, nan = good(), good(), good(), good(), good()
    bad_npy[MOTION] = b"\x93NUMPY garbage"
    del no_audio[AUDIO]
    short_audio[AUDIO] = encode_npy(np.zeros((59, A), np.float16))
    wide[MOTION] = encode_npy(np.zeros((60, D + 1), np.float32))
    nan_motion = rng.normal(size=(60, D)).astype(np.float32)
    nan_motion[5, 3] = np.nan
    nan[MOTION] = encode_npy(nan_motion)
    truncated = good()
    truncated[MOTION] = truncated[MOTION][:-10]
    samples = [("ok1", good()), ("badnpy", bad_npy), ("noaudio", no_audio), ("shortaudio", short_audio),
               ("wide", wide), ("nan", nan), ("truncated", truncated), ("ok2", good())]
    url = str(write_tar(tmp_path / "train-000000.tar", samples))
    with caplog.at_level(logging.WARNING, logger="shards.dataset"):
        loader = make_loader([url], SPEC, batch_size=3, seed=0, motion_dim=D, audio_dim=A,
                             resampled=False)
        batches = list(loader)
    keys = {k for b in batches for k in b["key"]}
    assert keys == {"ok1", "ok2"}
    assert loader.skipped == 6 and loader.dataset.skipped == 6
    logged = caplog.text
    for key in ("badnpy", "noaudio", "shortaudio", "wide", "nan", "truncated"):
        assert key in logged
    assert "train-000000.tar" in logged


def test_a_tar_that_is_not_a_shard_errors_naming_the_file(tmp_path):
    foreign = write_tar(tmp_path / "train-000000.tar", [("a", {"txt": b"hello"}), ("b", {"png": b"x"})])
    garbage = tmp_path / "train-000001.tar"
    garbage.write_bytes(b"this is not a tar file at all" * 50)
    for path in (foreign, garbage):
        with pytest.raises(ShardError, match=path.name):
            next(iter(TrainWindows([str(path)], SPEC, seed=0)))
        with pytest.raises(ShardError, match=path.name):
            ValWindows([str(path)], SPEC)
    with pytest.raises(ShardError, match="not a FLOAT shard"):
        ValWindows([str(foreign)], SPEC)


def test_a_cut_short_tar_keeps_the_samples_before_the_cut(tmp_path):
    rng = np.random.default_rng(0)
    samples = [(f"c{i}", clip_members(rng.normal(size=(60, D)), rng.normal(size=(60, A)), 0)) for i in range(3)]
    path = write_tar(tmp_path / "train-000000.tar", samples)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    val = ValWindows([str(path)], SPEC, windows_per_clip=1)
    assert 1 <= len(val) < 3 and val.windows[0]["key"] == "c0"


def test_shards_without_any_usable_clip_raise_instead_of_hanging(tmp_path):
    rng = np.random.default_rng(0)
    url = str(write_tar(tmp_path / "train-000000.tar",
                        [("s", clip_members(rng.normal(size=(20, D)), rng.normal(size=(20, A)), 0))]))
    with pytest.raises(RuntimeError, match="no usable clip"):
        next(iter(TrainWindows([url], SPEC, seed=0)))


def test_a_failing_download_is_skipped_and_counted_not_fatal(shard_dir):
    good = _train_urls(shard_dir)[0]
    # retry_delay: the failing shard is retried (shards/dataset.py's rule), quickly here
    loader = make_loader(["pipe:exit 3", good], SPEC, batch_size=4, seed=0, shards_per_block=1, retry_delay=0.01)
    keys = {k for b in _batches(loader, 12) for k in b["key"]}
    assert keys == set(read_clips(good)) and loader.skipped >= 1
    with pytest.raises(RuntimeError, match="no usable clip"):
        next(iter(TrainWindows(["pipe:exit 3"], SPEC, seed=0, retry_delay=0.01)))
    with pytest.raises(OSError, match="exit 3"):
        ValWindows(["pipe:exit 3"], SPEC)


def test_missing_or_empty_shard_folder_errors_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        shard_urls(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is empty"):
        shard_urls(tmp_path / "empty", "train")
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "notes.txt").write_text("x")
    with pytest.raises(ManifestError, match="manifest.json"):
        shard_urls(tmp_path / "stray", "train")
    make_shards(tmp_path / "trainonly", {"train": 2}, frames=60, dim_w=D, audio_dim=A)
    with pytest.raises(FileNotFoundError, match="no 'val' shards"):
        shard_urls(tmp_path / "trainonly", "val")
    (tmp_path / "trainonly" / "train-000000.tar").unlink()
    with pytest.raises(FileNotFoundError, match="train-000000.tar"):
        shard_urls(tmp_path / "trainonly", "train")
    with pytest.raises(ValueError, match="no shard URLs"):
        TrainWindows([], SPEC)


def test_shard_urls_for_patterns_and_remote_storage(shard_dir):
    assert shard_urls(shard_dir, "train") == [str(shard_dir / f"train-{i:06d}.tar") for i in range(4)]
    # URLs stay URLs: shards/remote.py opens them with WebDataset's gopen handlers
    assert shard_urls("https://h/x/{split}-{000000..000001}.tar", "val") == [
        "https://h/x/val-000000.tar", "https://h/x/val-000001.tar"]
    assert shard_urls("s3://bucket/train-{0..1}.tar", "train") == ["s3://bucket/train-0.tar", "s3://bucket/train-1.tar"]
    assert shard_urls("pipe:cat a.tar") == ["pipe:cat a.tar"]
    local = shard_urls(str(shard_dir / "train-{000000..000001}.tar"))
    assert local == [str(shard_dir / "train-000000.tar"), str(shard_dir / "train-000001.tar")]
    # a pipe: URL streams like a file
    windows = list(TrainWindows([f"pipe:cat {local[0]}"], SPEC, seed=0, resampled=False))
    assert {w["key"] for w in windows} == set(read_clips(local[0]))


def test_check_compatible_names_every_difference(shard_dir):
    manifest = manifest_of(shard_dir)
    assert manifest_of("pipe:cat x.tar") is None
    assert manifest_dims(manifest) == (D, A)
    cfg = get_preset("tiny", dim_w=D, dim_a=D, audio_input_dim=A)
    check_compatible(manifest, cfg, expected_motion_fingerprint="synthetic-motion-seed-0")
    bad_cfg = get_preset("tiny", dim_w=D + 1, audio_input_dim=A * 2, fps=30)
    with pytest.raises(ValueError) as err:
        check_compatible(manifest, bad_cfg, expected_motion_fingerprint="official-float")
    text = str(err.value)
    for part in ("dim_w=17", "features.motion.dim=16", "audio_input_dim=24", "fps=30", "official-float",
                 "synthetic-motion-seed-0"):
        assert part in text
    assert text.count("\n  - ") == 4
    del manifest["features"]["audio"]
    with pytest.raises(ValueError, match="no features.audio.dim"):
        check_compatible(manifest, cfg)


# ------------------------------------------------------------------ validation windows
def test_val_windows_are_fixed_evenly_spread_and_finite(shard_dir):
    urls = shard_urls(shard_dir, "val")
    clips = read_split(shard_dir, "val")
    a = ValWindows(urls, SPEC, windows_per_clip=3, motion_dim=D, audio_dim=A)
    b = ValWindows(urls, SPEC, windows_per_clip=3, motion_dim=D, audio_dim=A)
    assert len(a) == len(b) == sum(min(3, len(c["motion"]) - 49) for c in clips.values())
    for wa, wb in zip(a.windows, b.windows):
        assert (wa["key"], wa["start"]) == (wb["key"], wb["start"])
        np.testing.assert_array_equal(wa["motion"], wb["motion"])
    for key, clip in clips.items():
        starts = [w["start"] for w in a.windows if w["key"] == key]
        assert starts[0] == 0 and starts[-1] == len(clip["motion"]) - 50
        np.testing.assert_array_equal(a.windows[0]["ref_motion"], clips[a.windows[0]["key"]]["motion"][0])
    batches = a.batches(4)
    assert sum(len(x["key"]) for x in batches) == len(a)
    assert batches[0]["motion"].shape == (4, 50, D)
    halves = [sum(len(x["key"]) for x in a.batches(4, rank=r, world_size=2)) for r in range(2)]
    assert sum(halves) == len(a)
    assert len(ValWindows(urls, SPEC, windows_per_clip=1, max_clips=2)) == 2
