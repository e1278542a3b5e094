"""Windows cut on the device from clip records (shards/clip_records.py, WindowLoader(cut="device")):
the batches equal the host collate's bit for bit (padding, mixed clip lengths, several windows of a clip
in a batch and a clip split across batches, workers, resume), the record keeps the audio float16 and
each row once, the failure modes, and a `floatctl train` run that ends with the same weights either way."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from shard_factory import clip_members, make_shards, write_tar
from shards.clip_records import cut_records, pack_records, record_bytes
from shards.dataset import TrainWindows
from shards.loader import WindowLoader, make_loader
from shards.sample import decode_clip
from shards.sources import shard_urls
from shards.windows import WindowSpec, collate, cut_windows
from trainer import checkpoints as ckpt
from trainer.command import train as train_command
from trainer.device_feed import DeviceFeed
from trainer.logging import read_metrics

D, A = 16, 12
SPEC = WindowSpec(num_frames=20, num_prev_frames=10, windows_per_clip=3)
BATCH_KEYS = ("motion", "prev_motion", "prev_mask", "audio", "prev_audio", "ref_motion", "emotion", "start",
              "ref_frame")


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    # Clips of 20..40 frames: many windows start before frame 10 (zero-padded preceding frames).
    make_shards(folder, {"train": 12, "val": 3}, frames=(20, 40), dim_w=D, audio_dim=A, seed=5, clips_per_shard=3)
    return folder


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def _assert_equal_batches(host: list[dict], device: list[dict]) -> None:
    assert len(host) == len(device)
    for i, (h, d) in enumerate(zip(host, device)):
        assert h["key"] == d["key"], i
        for name in BATCH_KEYS:
            assert h[name].dtype == d[name].dtype and h[name].shape == d[name].shape, (i, name)
            assert torch.equal(h[name], d[name]), (i, name)


def _loader(shard_dir, cut: str, **kw) -> WindowLoader:
    return make_loader(shard_urls(shard_dir, "train"), SPEC, batch_size=kw.pop("batch_size", 5),
                       num_workers=kw.pop("num_workers", 0), seed=1, shuffle_buffer=kw.pop("shuffle_buffer", 2),
                       cut=cut, **kw)


def _finished(loader: WindowLoader, n: int) -> list[dict]:
    return [loader.finish(b) for b in itertools.islice(iter(loader), n)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_device_cut_equals_host_collate_batch_for_batch(shard_dir, num_workers):
    host = _finished(_loader(shard_dir, "host", num_workers=num_workers), 10)
    device = _finished(_loader(shard_dir, "device", num_workers=num_workers), 10)
    _assert_equal_batches(host, device)
    # The cases the brief names all occur in these batches.
    keys = [b["key"] for b in host]
    assert any(len(set(k)) < len(k) for k in keys), "several windows of one clip in one batch"
    same_stream = max(1, num_workers)  # batch i comes from stream i % workers
    assert any(set(a) & set(b) for a, b in zip(keys, keys[same_stream:])), "a clip's windows split across batches"
    assert any((b["start"] < SPEC.num_prev_frames).any() for b in host), "zero-padded preceding frames"
    assert len({len(b["prev_mask"]) for b in host}) == 1 and len(set(itertools.chain(*keys))) >= 6


def test_record_keeps_float16_audio_and_each_row_once(shard_dir):
    ds = TrainWindows(shard_urls(shard_dir, "train"), SPEC, seed=0, shuffle_buffer=1)
    ds.keep_audio_dtype = True
    windows = list(itertools.islice(iter(ds), 6))  # shuffle buffer 1: two clips' windows, three each
    record = pack_records(windows)
    assert record["clip_audio"].dtype == torch.float16 and record["clip_motion"].dtype == torch.float32
    # Rows used: the union of each clip's windows' ranges [start, start + P + N) of its padded arrays.
    used = sum(len(set().union(*(range(w["start"], w["start"] + 30) for w in windows if w["_clip"] is c)))
               for c in {id(w["_clip"]): w["_clip"] for w in windows}.values())
    assert record["clip_motion"].shape == (used, D) and record["clip_audio"].shape == (used, A)
    host_windows = [dict(w, audio=w["audio"].astype(np.float32), prev_audio=w["prev_audio"].astype(np.float32))
                    for w in windows]
    host = collate(host_windows)
    assert record_bytes(record) < record_bytes(host) / 2
    _assert_equal_batches([host], [cut_records(record, SPEC.num_prev_frames, SPEC.num_frames)])


def test_a_spec_without_preceding_frames_cuts_equal_too(shard_dir):
    spec = WindowSpec(num_frames=20, num_prev_frames=0, windows_per_clip=3)
    loaders = [make_loader(shard_urls(shard_dir, "train"), spec, 5, seed=2, cut=cut) for cut in ("host", "device")]
    host, device = (_finished(loader, 3) for loader in loaders)
    _assert_equal_batches(host, device)
    assert device[0]["prev_motion"].shape == (5, 0, D) and device[0]["prev_mask"].shape == (5, 0)


def test_decode_keeps_float16_audio_only_when_asked():
    rng = np.random.default_rng(0)
    members = clip_members(rng.normal(size=(25, D)).astype(np.float32), rng.normal(size=(25, A)))
    plain = decode_clip("k", members, pad=3)
    kept = decode_clip("k", members, pad=3, keep_audio_dtype=True)
    assert plain.audio.dtype == np.float32 and kept.audio.dtype == np.float16 and kept.motion.dtype == np.float32
    assert np.array_equal(kept.audio.astype(np.float32), plain.audio) and not kept.audio[:3].any()
    bad = clip_members(np.zeros((25, D), np.float32), np.full((25, A), np.inf))
    with pytest.raises(Exception, match="NaN or infinite"):
        decode_clip("k", bad, pad=3, keep_audio_dtype=True)


@pytest.mark.parametrize("num_workers,k", [(0, 4), (2, 5)])
def test_resume_in_device_mode_continues_the_uninterrupted_stream(shard_dir, num_workers, k):
    whole = _loader(shard_dir, "host", num_workers=num_workers)
    it = iter(whole)
    [next(it) for _ in range(k)]
    state = json.loads(json.dumps(whole.state_dict()))
    tail = [next(it) for _ in range(6)]
    del it
    resumed = _loader(shard_dir, "device", num_workers=num_workers, state=state)
    _assert_equal_batches(tail, _finished(resumed, 6))


@pytest.mark.parametrize("ahead", [False, True])
def test_device_feed_hands_out_cut_batches(shard_dir, ahead):
    feed = DeviceFeed(_loader(shard_dir, "device"), torch.device("cpu"), ahead=ahead)
    fed = list(itertools.islice(iter(feed), 4))
    host = _loader(shard_dir, "host")
    _assert_equal_batches(_finished(host, 4), fed)
    assert feed.state_dict()["streams"] == host.state_dict()["streams"]  # the position of the batches handed out


def test_mixed_audio_widths_in_a_batch_give_collates_error(tmp_path):
    rng = np.random.default_rng(1)
    url = write_tar(tmp_path / "train-000000.tar", [
        (f"c{i}", clip_members(rng.normal(size=(30, D)).astype(np.float32), rng.normal(size=(30, A + i))))
        for i in range(2)])
    errors = []
    for cut in ("host", "device"):
        ds = TrainWindows([str(url)], WindowSpec(20, 10, 1), seed=0, resampled=False)
        with pytest.raises(ValueError, match=r"mixed feature widths") as caught:
            next(iter(WindowLoader(ds, batch_size=2, cut=cut)))
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "audio of window" in errors[0] and f"(20, {A + 1})" in errors[0]


def test_bad_cut_and_a_stream_with_its_own_collate_are_refused(shard_dir):
    class OwnCollate(TrainWindows):
        collate = staticmethod(lambda items: {"n": len(items)})

    urls = shard_urls(shard_dir, "train")
    with pytest.raises(ValueError, match="cut must be one of"):
        make_loader(urls, SPEC, 4, cut="gpu")
    with pytest.raises(ValueError, match="OwnCollate batches its items with its own collate"):
        WindowLoader(OwnCollate(urls, SPEC), 4, cut="device")
    # One stream handed from a device loader to a host one is collated float32 again.
    shared = TrainWindows(urls, SPEC, seed=0)
    WindowLoader(shared, 4, cut="device")
    assert next(iter(WindowLoader(shared, 4, cut="host")))["audio"].dtype == torch.float32
    clip = decode_clip("k", clip_members(np.zeros((25, D), np.float32), np.zeros((25, A))), pad=10)
    window = cut_windows(clip, SPEC, [0], [0])[0]
    del window["_clip"]
    with pytest.raises(ValueError, match="does not carry its clip"):
        pack_records([window])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_the_cut_on_cuda_reads_nothing_back_to_the_host(shard_dir):
    loader = _loader(shard_dir, "device", pin_memory=True)
    records = list(itertools.islice(iter(loader), 3))
    host = _finished(_loader(shard_dir, "host"), 3)
    cuda = torch.device("cuda")
    moved = [{k: v.to(cuda) if torch.is_tensor(v) else v for k, v in r.items()} for r in records]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        cut = [loader.finish(m) for m in moved]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    _assert_equal_batches(host, [{k: v.cpu() if torch.is_tensor(v) else v for k, v in b.items()} for b in cut])


# ---------------------------------------------------------------- the trainer
TINY = {"dim_w": D, "dim_a": 16, "dim_h": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train-shards")
    make_shards(folder, {"train": 8}, frames=(50, 70), dim_w=D, audio_dim=A, seed=6)  # windows of the tiny preset
    return folder


def _train(shard_dir, out: Path, *extra: str):
    app = typer.Typer()
    app.command()(train_command)
    args = ["--data-root", str(shard_dir), "--out", str(out), "--preset", "tiny", "--batch-size", "4",
            "--lr", "3e-3", "--log-step", "2", "--val-step", "0", "--sample-step", "0", "--no-progress",
            "--device", "cpu", "--deterministic", "--num-workers", "0", "--save-step", "3", *extra]
    args += [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output[-2000:]
    return result.output


def _final_state(run: Path) -> dict:
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    return {**{f"model.{k}": v for k, v in state["model"].items()},
            **{f"ema.{k}": v for k, v in state["ema"].items()}}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_train_device_cut_equals_host_and_resumes_exactly(train_shards, tmp_path):
    out = _train(train_shards, tmp_path / "host", "--steps", "6", "--window-cut", "host")
    assert "window_cut host" in out
    out = _train(train_shards, tmp_path / "device", "--steps", "6", "--window-cut", "device")
    assert "window_cut device" in out
    host, device = _final_state(tmp_path / "host"), _final_state(tmp_path / "device")
    _assert_same_state(host, device)
    logged = [read_metrics(tmp_path / run, "train") for run in ("host", "device")]
    losses = [[[m[k] for k in ("step", "total", "current", "preceding", "velocity", "grad_norm")] for m in runs]
              for runs in logged]
    assert losses[0] == losses[1] and len(losses[0]) == 3, losses
    # Stopped at step 3 (its checkpoint), resumed in device mode: the uninterrupted run's weights.
    step_3 = tmp_path / "device" / "checkpoints" / ckpt.step_filename(3)
    assert step_3.exists()
    out = _train(train_shards, tmp_path / "resumed", "--steps", "6", "--window-cut", "device", "--resume", str(step_3))
    assert "resumed from" in out
    _assert_same_state(device, _final_state(tmp_path / "resumed"))


def test_train_refuses_an_unknown_window_cut(shard_dir, tmp_path):
    app = typer.Typer()
    app.command()(train_command)
    result = CliRunner().invoke(app, ["--data-root", str(shard_dir), "--out", str(tmp_path / "r"),
                                      "--window-cut", "gpu", "--device", "cpu"])
    assert result.exit_code == 2 and "--window-cut must be auto, host or device, got 'gpu'" in result.output
