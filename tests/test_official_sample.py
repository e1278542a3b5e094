"""`floatctl sample float.pth --audio --image --wav2vec2 --ser`: the official checkpoint rendered as the official
inference does, on a small float.pth made with the parity fixtures' recipe and Hugging Face folders, and on a
full-name paper-size float.pth built from the official parameter list; and every refusal."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import typer
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import crc_fill
from float.audio_encoder import WAV2VEC2_CONFIGS, normalize_waveform, seeded_random_wav2vec2
from float.checkpoint import official_state_dict
from float.config import EMOTIONS, FloatConfig, get_preset
from float.emotion_encoder import EmotionEncoder
from float.hf_checkpoint import hf_name
from float.model import FloatMotionModel
from float.motion_autoencoder import MotionAutoEncoder
from float.official_model import is_official_state, official_config
from trainer.sample.official import official_reference
from trainer.export import export
from trainer.sample.command import sample
from test_sample import face_png, speech_like, write_wav  # noqa: F401  (face_png is a fixture)

# The fixtures' motion auto-encoder (64 px, style 512) forces dim_w 512; the FMT is small, with the 8 heads
# the official options default to (head counts leave no trace in float.pth).
SMALL = FloatConfig(name="official", input_size=64, dim_w=512, dim_a=64, audio_input_dim=64, dim_h=64, depth=1)


def cli(args):
    app = typer.Typer()
    app.command()(sample)
    app.command()(export)  # two commands: the first argument names one
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def write_wav2vec2_folder(folder: Path, config: dict, seed: int = 0) -> Path:
    """A Hugging Face wav2vec2 folder (current key style) with seeded random weights."""
    folder.mkdir(parents=True)
    model = seeded_random_wav2vec2(config, seed)
    save_file({hf_name(k): v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def small_float_pth(path: Path) -> Path:
    """fmt.*, the audio projection and motion_autoencoder.* filled as the parity fixtures are (crc32 seeds),
    plus SER weights the loader must leave to --ser."""
    model, ae = FloatMotionModel(SMALL), MotionAutoEncoder(64)
    crc_fill(model, "", 0.05, skip=("fmt.pos_embed",))
    crc_fill(ae, "motion_autoencoder.", 0.5)
    state = official_state_dict(model)
    state.update({"motion_autoencoder." + k: v for k, v in ae.state_dict().items()})
    state["emotion_encoder.wav2vec2_for_emotion.classifier.dense.weight"] = torch.zeros(4, 4)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory, ref_dir):
    root = tmp_path_factory.mktemp("official")
    return {"ckpt": small_float_pth(root / "float.pth"), "w2v": ref_dir / "wav2vec2_tiny", "ser": ref_dir / "ser_tiny",
            "audio": write_wav(root / "speech.wav", speech_like(1.3)), "root": root}


def video_info(path: Path) -> dict:
    with av.open(str(path)) as c:
        return {"frames": sum(1 for _ in c.decode(video=0)), "fps": float(c.streams.video[0].average_rate),
                "width": c.streams.video[0].codec_context.width, "audio": bool(c.streams.audio)}


def test_small_float_pth_renders_with_auto_emotion_and_the_official_grid(small, face_png, tmp_path):
    out = tmp_path / "out"
    result = cli(["sample", small["ckpt"], "--audio", small["audio"], "--image", face_png, "--wav2vec2", small["w2v"],
                  "--ser", small["ser"], "--official-grid", "--nfe", 3, "--out", out])
    assert result.exit_code == 0, result.output
    frames = -(-int(1.3 * 16000) // 640)
    assert video_info(out / "speech-astronaut.mp4") == {"frames": frames, "fps": 25.0, "width": 64, "audio": True}
    metrics = json.loads((out / "metrics.json").read_text())
    s = metrics["settings"]
    assert s["official"] and s["official_grid"] and s["field_evaluations_per_window"] == 2 and s["seed"] == 15
    assert s["config"]["dim_h"] == 64 and s["config"]["audio_input_dim"] == 64
    assert s["audio_reader"] == "librosa" and s["s3fd"] is None
    assert "mapped onto S3FD's box" in result.output  # without --s3fd the stand-in detector is named
    item = metrics["items"][0]
    assert isinstance(item["lipsync_generated"], float) and -1 <= item["lipsync_generated"] <= 1
    assert metrics["lipsync_mean"]["lipsync_generated"] == item["lipsync_generated"]
    # auto emotion: the speech-emotion model on the whole normalised clip, as the official code feeds it
    wave = torch.from_numpy(speech_like(1.3))
    wave = torch.round(wave.clamp(-1, 1) * 32767) / 32768  # what the 16-bit wav holds
    probs = EmotionEncoder.from_pretrained(small["ser"])(normalize_waveform(wave[None]))[0]
    record = torch.load(out / "speech-astronaut.motion.pt", weights_only=True)
    torch.testing.assert_close(record["emotion"], probs, atol=1e-4, rtol=0)
    assert record["motion"].shape == (frames, 512) and torch.isfinite(record["motion"]).all()
    assert "emotion auto" in result.output and "1 other keys" not in result.output
    assert "speech-emotion tensors left to the --wav2vec2 / --ser folders" in result.output


def test_label_needs_no_ser_and_the_grid_and_seed_change_the_motion(small, face_png, tmp_path):
    base = ["sample", small["ckpt"], "--audio", small["audio"], "--image", face_png, "--wav2vec2", small["w2v"],
            "--emotion", "Happy", "--nfe", 3, "--no-render"]
    runs = {}
    for name, extra in {"a": [], "b": [], "grid": ["--official-grid", "--seed", 0], "seed": ["--seed", 1]}.items():
        result = cli(base + ["--out", tmp_path / name] + extra)
        assert result.exit_code == 0, result.output
        runs[name] = torch.load(tmp_path / name / "speech-astronaut.motion.pt", weights_only=True)
    assert torch.equal(runs["a"]["emotion"], torch.eye(7)[EMOTIONS.index("happy")])
    assert torch.equal(runs["a"]["motion"], runs["b"]["motion"])  # seeded
    assert not torch.equal(runs["a"]["motion"], runs["grid"]["motion"])  # 2 steps on the official grid, not 3
    assert not torch.equal(runs["a"]["motion"], runs["seed"]["motion"])
    assert not (tmp_path / "a" / "speech-astronaut.mp4").exists()


def test_missing_folders_are_named(small, face_png):
    base = ["sample", small["ckpt"], "--audio", small["audio"], "--image", face_png]
    result = cli(base)
    assert result.exit_code == 2 and "--wav2vec2 DIR" in result.output and "width 64" in result.output
    assert "Nothing is downloaded" in result.output
    result = cli(base + ["--wav2vec2", small["w2v"]])
    assert result.exit_code == 2 and "--ser DIR" in result.output and "--emotion LABEL" in result.output
    result = cli(base + ["--wav2vec2", small["root"] / "nowhere", "--emotion", "sad"])
    assert result.exit_code == 2 and "nowhere" in result.output and "not found" in result.output
    result = cli(["sample", small["ckpt"]])  # held-out clips need a training checkpoint
    assert result.exit_code == 2 and "give --audio and --image" in result.output


def test_a_wav2vec2_of_another_width_is_refused(small, face_png, tmp_path):
    other = write_wav2vec2_folder(tmp_path / "w2v16", dict(WAV2VEC2_CONFIGS["tiny"], hidden_size=16,
                                                           num_attention_heads=2))
    result = cli(["sample", small["ckpt"], "--audio", small["audio"], "--image", face_png, "--wav2vec2", other,
                  "--emotion", "sad"])
    assert result.exit_code == 2 and "2 layers x 16 = 32 features" in result.output and "projects 64" in result.output


def test_official_audio_is_read_with_librosa_and_a_bad_file_is_one_line(tmp_path):
    import librosa

    from trainer.sample.media_input import InputError, load_audio

    path = write_wav(tmp_path / "speech22k.wav", speech_like(0.5, 22050), sr=22050)
    expected, _ = librosa.load(str(path), sr=16000)
    ours = load_audio(path, reader="librosa")
    assert ours.dtype == np.float32 and np.array_equal(ours, expected.astype(np.float32))
    assert not np.array_equal(ours[: len(expected)], load_audio(path)[: len(expected)])  # PyAV resamples otherwise
    (tmp_path / "noise.wav").write_text("not audio")
    for bad, reason in ((tmp_path / "noise.wav", "librosa cannot read it"), (tmp_path / "none.wav", "no such file")):
        with pytest.raises(InputError, match=reason) as info:
            load_audio(bad, reader="librosa")
        assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_a_wrong_s3fd_file_is_refused_before_the_model_loads(small, face_png, tmp_path):
    wrong = tmp_path / "s3fd.pth"
    torch.save({"conv1_1.weight": torch.zeros(1)}, wrong)
    result = cli(["sample", small["ckpt"], "--audio", small["audio"], "--image", face_png, "--wav2vec2", small["w2v"],
                  "--emotion", "sad", "--s3fd", wrong, "--no-render"])
    assert result.exit_code == 2 and f"--s3fd {wrong}: not face_alignment's S3FD weights" in result.output
    assert "Traceback" not in result.output and "official checkpoint" not in result.output


def test_bad_emotion_label_lists_the_valid_ones(small, face_png):
    result = cli(["sample", small["ckpt"], "--audio", small["audio"], "--image", face_png, "--wav2vec2", small["w2v"],
                  "--emotion", "bored"])
    assert result.exit_code == 2 and "bored" in result.output and "surprise" in result.output


def test_float_pth_missing_a_part_or_with_a_misshaped_tensor_is_refused(small, face_png, tmp_path):
    state = torch.load(small["ckpt"], weights_only=True)
    args = ["--audio", small["audio"], "--image", face_png, "--wav2vec2", small["w2v"], "--emotion", "sad"]
    no_ae = {k: v for k, v in state.items() if not k.startswith("motion_autoencoder.")}
    torch.save(no_ae, tmp_path / "no_ae.pth")
    result = cli(["sample", tmp_path / "no_ae.pth"] + args)
    assert result.exit_code == 2 and "without motion_autoencoder" in result.output
    bad = dict(state)
    bad["fmt.decoder.linear.bias"] = torch.zeros(3)
    del bad["fmt.blocks.0.attn.qkv.bias"]
    torch.save(bad, tmp_path / "bad.pth")
    result = cli(["sample", tmp_path / "bad.pth"] + args)
    assert result.exit_code == 2 and "missing fmt.blocks.0.attn.qkv.bias" in result.output
    assert "fmt.decoder.linear.bias: file (3,) vs model (512,)" in result.output


def test_official_files_are_told_from_training_checkpoints(ref_dir):
    assert is_official_state({"fmt.x": torch.zeros(1)})
    assert not is_official_state({"version": 1, "step": 3, "model": {"fmt.x": torch.zeros(1)}, "config": {}})
    assert not is_official_state({"other.x": torch.zeros(1)}) and not is_official_state([])
    # the sizes read from the official parameter list are the paper's
    spec = json.loads((ref_dir / "float_default_parameters.json").read_text())
    shapes = {k: torch.empty(v, device="meta") for k, v in spec["parameters"].items()}
    assert official_config(shapes).differences(get_preset("paper")) == {}


def test_official_reference_crop(face_png):
    crop = official_reference(face_png, 64)
    plain = official_reference(face_png, 64, crop=False)
    assert crop.shape == plain.shape == (64, 64, 3) and not np.array_equal(crop, plain)


# ---------------------------------------------------------------- the paper-size model under every official name
def full_float_pth(spec: dict, path: Path, scale: float = 0.02) -> Path:
    """Every official parameter except the wav2vec2 ones (1.6 GB the loader skips; one stands in), seeded
    per name like the fixtures. The real float.pth is the same set of names."""
    state = {}
    for name, shape in spec["parameters"].items():
        if "wav2vec2" in name:
            continue
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        state[name] = torch.randn(shape, generator=g) * scale
    state["audio_encoder.wav2vec2.masked_spec_embed"] = torch.zeros(768)
    torch.save(state, path)
    return path


def test_full_name_paper_size_float_pth_writes_an_mp4_with_audio(ref_dir, face_png, tmp_path):
    spec = json.loads((ref_dir / "float_default_parameters.json").read_text())
    ckpt = full_float_pth(spec, tmp_path / "float.pth")
    # wav2vec2 with the base model's 12 layers x 768 (9216 features), thin elsewhere to stay fast
    w2v = write_wav2vec2_folder(tmp_path / "w2v", dict(WAV2VEC2_CONFIGS["tiny"], hidden_size=768, num_hidden_layers=12,
                                                        num_attention_heads=12, intermediate_size=64))
    audio = write_wav(tmp_path / "speech.wav", speech_like(0.2))  # 5 frames: the 512 px decoder is slow on a CPU
    out = tmp_path / "out"
    result = cli(["sample", ckpt, "--audio", audio, "--image", face_png, "--wav2vec2", w2v, "--ser", ref_dir / "ser_tiny",
                  "--official-grid", "--nfe", 2, "--out", out])
    assert result.exit_code == 0, result.output
    assert video_info(out / "speech-astronaut.mp4") == {"frames": 5, "fps": 25.0, "width": 512, "audio": True}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["config"]["audio_input_dim"] == 9216
    assert metrics["settings"]["field_evaluations_per_window"] == 1
    assert metrics["items"][0]["lipsync_generated"] is None  # fewer than 8 frames: no score, said so
    assert "fewer than 8 frames" in result.output
    assert "1 wav2vec2 / speech-emotion tensors left" in result.output
