"""The offline stage end to end on small synthetic RAVDESS sets: shards, resume, SIGKILL,
parts, bad input, fail-fast errors, and the encoders it uses."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from float.config import get_preset

from preprocess import pipeline
from preprocess.clip import prepare_clip
from preprocess.command import shards as shards_command
from preprocess.discover import discover
from preprocess.encode import EncoderSetupError, LogMel, build_encoder, load_motion_encoder
from shards.sample import emotion_one_hot, reference_jpeg
from preprocess.errors import PipelineError
from preprocess.output import merge_part_outputs
from preprocess.pipeline import run_shards
from preprocess.settings import ShardSettings
from preprocess.splits import assign_splits, index_range, parse_part, part_of
from preprocess.synthetic import make_synthetic_ravdess
from shards.format import AUDIO, EMOTION, EMOTIONS, ERRORS, LAMBDAS, MANIFEST, META, MOTION, SPLITS, decode_npy
from shards.inspect import file_sha256, inspect_shards, iter_samples, list_shards, scan_shard

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """4 square clips (4 actors), already 'cropped': crop none and 8 px latents keep runs fast."""
    return make_synthetic_ravdess(tmp_path_factory.mktemp("synth"), actors=(1, 2, 3, 4), statements=(1,),
                                  emotions=(3,), size=(128, 128))


def settings(synth: Path, out: Path, **kw) -> ShardSettings:
    base = dict(ravdess=synth, out=out, input_size=8, crop="none", workers=0, progress=False,
                shard_samples=1)
    return ShardSettings(**(base | kw))


@pytest.fixture(scope="module")
def first_run(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("first") / "shards"
    summary = run_shards(settings(synth, out), log=lambda m: None)
    return out, summary


def shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in list_shards(folder)}


def all_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    return {k: m for p in list_shards(folder) for k, m in iter_samples(p)}


# --------------------------------------------------------------------------- whole runs
def test_run_writes_valid_shards_split_by_actor(first_run, synth):
    out, summary = first_run
    assert summary.exit_code == 0 and summary.rejected == 0
    assert summary.written == {"train": 2, "val": 1, "test": 1}  # 4 actors -> 2/1/1 actors
    assert inspect_shards(out).problems == []
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["settings"]["splits"] == {"val": ["03"], "test": ["04"]}
    assert manifest["encoders"]["motion"]["random"] is True and manifest["features"]["audio"]["kind"] == "mel"
    assert (out / ERRORS).read_text() == ""
    samples = all_samples(out)
    assert len(samples) == 4
    split_of_actor = {"01": "train", "02": "train", "03": "val", "04": "test"}
    for key, members in samples.items():
        meta = json.loads(members[META])
        assert meta["split"] == split_of_actor[meta["actor"]]
        t = meta["n_frames"]
        assert decode_npy(members[MOTION]).shape == (t, 512) and decode_npy(members[LAMBDAS]).shape == (t, 20)
        audio = decode_npy(members[AUDIO])
        assert audio.shape == (t, 80) and audio.dtype == np.float16
        assert EMOTIONS[int(decode_npy(members[EMOTION]).argmax())] == meta["emotion"]
        assert abs(meta["source_fps"] - 29.97) < 0.01 and meta["crop"] is None
    # The trainer's reader (WebDataset) sees one sample per clip with every member.
    import webdataset as wds

    ds = wds.WebDataset([str(p) for p in list_shards(out)], shardshuffle=False)
    assert sorted(s["__key__"] for s in ds) == sorted(samples)
    # The stored latents are what the encoder gives for the prepared clip.
    src = discover(synth)[0][0]
    clip = prepare_clip(src, 8, crop="none")
    encoder = build_encoder(8, log=lambda m: None, ae_width=get_preset("tiny").ae_width)  # the default preset's
    enc = encoder.encode(clip.frames, clip.audio)
    np.testing.assert_array_equal(decode_npy(samples[src.clip_id][MOTION]), enc.motion)
    np.testing.assert_array_equal(decode_npy(samples[src.clip_id][AUDIO]), enc.audio)


def test_same_inputs_same_bytes_with_worker_processes(first_run, synth, tmp_path):
    out, _ = first_run
    run_shards(settings(synth, tmp_path / "again", workers=2), log=lambda m: None)
    assert shard_hashes(tmp_path / "again") == shard_hashes(out)
    assert json.loads((tmp_path / "again" / MANIFEST).read_text())["fingerprint"] == \
        json.loads((out / MANIFEST).read_text())["fingerprint"]


def test_resume_redoes_only_missing_clips_and_discards_tmp(first_run, synth, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(first_run[0], out)
    lost = scan_shard(out / "train-000001.tar").keys
    assert len(lost) == 1
    (out / "train-000001.tar").rename(out / "train-000001.tar.tmp")  # as a killed run leaves it
    (out / ".manifest.json.k1ll3d.tmp").write_text("{")  # killed while writing the manifest
    logs = []
    summary = run_shards(settings(synth, out), log=logs.append)
    assert summary.written == {"train": len(lost), "val": 0, "test": 0}
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert any("discarding train-000001.tar.tmp" in m for m in logs)
    assert inspect_shards(out).problems == []
    assert set(all_samples(out)) == set(all_samples(first_run[0]))
    again = run_shards(settings(synth, out), log=lambda m: None)
    assert sum(again.written.values()) == 0 and again.exit_code == 0 and again.total_present == 4


def test_different_settings_refused_naming_them_unless_overwrite(first_run, synth, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(first_run[0], out)
    before = shard_hashes(out)
    with pytest.raises(PipelineError, match=r"different settings: .*input_size: 8 -> 16.*motion encoder"):
        run_shards(settings(synth, out, input_size=16), log=lambda m: None)
    with pytest.raises(PipelineError, match=r"test_actors: \['04'\] -> \['01'\]"):
        run_shards(settings(synth, out, test_ids=("01",)), log=lambda m: None)
    assert shard_hashes(out) == before  # refused before touching anything
    summary = run_shards(settings(synth, out, test_ids=("01",), overwrite=True), log=lambda m: None)
    assert summary.written["test"] == 1 and inspect_shards(out).problems == []
    assert json.loads((out / MANIFEST).read_text())["settings"]["splits"]["test"] == ["01"]


def test_parts_write_disjoint_shards_and_merge(first_run, synth, tmp_path):
    out = tmp_path / "shards"
    clips = [c.clip_id for c in discover(synth)[0]]
    assert {part_of(c, 2) for c in clips} == {1, 2}  # both parts have work
    for i in (1, 2):
        summary = run_shards(settings(synth, out, part=f"{i}/2"), log=lambda m: None)
        assert sum(summary.written.values()) == sum(part_of(c, 2) == i for c in clips)
        assert (out / f"manifest.part-{i}-of-2.json").is_file() and (out / f"errors.part-{i}-of-2.jsonl").is_file()
    for path in list_shards(out):
        index = int(path.stem.split("-")[1])
        owner = 1 if index < 500000 else 2
        assert all(part_of(k, 2) == owner for k in scan_shard(path).keys)
    merged = merge_part_outputs(out)
    assert sum(merged["splits"][s]["clips"] for s in SPLITS) == 4
    assert inspect_shards(out).problems == []
    assert set(all_samples(out)) == set(clips)


def test_sigkill_leaves_no_corrupt_shard_and_rerun_completes(synth, tmp_path):
    out = tmp_path / "shards"
    args = ["--ravdess", str(synth), "--out", str(out), "--input-size", "8", "--crop", "none", "--workers", "0",
            "--shard-samples", "1", "--no-progress"]
    code = "import typer; from preprocess.command import shards; typer.run(shards)"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(out.glob("*.tar")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {stderr[-2000:]}"
    assert list(out.glob("*.tar")), f"no shard appeared before the kill: {stderr[-2000:]}"
    for path in list_shards(out):  # every .tar present is complete and readable
        scan_shard(path)
    completed = {k for p in list_shards(out) for k in scan_shard(p).keys}
    summary = run_shards(settings(synth, out), log=lambda m: None)
    assert 0 < len(completed) < 4
    assert summary.total_present == 4 and sum(summary.written.values()) == 4 - len(completed)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert inspect_shards(out).problems == []


# --------------------------------------------------------------------------- bad input
def write_video(path: Path, frames: np.ndarray, fps: int = 25, tone: bool = True) -> Path:
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        a = None
        if tone:
            a = c.add_stream("aac", rate=16000)
            a.layout = "mono"
        for f in frames:
            for pkt in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in v.encode():
            c.mux(pkt)
        if a is not None:
            n = int(len(frames) / fps * 16000)
            wave = (0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / 16000)).astype(np.float32)
            for start in range(0, n, 1024):
                chunk = wave[start:start + 1024][None]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate = 16000
                frame.pts = start
                for pkt in a.encode(frame):
                    c.mux(pkt)
            for pkt in a.encode():
                c.mux(pkt)
    return path


def test_bad_clips_land_in_errors_while_good_ones_are_written(tmp_path, monkeypatch):
    root = make_synthetic_ravdess(tmp_path / "ravdess", actors=(1,), statements=(1,), emotions=(1,))
    actor = root / "Actor_01"
    good = actor / "01-01-01-01-01-01-01.mp4"
    rng = np.random.default_rng(0)
    (actor / "01-01-03-01-01-01-01.mp4").write_bytes(b"")
    (actor / "01-01-04-01-01-01-01.mp4").write_bytes(good.read_bytes()[:3000])
    (actor / "01-01-05-01-01-01-01.mp4").write_text("this is not a video\n")
    noise = rng.integers(0, 255, (75, 144, 256, 3), dtype=np.uint8)
    write_video(actor / "01-01-06-01-01-01-01.mp4", noise[:, :, :, :], tone=False)  # no audio, no wav
    write_video(actor / "01-01-07-01-01-01-01.mp4", noise[:25])  # 1 s
    write_video(actor / "01-01-08-01-01-01-01.mp4", noise)  # 3 s of noise: no face
    (actor / "hello.mp4").write_bytes(good.read_bytes())
    unreadable = actor / "01-01-02-01-02-01-01.mp4"
    unreadable.write_bytes(good.read_bytes())
    # Tests run as root, where chmod 000 still reads: deny the read the way the OS would.
    import builtins

    import preprocess.media as media

    def deny(path, *args, **kwargs):
        if str(path) == str(unreadable):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(media, "open", deny, raising=False)  # workers=0: same process
    out = tmp_path / "shards"
    summary = run_shards(ShardSettings(ravdess=root, out=out, input_size=8, workers=0, progress=False),
                         log=lambda m: None)
    assert summary.written["train"] == 1 and summary.exit_code == 0
    errors = {Path(e["file"]).name: e["reason"] for e in map(json.loads, (out / ERRORS).read_text().splitlines())}
    expected = {
        "01-01-03-01-01-01-01.mp4": "zero-byte",
        "01-01-04-01-01-01-01.mp4": "",
        "01-01-05-01-01-01-01.mp4": "text file",
        "01-01-06-01-01-01-01.mp4": "no audio track",
        "01-01-07-01-01-01-01.mp4": "shorter than 2.0 s",
        "01-01-08-01-01-01-01.mp4": "no face",
        "hello.mp4": "does not parse",
        "01-01-02-01-02-01-01.mp4": "permission denied",
    }
    assert set(errors) == set(expected)
    for name, words in expected.items():
        assert errors[name] and words in errors[name], (name, errors[name])
    assert inspect_shards(out).problems == []
    meta = json.loads(all_samples(out)["01-01-01-01-01-01-01"][META])
    assert meta["crop"]["side"] > 0  # the auto crop ran on the real face


def test_nothing_usable_exits_nonzero(tmp_path):
    root = tmp_path / "ravdess" / "Actor_01"
    root.mkdir(parents=True)
    (root / "01-01-03-01-01-01-01.mp4").write_bytes(b"")
    out = tmp_path / "shards"
    summary = run_shards(ShardSettings(ravdess=root.parent, out=out, input_size=8, workers=0, progress=False),
                         log=lambda m: None)
    assert summary.exit_code == 1 and summary.total_present == 0
    assert "zero-byte" in (out / ERRORS).read_text()


def cli():
    app = typer.Typer()
    app.command()(shards_command)
    return app


def test_missing_input_and_weights_fail_before_any_work(tmp_path):
    out = tmp_path / "shards"
    r = CliRunner().invoke(cli(), ["--ravdess", str(tmp_path / "nope"), "--out", str(out)])
    assert r.exit_code == 2 and "does not exist" in r.output and not out.exists()
    # A missing weights path is reported first, even when the input is missing too.
    for option in ("--float-ckpt", "--wav2vec2", "--ser"):
        r = CliRunner().invoke(cli(), ["--ravdess", str(tmp_path / "nope"), "--out", str(out),
                                       option, str(tmp_path / "missing-weights")])
        assert r.exit_code == 2 and f"{option} {tmp_path / 'missing-weights'}: no such" in r.output
    assert not out.exists()
    r = CliRunner().invoke(cli(), ["--part", "3/2", "--out", str(out)])
    assert r.exit_code == 2 and "1 <= i <= N" in r.output


def test_help_documents_every_option():
    r = CliRunner().invoke(cli(), ["--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for option in ("--ravdess", "--input", "--out", "--preset", "--crop", "--audio-features", "--wav2vec2", "--ser",
                   "--float-ckpt", "--vocal-channels", "--val-actors", "--test-actors", "--workers", "--batch-size",
                   "--device", "--part", "--shard-size-mb", "--min-seconds", "--seed", "--overwrite", "--merge"):
        assert option in r.output, option


def test_no_dataset_makes_and_reuses_the_synthetic_set(tmp_path, monkeypatch):
    import preprocess.synthetic as synthetic

    calls = []
    real = synthetic.make_synthetic_ravdess

    def small(root, seed=0):
        calls.append(root)
        return real(root, actors=(1,), statements=(1,), emotions=(1,), seed=seed, size=(128, 128))

    monkeypatch.setattr(synthetic, "make_synthetic_ravdess", small)
    s = ShardSettings(synthetic_dir=tmp_path / "synthetic_ravdess")
    assert pipeline.resolve_input(s, log=lambda m: None) == (tmp_path / "synthetic_ravdess", "ravdess")
    assert pipeline.resolve_input(s, log=lambda m: None)[0].is_dir()
    assert len(calls) == 1  # made once, then reused
    assert len(discover(tmp_path / "synthetic_ravdess")[0]) == 1


# --------------------------------------------------------------------------- pure helpers
def test_actor_split_rules():
    ravdess = [f"{i:02d}" for i in range(1, 25)]
    split = assign_splits(ravdess, warn=lambda m: None)
    assert [a for a in ravdess if split[a] == "val"] == ["21", "22"]
    assert [a for a in ravdess if split[a] == "test"] == ["23", "24"]
    warnings = []
    four = assign_splits(["04", "1", "2", "03"], warn=warnings.append)
    assert four == {"1": "train", "2": "train", "03": "val", "04": "test"} and warnings
    assert assign_splits(["a", "b"], warn=lambda m: None) == {"a": "train", "b": "val"}
    assert assign_splits(["a"], warn=lambda m: None) == {"a": "train"}
    explicit = assign_splits(ravdess, val_ids=["01"], test_ids=["02", "03"])
    assert [a for a in ravdess if explicit[a] != "train"] == ["01", "02", "03"]
    only_test = assign_splits(ravdess, n_val=1, test_ids=["05"])
    assert only_test["05"] == "test" and only_test["24"] == "val" and list(only_test.values()).count("val") == 1
    with pytest.raises(PipelineError, match="not in the dataset"):
        assign_splits(ravdess, val_ids=["99"])
    with pytest.raises(PipelineError, match="both val and test"):
        assign_splits(ravdess, val_ids=["01"], test_ids=["01"])
    with pytest.raises(PipelineError, match="no actor for training"):
        assign_splits(["1", "2"], val_ids=["1"], test_ids=["2"])


def test_parts_cover_every_clip_once_and_ranges_do_not_overlap():
    keys = [f"01-01-0{e}-01-0{s}-01-{a:02d}" for e in range(1, 9) for s in (1, 2) for a in range(1, 25)]
    counts = [sum(part_of(k, 4) == i for k in keys) for i in (1, 2, 3, 4)]
    assert sum(counts) == len(keys) and min(counts) > len(keys) // 8
    assert [index_range((i, 4)) for i in (1, 2, 3, 4)] == [(0, 250000), (250000, 500000), (500000, 750000),
                                                            (750000, 1000000)]
    assert parse_part("2/4") == (2, 4) and parse_part(None) is None
    for bad in ("0/4", "5/4", "x", "1/0"):
        with pytest.raises(PipelineError):
            parse_part(bad)


# --------------------------------------------------------------------------- encoders
def test_log_mel_one_row_per_frame_aligned_with_the_audio():
    frames = 40
    audio = np.zeros(frames * 640, np.float32)
    audio[17 * 640:18 * 640] = np.sin(2 * np.pi * 1000 * np.arange(640) / 16000)
    mel = LogMel()(audio, frames)
    assert mel.shape == (frames, 80)
    assert int(mel.max(axis=1).argmax()) == 17
    assert LogMel()(audio[:-100], frames).shape == (frames, 80)  # a short tail is padded


def test_emotion_and_reference_helpers():
    assert emotion_one_hot("sad")[EMOTIONS.index("sad")] == 1 and emotion_one_hot(None).sum() == 0
    with pytest.raises(ValueError):
        emotion_one_hot("calm")
    frame = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    assert reference_jpeg(frame) == reference_jpeg(frame.copy())
    import cv2

    # kept at the crop's own size (512 px crops give a 512 px reference), shrunk only when asked
    assert cv2.imdecode(np.frombuffer(reference_jpeg(frame), np.uint8), cv2.IMREAD_COLOR).shape == (256, 256, 3)
    assert cv2.imdecode(np.frombuffer(reference_jpeg(frame, 64), np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)


def test_motion_encoder_from_float_pth(tmp_path):
    from float.hf_checkpoint import state_fingerprint
    from float.motion_autoencoder import MotionAutoEncoder

    torch.manual_seed(123)
    model = MotionAutoEncoder(8)
    state = {f"motion_autoencoder.{k}": v for k, v in model.state_dict().items()} | {"fmt.x": torch.zeros(1)}
    torch.save(state, tmp_path / "float.pth")
    loaded, info = load_motion_encoder(8, tmp_path / "float.pth", seed=0)
    assert info["random"] is False and info["source"] == str(tmp_path / "float.pth")
    assert info["fingerprint"] == state_fingerprint(model)
    with pytest.raises(EncoderSetupError, match="do not fit a 16px encoder"):
        load_motion_encoder(16, tmp_path / "float.pth", seed=0)
    torch.save({"fmt.x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(EncoderSetupError, match="no 'motion_autoencoder.\\*' keys"):
        load_motion_encoder(8, tmp_path / "other.pth", seed=0)
    _, rand_a = load_motion_encoder(8, None, seed=0)
    _, rand_b = load_motion_encoder(8, None, seed=1)
    assert rand_a["random"] and rand_a["fingerprint"] != rand_b["fingerprint"]


def test_wav2vec2_and_ser_folders(ref_dir):
    from float.audio_encoder import Wav2Vec2Features

    enc = build_encoder(8, "auto", ref_dir / "wav2vec2_tiny", ref_dir / "ser_tiny", device="cpu",
                        log=lambda m: None)
    assert enc.audio_kind == "wav2vec2" and enc.features_info()["audio"] == {
        "dim": 64, "dtype": "float16", "kind": "wav2vec2", "layers": "all"}
    assert enc.features_info()["emotion"]["probs"] is True
    assert enc.encoders_info["audio"]["random"] is False and enc.encoders_info["emotion"]["random"] is False
    assert enc.encoders_info["motion"]["random"] is True  # no --float-ckpt
    audio = (0.1 * np.random.default_rng(0).normal(size=30 * 640)).astype(np.float32)
    feats = enc.encode_audio(audio, 30)
    ref = Wav2Vec2Features.from_pretrained(ref_dir / "wav2vec2_tiny")
    wave = torch.from_numpy(audio)[None]
    want = ref(ref.normalize(wave), seq_len=30).numpy()[0].astype(np.float16)
    assert feats.shape == (30, 64) and feats.dtype == np.float16
    np.testing.assert_array_equal(feats, want)
    probs = enc.emotion_probs(audio)
    assert probs.shape == (7,) and abs(probs.sum() - 1) < 1e-5
    with pytest.raises(EncoderSetupError, match="unused"):
        build_encoder(8, "mel", ref_dir / "wav2vec2_tiny")


def test_half_precision_path_matches_float32():
    """The CUDA path runs the motion encoder in float16; exercise that dtype plumbing on the CPU."""
    enc = build_encoder(8, device="cpu", log=lambda m: None)
    frames = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    motion32, lambdas32 = enc.encode_frames(frames)
    enc.motion, enc.half = enc.motion.half(), True
    motion16, lambdas16 = enc.encode_frames(frames)
    assert motion16.dtype == np.float32 and enc.motion_precision == "float16"
    np.testing.assert_allclose(motion16, motion32, atol=5e-3 * np.abs(motion32).max())
    np.testing.assert_allclose(lambdas16, lambdas32, atol=5e-3 * np.abs(lambdas32).max())
    with pytest.raises(ValueError, match=r"\(T,8,8,3\) uint8"):
        enc.encode_frames(frames.astype(np.float32))
