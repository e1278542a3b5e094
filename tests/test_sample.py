"""`floatctl sample`: held-out clips by default, new audio + portrait, outputs, metrics, and bad input.

A tiny checkpoint (saved with trainer.checkpoints.save_final) is sampled on
tiny shards from tests/shard_factory.py whose manifest records what the shard
stage would: log-mel audio features and a seeded random 16 px motion encoder
(with its real fingerprint), so every encoder is rebuilt from the manifest.
"""
from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from float.config import get_preset
from float.model import FloatMotionModel
from preprocess.encode import LogMel, load_motion_encoder
from shard_factory import make_shards, read_split
from shards.format import EMOTIONS
from shards.manifest import read_manifest, write_manifest
from trainer.checkpoints import CHECKPOINT_VERSION, save_final
from preprocess.media import source_waveform
from trainer.errors import SampleError
from trainer.sample.generate import generate
from trainer.sample.media_input import InputError, load_audio, load_reference_image, parse_emotion
from trainer.sample.render import write_mp4
from trainer.export import export
from trainer.sample.command import sample

SIZE = 16  # motion auto-encoder input size: fast to decode on a CPU
MEL = 80
TINY = dict(dim_w=512, dim_a=32, dim_h=32, depth=1, num_heads=2, audio_input_dim=MEL)


def cli(args: list[str]):
    app = typer.Typer()
    app.command()(sample)
    app.command()(export)
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def write_shards(folder: Path) -> dict:
    """Shards + a manifest that says: mel features, seeded random motion encoder at SIZE px."""
    _, motion_info = load_motion_encoder(SIZE, None, 0)
    manifest = make_shards(folder, {"train": 2, "val": 1, "test": 2}, frames=(52, 58), dim_w=512, audio_dim=MEL,
                           motion_fingerprint=motion_info["fingerprint"])
    mel = LogMel()
    manifest["input_size"] = SIZE
    manifest["features"]["audio"].update(kind="mel", layers=None)
    manifest["encoders"]["audio"] = {"fingerprint": mel.fingerprint, "source": mel.description, "random": False,
                                     "kind": "mel"}
    write_manifest(folder, manifest)
    return manifest


def write_checkpoint(run: Path, shards: Path, manifest: dict, step: int = 7) -> Path:
    """A tiny FloatMotionModel saved as trainer/loop.py saves it; weights perturbed so the audio matters."""
    cfg = get_preset("tiny", input_size=SIZE, **TINY)
    torch.manual_seed(0)
    model = FloatMotionModel(cfg)
    with torch.no_grad():  # the zero-initialised output layers would make every prediction 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.set_motion_stats(torch.full((512,), 0.05), torch.full((512,), 0.5))  # as for random-encoder shards
    state = {"version": CHECKPOINT_VERSION, "step": step, "model": model.state_dict(), "ema": model.state_dict(),
             "config": cfg.to_dict(), "settings": {"data_root": str(shards)},
             "manifest_fingerprint": manifest["fingerprint"]}
    return save_final(run / "checkpoints", state)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sample")
    manifest = write_shards(root / "shards")
    return {"root": root, "shards": root / "shards", "manifest": manifest,
            "ckpt": write_checkpoint(root / "runs" / "demo", root / "shards", manifest)}


def write_wav(path: Path, samples: np.ndarray, sr: int = 16000) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


