"""Speech-emotion encoder: parity with the official fixture, label order, RAVDESS mapping."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from float.checkpoint import CheckpointError
from float.config import EMOTIONS
from float.emotion_encoder import EmotionEncoder
from shards.format import RAVDESS_TO_FLOAT, ravdess_emotion_index

FOLDERS = ("ser_tiny", "ser_tiny_legacy")
ATOL = 1e-5


@pytest.fixture(scope="module")
def fixture(ref_dir):
    return torch.load(ref_dir / "emotion_encoder_small.pt", weights_only=True)


@pytest.fixture(scope="module")
def encoders(ref_dir):
    return {name: EmotionEncoder.from_pretrained(ref_dir / name) for name in FOLDERS}


def ser_copy_with_labels(ref_dir, tmp_path, id2label: dict) -> EmotionEncoder:
    folder = shutil.copytree(ref_dir / "ser_tiny", tmp_path / "ser", copy_function=shutil.copyfile)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "id2label": id2label}))
    return EmotionEncoder.from_pretrained(folder)


@pytest.mark.parametrize("name", FOLDERS)
def test_probs_match_official(encoders, fixture, name):
    probs = encoders[name](fixture["normalized"])
    assert probs.shape == (1, 7)
    torch.testing.assert_close(probs, fixture["probs"], atol=ATOL, rtol=0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))
    assert tuple(fixture["labels"][i] for i in range(7)) == EMOTIONS


def test_current_and_legacy_are_identical_and_frozen(encoders, fixture):
    a, b = encoders.values()
    assert a.fingerprint == b.fingerprint
    assert torch.equal(a(fixture["normalized"]), b(fixture["normalized"]))
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training


def test_normalises_inside(ref_dir, encoders, fixture):
    """The raw waveform and the normalised one give the same probabilities; scale does not matter."""
    raw = torch.load(ref_dir / "audio_encoder_small.pt", weights_only=True)["waveform"][None]
    enc = encoders["ser_tiny"]
    torch.testing.assert_close(enc(raw), fixture["probs"], atol=ATOL, rtol=0)
    torch.testing.assert_close(enc(raw * 7.0 + 0.3), fixture["probs"], atol=ATOL, rtol=0)
    batch = torch.cat([raw, raw.flip(-1)])
    out = enc(batch)
    torch.testing.assert_close(out[:1], fixture["probs"], atol=ATOL, rtol=0)
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_label_order_follows_id2label(ref_dir, tmp_path, encoders, fixture):
    # Swap angry and surprise in the config: the same logits must come out in EMOTIONS order.
    names = list(EMOTIONS)
    names[0], names[6] = names[6], names[0]
    swapped = ser_copy_with_labels(ref_dir, tmp_path, {str(i): n.upper() for i, n in enumerate(names)})
    expected = fixture["probs"][:, [6, 1, 2, 3, 4, 5, 0]]
    torch.testing.assert_close(swapped(fixture["normalized"]), expected, atol=ATOL, rtol=0)


def test_label_synonyms_and_unknown_labels(ref_dir, tmp_path, fixture):
    synonyms = ["anger", "disgust", "fearful", "happy", "neutral", "sad", "surprised"]
    enc = ser_copy_with_labels(ref_dir, tmp_path / "a", {str(i): n for i, n in enumerate(synonyms)})
    torch.testing.assert_close(enc(fixture["normalized"]), fixture["probs"], atol=ATOL, rtol=0)
    calm = ["angry", "calm", "fear", "happy", "neutral", "sad", "surprise"]
    with pytest.raises(CheckpointError, match="id2label"):
        ser_copy_with_labels(ref_dir, tmp_path / "b", {str(i): n for i, n in enumerate(calm)})


def test_folder_without_classifier_is_not_an_ser_model(ref_dir):
    with pytest.raises(CheckpointError, match="not an SER model"):
        EmotionEncoder.from_pretrained(ref_dir / "wav2vec2_tiny")
    with pytest.raises(FileNotFoundError, match="missing_ser"):
        EmotionEncoder.from_pretrained(ref_dir / "missing_ser")


def test_ravdess_codes():
    assert set(RAVDESS_TO_FLOAT.values()) == set(EMOTIONS)  # every class reachable
    assert ravdess_emotion_index(1) == ravdess_emotion_index(2) == EMOTIONS.index("neutral")
    assert EMOTIONS[ravdess_emotion_index(5)] == "angry"
    assert EMOTIONS[ravdess_emotion_index(6)] == "fear"
    assert EMOTIONS[ravdess_emotion_index(7)] == "disgust"
    assert EMOTIONS[ravdess_emotion_index(8)] == "surprise"
    for bad in (0, 9):
        with pytest.raises(ValueError, match="RAVDESS"):
            ravdess_emotion_index(bad)


def test_random_is_seeded():
    a, b, c = (EmotionEncoder.random(seed) for seed in (0, 0, 1))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    x = torch.randn(3, 6400)
    probs = a(x)
    assert probs.shape == (3, 7) and torch.equal(probs, b(x))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    with pytest.raises(ValueError, match="batch, samples"):
        a(torch.randn(6400))
    with pytest.raises(ValueError, match="at least 400"):
        a(torch.randn(1, 100))
