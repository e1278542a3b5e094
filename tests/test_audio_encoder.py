"""wav2vec2 audio features: parity with the official fixtures, folder loading and its failures."""
from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from float.audio_encoder import (
    AudioProjection,
    Wav2Vec2Features,
    frames_for_samples,
    pad_to_frames,
)
from float.hf_checkpoint import CheckpointError, load_hf_wav2vec2, load_hf_wav2vec2_with_head

FOLDERS = ("wav2vec2_tiny", "wav2vec2_tiny_legacy")
ATOL = 1e-5


@pytest.fixture(scope="module")
def fixture(ref_dir):
    return torch.load(ref_dir / "audio_encoder_small.pt", weights_only=True)


@pytest.fixture(scope="module")
def encoders(ref_dir):
    return {name: Wav2Vec2Features.from_pretrained(ref_dir / name) for name in FOLDERS}


def writable_copy(src, dst):
    # The fixture files are read-only; copy contents only so the tests may edit them.
    return shutil.copytree(src, dst, copy_function=shutil.copyfile)


def test_normalize_matches_feature_extractor(encoders, fixture):
    normalized = encoders["wav2vec2_tiny"].normalize(fixture["waveform"][None])
    torch.testing.assert_close(normalized, fixture["normalized"], atol=ATOL, rtol=0)
    assert abs(normalized.mean().item()) < 1e-6
    assert abs(normalized.std(unbiased=False).item() - 1) < 1e-5


@pytest.mark.parametrize("name", FOLDERS)
def test_features_match_official(encoders, fixture, name):
    enc = encoders[name]
    x, seq_len = fixture["normalized"], fixture["seq_len"]
    all_layers = enc(x, seq_len)
    last = enc(x, seq_len, all_layers=False)
    assert all_layers.shape == (1, seq_len, enc.feature_dim(True)) == (1, 60, 64)
    assert last.shape == (1, seq_len, enc.feature_dim(False)) == (1, 60, 32)
    torch.testing.assert_close(all_layers, fixture["all_layers"], atol=ATOL, rtol=0)
    torch.testing.assert_close(last, fixture["last_layer"], atol=ATOL, rtol=0)


def test_current_and_legacy_folders_load_identically(encoders, fixture):
    a, b = encoders.values()
    assert a.fingerprint == b.fingerprint
    assert torch.equal(a(fixture["normalized"], 60), b(fixture["normalized"], 60))
    for p_a, p_b in zip(a.parameters(), b.parameters()):
        assert not p_a.requires_grad and not p_b.requires_grad


def test_native_rate_equals_torchaudio_layers(encoders, fixture):
    """With seq_len = the conv stack's own frame count the interpolation is the identity, so the
    features must be torchaudio's per-layer outputs (post-norm model: no extra final norm)."""
    enc = encoders["wav2vec2_tiny"]
    x = fixture["normalized"]
    native = enc.wav2vec2.feature_extractor(x, None)[0].shape[1]
    layers, _ = enc.wav2vec2.extract_features(x)
    torch.testing.assert_close(enc(x, native), torch.cat(layers, -1), atol=1e-6, rtol=0)
    assert not torch.allclose(enc(x, native)[:, :60], enc(x, 60), atol=1e-3)


def test_stable_layer_norm_normalises_only_the_last_hidden_state(ref_dir, fixture):
    model, config, _ = load_hf_wav2vec2_with_head(ref_dir / "ser_tiny", head_prefixes=("classifier.",))
    enc = Wav2Vec2Features(model, config)
    x = fixture["normalized"]
    native = model.feature_extractor(x, None)[0].shape[1]
    layers, _ = model.extract_features(x)
    feats = enc(x, native)
    torch.testing.assert_close(feats[..., :32], layers[0], atol=1e-6, rtol=0)  # layer 1: raw
    torch.testing.assert_close(feats[..., 32:], model(x)[0], atol=1e-6, rtol=0)  # last: final norm
    assert not torch.allclose(feats[..., 32:], layers[1], atol=1e-3)


def test_projection_matches_official(fixture):
    state = fixture["projection_state_dict"]
    proj = AudioProjection(64, 64)
    assert {"audio_encoder.audio_projection." + k for k, _ in proj.named_parameters()} == set(state)
    proj.load_official(state)
    torch.testing.assert_close(proj(fixture["all_layers"]), fixture["projected"], atol=ATOL, rtol=0)
    with pytest.raises(KeyError, match="audio_projection"):
        AudioProjection(64, 64).load_official({"other.weight": torch.zeros(1)})