def speech_like(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None)  # syllables
    return (0.5 * envelope * np.sin(2 * np.pi * 180 * t) * (1 + 0.3 * np.sin(2 * np.pi * 900 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def face_png(tmp_path_factory) -> Path:
    import skimage.data

    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def video_info(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return {"frames": sum(1 for _ in c.decode(video=0)), "fps": float(v.average_rate),
                "width": v.codec_context.width, "audio": bool(c.streams.audio)}


# ---------------------------------------------------------------- the default: held-out clips
def test_sample_with_no_option_renders_held_out_clips_and_reports_errors(run):
    result = cli(["sample", run["ckpt"]])
    assert result.exit_code == 0, result.output
    out = run["ckpt"].parent.parent / "samples" / run["ckpt"].stem  # runs/NAME/samples/<ckpt-stem>
    truth = read_split(run["shards"], "test")
    assert len(truth) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    for entry in metrics["items"]:
        key = entry["name"]
        frames = len(truth[key]["motion"])
        record = torch.load(out / f"{key}.motion.pt", weights_only=True)
        assert record["motion"].shape == (frames, 512)
        assert torch.equal(record["target"], torch.from_numpy(truth[key]["motion"]))
        # The printed / saved errors are those of the saved latents.
        assert entry["l1_audio"] == pytest.approx(float((record["motion"] - record["target"]).abs().mean()), rel=1e-5)
        assert entry["l1_no_audio"] == pytest.approx(
            float((record["motion_no_audio"] - record["target"]).abs().mean()), rel=1e-5)
        assert entry["l1_audio"] != entry["l1_no_audio"]  # the audio changes the generated motion
        assert video_info(out / f"{key}.mp4") == {"frames": frames, "fps": 25.0, "width": SIZE, "audio": False}
        side = video_info(out / f"{key}.gt_vs_generated.mp4")
        assert side["frames"] == frames and side["width"] == 2 * SIZE
        for own in ("truth", "no_audio"):  # on their own, for floatctl eval
            assert video_info(out / f"{key}.{own}.mp4") == {"frames": frames, "fps": 25.0, "width": SIZE,
                                                              "audio": False}
        assert (out / f"{key}.reference.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{key}.plot.png").read_bytes()[:4] == b"\x89PNG"
        assert key in result.output
    assert metrics["speed"]["motion_frames_per_s"] > 0 and metrics["speed"]["end_to_end_frames_per_s"] > 0
    assert "with the audio dropped" in result.output and "frames/s at NFE 10" in result.output
    assert "including rendering" in result.output
    assert "NOT a face" in result.output  # seeded random decoder weights, said plainly
    assert str(out / "metrics.json") in result.output and ".plot.png" in result.output


def test_held_out_clips_batched_through_the_fmt_equal_one_at_a_time(run, tmp_path):
    """The two test clips (52 and 58 frames) in one batch, or one per batch: the same latents, with and without audio."""
    latents = {}
    for batch in (8, 1):
        out = tmp_path / f"batch{batch}"
        result = cli(["sample", run["ckpt"], "--out", out, "--nfe", 2, "--no-render", "--clip-batch", batch])
        assert result.exit_code == 0, result.output
        assert ("generated 2 clips in one batch" in result.output) == (batch == 8)
        latents[batch] = {p.name: torch.load(p, weights_only=True) for p in sorted(out.glob("*.motion.pt"))}
    assert len(latents[8]) == 2 and latents[8].keys() == latents[1].keys()
    lengths = set()
    for name, together in latents[8].items():
        alone = latents[1][name]
        lengths.add(len(together["motion"]))
        torch.testing.assert_close(together["motion"], alone["motion"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(together["motion_no_audio"], alone["motion_no_audio"], atol=1e-4, rtol=1e-4)
    assert len(lengths) == 2  # clips of different lengths: the padding of the shorter one was exercised


@pytest.mark.parametrize("args,message", [
    (["--decoder-precision", "fp16"], "--decoder-precision 'fp16': choose one of auto, fp32, bf16"),
    (["--clip-batch", "0"], "--clip-batch must be at least 1"),
])
def test_bad_speed_options_are_one_line_and_exit_2(run, args, message):
    result = cli(["sample", run["ckpt"], *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_compile_on_the_cpu_is_a_note_not_an_error(run, tmp_path):
    result = cli(["sample", run["ckpt"], "--out", tmp_path, "--nfe", 2, "--no-render", "--clips", 1, "--compile"])
    assert result.exit_code == 0, result.output
    assert "--compile applies on CUDA only" in result.output
    assert json.loads((tmp_path / "metrics.json").read_text())["settings"]["compile"] is True


def test_no_face_checks_renders_without_the_lip_sync_proxy_and_face_rate(run, face_png, tmp_path):
    audio = write_wav(tmp_path / "speech.wav", speech_like(0.6))
    result = cli(["sample", run["ckpt"], "--audio", audio, "--image", face_png, "--out", tmp_path / "out", "--nfe", 2,
                  "--no-face-checks", "--render-batch", 4])
    assert result.exit_code == 0, result.output
    assert video_info(tmp_path / "out" / "speech-astronaut.mp4")["frames"] == 15
    entry = json.loads((tmp_path / "out" / "metrics.json").read_text())["items"][0]
    assert "face_rate_generated" not in entry and "lipsync" not in entry
    assert "lip-sync proxy" not in result.output and "a face (" not in result.output


def test_source_waveform_is_read_back_from_the_clip_source(tmp_path):
    audio = speech_like(1.0)
    video = write_mp4(tmp_path / "clip.mp4", np.zeros((25, 16, 16, 3), np.uint8), audio=audio)
    wave_ = source_waveform({"source": {"video": str(video), "audio": None}}, n_frames=25)
    assert wave_ is not None and len(wave_) == 25 * 640
    paired = write_wav(tmp_path / "clip.wav", audio)
    assert np.allclose(source_waveform({"source": {"video": "gone.mp4", "audio": str(paired)}}, 25), audio,
                       atol=1e-4)
    assert source_waveform({"source": {"video": "gone.mp4", "audio": None}}, 25) is None
    assert source_waveform({"source": str(paired)}, n_frames=80) is None  # too short to be this clip's


def test_generation_is_seeded(run):
    from trainer.checkpoints import load_sampling_model

    sm = load_sampling_model(run["ckpt"])
    clip = next(iter(read_split(run["shards"], "val").values()))
    args = (sm.model, clip["audio"].astype(np.float32), clip["motion"][0], clip["emotion"])
    a, b = generate(*args, nfe=2, seed=3), generate(*args, nfe=2, seed=3)
    assert torch.equal(a.motion, b.motion) and a.motion.shape == clip["motion"].shape
    assert not torch.equal(a.motion, generate(*args, nfe=2, seed=4).motion)
    with pytest.raises(SampleError, match="rk4"):
        generate(*args, nfe=2, solver="rk4")


# ---------------------------------------------------------------- new audio + portrait
def test_new_audio_and_image_give_a_video_with_that_audio(run, face_png, tmp_path):
    audio = write_wav(tmp_path / "speech.wav", speech_like(1.3))
    out = tmp_path / "out"
    result = cli(["sample", run["ckpt"], "--audio", audio, "--image", face_png, "--out", out,
                  "--emotion", "happy", "--nfe", 4, "--raw"])
    assert result.exit_code == 0, result.output
    frames = -(-int(1.3 * 16000) // 640)  # ceil: the last partial frame counts
    info = video_info(out / "speech-astronaut.mp4")
    assert info == {"frames": frames, "fps": 25.0, "width": SIZE, "audio": True}
    record = torch.load(out / "speech-astronaut.motion.pt", weights_only=True)
    assert record["motion"].shape == (frames, 512)
    assert torch.equal(record["emotion"], torch.eye(len(EMOTIONS))[EMOTIONS.index("happy")])
    assert record["settings"]["weights"] == "raw" and record["settings"]["nfe"] == 4
    assert (out / "speech-astronaut.plot.png").is_file()
    assert "emotion: happy" in result.output


def test_audio_from_a_video_track(tmp_path):
    audio = speech_like(0.8)
    video = write_mp4(tmp_path / "talk.mp4", np.zeros((20, 16, 16, 3), np.uint8), audio=audio)
    decoded = load_audio(video)
    assert decoded.dtype == np.float32 and abs(len(decoded) - len(audio)) <= 2048
    assert 0.1 < np.sqrt(np.mean(decoded ** 2)) < 0.4


def test_reference_image_is_face_cropped_or_resized(face_png):
    crop = load_reference_image(face_png, 64)
    plain = load_reference_image(face_png, 64, crop=False)
    assert crop.shape == plain.shape == (64, 64, 3) and crop.dtype == np.uint8
    assert np.abs(crop.astype(int) - plain.astype(int)).mean() > 10  # the crop zooms on the face


# ---------------------------------------------------------------- bad input
def test_audio_shorter_than_one_frame_is_refused(run, face_png, tmp_path):
    short = write_wav(tmp_path / "short.wav", speech_like(0.03))  # 480 samples < 640
    result = cli(["sample", run["ckpt"], "--audio", short, "--image", face_png])
    assert result.exit_code == 2
    assert "shorter than one video frame" in result.output and "short.wav" in result.output


def test_silent_audio_is_refused(run, face_png, tmp_path):
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16000, np.float32))
    result = cli(["sample", run["ckpt"], "--audio", silent, "--image", face_png])
    assert result.exit_code == 2 and "silent" in result.output and "silent.wav" in result.output


def test_unreadable_and_faceless_images_are_refused(run, tmp_path):
    audio = write_wav(tmp_path / "a.wav", speech_like(0.5))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    result = cli(["sample", run["ckpt"], "--audio", audio, "--image", text, "--out", tmp_path / "o1"])
    assert result.exit_code == 2 and "unreadable" in result.output and "notes.png" in result.output
    faceless = tmp_path / "wall.png"
    gradient = np.tile(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], (150, 1, 3))
    cv2.imwrite(str(faceless), gradient)
    result = cli(["sample", run["ckpt"], "--audio", audio, "--image", faceless, "--out", tmp_path / "o2"])
    assert result.exit_code == 2 and "no face detected" in result.output and "--no-crop" in result.output
    with pytest.raises(InputError, match="no such file"):
        load_reference_image(tmp_path / "missing.jpg", 16)


def test_unknown_emotion_lists_the_valid_ones(run):
    result = cli(["sample", run["ckpt"], "--emotion", "joyful"])
    assert result.exit_code == 2 and "joyful" in result.output
    for name in (*EMOTIONS, "auto", "none"):
        assert name in result.output
    assert parse_emotion("Happy") == "happy" and parse_emotion(None) is None


def test_emotion_auto_without_a_speech_emotion_model_says_what_to_pass(run, tmp_path):
    result = cli(["sample", run["ckpt"], "--emotion", "auto", "--clips", 1, "--out", tmp_path])
    assert result.exit_code == 2 and "--ser" in result.output


def test_without_motion_decoder_weights_only_latents_and_plot(run, face_png, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(run["shards"], shards)
    manifest = read_manifest(shards)
    manifest["encoders"]["motion"] = {"fingerprint": "abc", "source": str(tmp_path / "gone" / "float.pth"),
                                      "random": False}
    write_manifest(shards, manifest)
    out = tmp_path / "out"
    result = cli(["sample", run["ckpt"], "--data-root", shards, "--out", out, "--clips", 1, "--nfe", 2])
    assert result.exit_code == 0, result.output
    assert "no motion-decoder weights" in result.output and "float.pth" in result.output
    assert "--float-ckpt" in result.output
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".mp4")]
    assert [n for n in names if n.endswith(".motion.pt")] and [n for n in names if n.endswith(".plot.png")]
    assert "metrics.json" in names
    # New audio + portrait: the image cannot be encoded, so the model gets its no-reference input.
    audio = write_wav(tmp_path / "a.wav", speech_like(0.5))
    result = cli(["sample", run["ckpt"], "--data-root", shards, "--out", out, "--nfe", 2, "--audio", audio,
                  "--image", face_png])
    assert result.exit_code == 0, result.output
    assert "reference image is not encoded" in result.output
    record = torch.load(out / "a-astronaut.motion.pt", weights_only=True)
    assert torch.allclose(record["ref_motion"], torch.full((512,), 0.05))  # zero after standardisation
    assert not (out / "a-astronaut.mp4").exists()


def test_mismatched_inputs_and_files_are_clear_errors(run, face_png, tmp_path):
    audio = write_wav(tmp_path / "a.wav", speech_like(0.5))
    result = cli(["sample", run["ckpt"], "--audio", audio])
    assert result.exit_code == 2 and "--audio and --image go together" in result.output
    result = cli(["sample", tmp_path / "nope.pt"])
    assert result.exit_code == 2 and "nope.pt" in result.output and "no such file" in result.output
    # Shards whose recorded audio encoder differs from the mel features rebuilt here: refused.
    shards = tmp_path / "shards"
    shutil.copytree(run["shards"], shards)
    manifest = read_manifest(shards)
    manifest["encoders"]["audio"]["fingerprint"] = "0123456789abcdef"
    write_manifest(shards, manifest)
    result = cli(["sample", run["ckpt"], "--data-root", shards, "--audio", audio, "--image", face_png])
    assert result.exit_code == 2 and "fingerprint" in result.output and "0123456789abcdef" in result.output


# ---------------------------------------------------------------- hand-off from the trainer
def test_sample_a_checkpoint_written_by_the_training_loop(run, tmp_path):
    from trainer.settings import TrainSettings
    from trainer.train_fmt import train

    result = train(TrainSettings(
        data_root=str(run["shards"]), out=str(tmp_path / "run"), preset="tiny", steps=2, batch_size=2,
        overrides={k: v for k, v in TINY.items() if k != "audio_input_dim"}, log_step=0, val_step=0,
        sample_step=0, save_step=0, progress=False, tensorboard=False))
    assert result.final_checkpoint is not None
    # The checkpoint records its shard folder: no --data-root needed.
    out = cli(["sample", result.final_checkpoint, "--clips", 1, "--nfe", 2, "--no-render"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "run" / "samples" / result.final_checkpoint.stem / "metrics.json").is_file()
    # The run folder itself stands for its latest checkpoint, and its samples land in that run.
    (tmp_path / "run" / "samples" / result.final_checkpoint.stem / "metrics.json").unlink()
    out = cli(["sample", tmp_path / "run", "--clips", 1, "--nfe", 2, "--no-render"])
    assert out.exit_code == 0 and result.final_checkpoint.name in out.output, out.output
    assert (tmp_path / "run" / "samples" / result.final_checkpoint.stem / "metrics.json").is_file()


def test_emotion_auto_uses_the_speech_emotion_model(run, face_png, tmp_path, ref_dir):
    from float.emotion_encoder import EmotionEncoder

    samples = speech_like(0.6)
    audio = write_wav(tmp_path / "s.wav", samples)
    out = tmp_path / "out"
    result = cli(["sample", run["ckpt"], "--audio", audio, "--image", face_png, "--out", out, "--nfe", 2,
                  "--ser", ref_dir / "ser_tiny", "--no-render"])
    assert result.exit_code == 0, result.output
    assert "emotion: auto" in result.output  # the default once a speech-emotion model is known
    record = torch.load(out / "s-astronaut.motion.pt", weights_only=True)
    wave_ = torch.from_numpy(load_audio(audio))
    padded = torch.zeros(-(-len(wave_) // 640) * 640)
    padded[: len(wave_)] = wave_
    expected = EmotionEncoder.from_pretrained(ref_dir / "ser_tiny")(padded[None])[0]
    assert torch.allclose(record["emotion"], expected, atol=1e-5)
    assert not (out / "s-astronaut.mp4").exists()  # --no-render