def test_frames_and_padding(fixture):
    wave = fixture["waveform"]
    assert frames_for_samples(wave.numel()) == fixture["seq_len"] == 60
    assert frames_for_samples(38401) == 61 and frames_for_samples(1) == 1 and frames_for_samples(0) == 0
    # The fixture waveform is exactly 60 frames long: no official padding needed.
    assert torch.equal(pad_to_frames(wave[None], 60), wave[None])
    short = torch.arange(10.0).repeat(2, 1)
    padded = pad_to_frames(short, seq_len=2, samples_per_frame=8)
    assert padded.shape == (2, 16)
    assert torch.equal(padded[:, :10], short) and bool((padded[:, 10:] == 9.0).all())
    one_d = pad_to_frames(torch.arange(3.0), seq_len=1, samples_per_frame=5)
    assert one_d.tolist() == [0.0, 1.0, 2.0, 2.0, 2.0]


def test_random_encoders_are_seeded_and_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = (Wav2Vec2Features.random(seed, size="tiny") for seed in (0, 0, 1))
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.fingerprint == b.fingerprint != c.fingerprint
    x = torch.randn(2, 8000)
    out = a(x, seq_len=13)
    assert out.shape == (2, 13, 64) and torch.equal(out, b(x, seq_len=13))
    a.train()
    assert not a.training and not a.wav2vec2.training
    base = Wav2Vec2Features.random(0)
    assert base.feature_dim(True) == 9216 and base.feature_dim(False) == 768
    assert base(torch.randn(1, 4000), seq_len=5).shape == (1, 5, 9216)
    with pytest.raises(ValueError, match="size"):
        Wav2Vec2Features.random(0, size="huge")


def test_bad_inputs_are_refused():
    enc = Wav2Vec2Features.random(0, size="tiny")
    with pytest.raises(ValueError, match="batch, samples"):
        enc(torch.randn(8000), seq_len=5)
    with pytest.raises(ValueError, match="at least 400"):
        enc(torch.randn(1, 399), seq_len=5)
    with pytest.raises(ValueError, match="seq_len"):
        enc(torch.randn(1, 8000), seq_len=0)


def test_missing_folder_and_missing_weights(ref_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_hf_wav2vec2(tmp_path / "no_such_model")
    (tmp_path / "empty").mkdir()
    shutil.copyfile(ref_dir / "wav2vec2_tiny" / "config.json", tmp_path / "empty" / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_hf_wav2vec2(tmp_path / "empty")
    (tmp_path / "no_config").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_wav2vec2(tmp_path / "no_config")


def test_unknown_missing_and_misshaped_keys_are_named(ref_dir, tmp_path):
    folder = writable_copy(ref_dir / "wav2vec2_tiny", tmp_path / "m")
    weights = folder / "model.safetensors"
    good = load_file(weights)
    save_file({**good, "encoder.mystery.weight": torch.zeros(2)}, weights)
    with pytest.raises(CheckpointError, match=r"unknown keys.*encoder\.mystery\.weight"):
        load_hf_wav2vec2(folder)
    save_file({k: v for k, v in good.items() if not k.startswith("encoder.layers.1.")}, weights)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*missing keys.*'encoder\.layers\.1\.") as err:
        load_hf_wav2vec2(folder)
    assert "transformer" not in str(err.value)  # reported in the file's naming, not torchaudio's
    save_file(good, weights)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(CheckpointError, match="shape mismatches.*intermediate_dense"):
        load_hf_wav2vec2(folder)


def test_ser_folder_is_not_a_plain_wav2vec2(ref_dir):
    with pytest.raises(CheckpointError, match=r"unknown keys.*classifier\.dense"):
        load_hf_wav2vec2(ref_dir / "ser_tiny")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never be printed",))


def test_pickle_with_code_is_refused(ref_dir, tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copyfile(ref_dir / "wav2vec2_tiny_legacy" / "config.json", folder / "config.json")
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"wav2vec2.x": _RunsCode()}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*weights_only"):
        load_hf_wav2vec2(folder)
    assert "never be printed" not in capsys.readouterr().out
    torch.save({"wav2vec2.x": torch.nn.Linear(1, 1)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*refused"):
        load_hf_wav2vec2(folder)
