"""Frozen speech-emotion classifier (the official `Audio2Emotion`).

The official model is a Hugging Face `Wav2Vec2ForSpeechClassification` folder: wav2vec2 with
stable layer norm, pooling of the last hidden state over time (mean), then
`classifier.dense` -> tanh -> `classifier.out_proj`, softmax over seven emotions.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor, nn

from float.audio_encoder import normalize_waveform, receptive_field, seeded_random_wav2vec2
from float.config import EMOTIONS
from float.checkpoint import CheckpointError
from float.hf_checkpoint import load_hf_wav2vec2_with_head, state_fingerprint


# Spellings other SER models use for the same classes.
_LABEL_SYNONYMS = {"anger": "angry", "fearful": "fear", "surprised": "surprise", "disgusted": "disgust",
                   "happiness": "happy", "sadness": "sad"}

_HEAD = "classifier."
_POOLING = ("mean", "sum", "max")

_SER_BASE = dict(
    model_type="wav2vec2", feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True,
    conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2], layer_norm_eps=1e-5,
    pooling_mode="mean", id2label={str(i): name for i, name in enumerate(EMOTIONS)},
)
# "large": the shape of the English SER model FLOAT uses (wav2vec2-large); "tiny": for tests.
SER_CONFIGS: dict[str, dict] = {
    "large": dict(_SER_BASE, conv_dim=[512] * 7, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16),
    "tiny": dict(_SER_BASE, conv_dim=[32] * 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2),
}


def label_order(config: dict, num_labels: int) -> list[int]:
    """For each EMOTIONS class, the classifier output index holding it (from config id2label)."""
    id2label = config.get("id2label")
    if not id2label:
        if num_labels != len(EMOTIONS):
            raise CheckpointError(f"config.json has no id2label and the classifier has {num_labels} outputs, not 7")
        return list(range(len(EMOTIONS)))
    names = {int(i): _LABEL_SYNONYMS.get(str(n).lower(), str(n).lower()) for i, n in id2label.items()}
    if sorted(names) != list(range(num_labels)):
        raise CheckpointError(f"config.json id2label {id2label} does not match the {num_labels} classifier outputs")
    by_name = {name: i for i, name in names.items()}
    absent = [e for e in EMOTIONS if e not in by_name]
    if absent or len(by_name) != len(EMOTIONS):
        raise CheckpointError(f"config.json id2label {id2label}: needs exactly the classes {EMOTIONS}")
    return [by_name[e] for e in EMOTIONS]


class ClassificationHead(nn.Module):
    """dense -> tanh -> out_proj (HF names; the dropouts of the original are identities at eval)."""

    def __init__(self, hidden_size: int, num_labels: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.out_proj(torch.tanh(self.dense(pooled)))


class EmotionEncoder(nn.Module):
    """Frozen SER classifier: (B, N) 16 kHz waveform -> (B, 7) probabilities in EMOTIONS order."""

    def __init__(self, wav2vec2: nn.Module, classifier: ClassificationHead, config: dict):
        super().__init__()
        pooling = config.get("pooling_mode", "mean")
        if pooling not in _POOLING:
            raise CheckpointError(f"config.json pooling_mode {pooling!r}: expected one of {_POOLING}")
        self.wav2vec2 = wav2vec2
        self.classifier = classifier
        self.config = dict(config)
        self.pooling = pooling
        self.min_samples = receptive_field(config)
        self.register_buffer("order", torch.tensor(label_order(config, classifier.out_proj.out_features)),
                             persistent=False)
        self.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "EmotionEncoder":
        model, config, head_state = load_hf_wav2vec2_with_head(folder, head_prefixes=(_HEAD,))
        head_state = {k[len(_HEAD):]: v for k, v in head_state.items()}
        if "out_proj.weight" not in head_state or "dense.weight" not in head_state:
            raise CheckpointError(f"{folder}: no classifier.dense / classifier.out_proj weights; not an SER model")
        num_labels, hidden = head_state["out_proj.weight"].shape
        head = ClassificationHead(hidden, num_labels)
        try:
            head.load_state_dict(head_state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{folder}: classifier weights do not fit dense/out_proj ({err})") from err
        return cls(model, head, config)

    @classmethod
    def random(cls, seed: int = 0, size: str = "tiny") -> "EmotionEncoder":
        """Seeded random weights ("tiny", or "large" like the real SER model) for runs without it."""
        if size not in SER_CONFIGS:
            raise ValueError(f"unknown SER size {size!r}; choose one of {sorted(SER_CONFIGS)}")
        config = SER_CONFIGS[size]
        model = seeded_random_wav2vec2(config, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            head = ClassificationHead(config["hidden_size"], len(EMOTIONS))
        return cls(model, head, config)

    def train(self, mode: bool = True) -> "EmotionEncoder":
        return super().train(False)  # frozen: always eval

    @cached_property
    def fingerprint(self) -> str:
        return state_fingerprint(self)

    @torch.no_grad()
    def forward(self, waveform: Tensor) -> Tensor:
        """(B, N) 16 kHz waveform, normalised here per row (a no-op up to 1e-7 on an already
        normalised one, which is what the official code feeds) -> (B, 7) softmax probabilities."""
        if waveform.ndim != 2:
            raise ValueError(f"waveform must be (batch, samples); got shape {tuple(waveform.shape)}")
        if waveform.shape[1] < self.min_samples:
            raise ValueError(f"waveform has {waveform.shape[1]} samples; wav2vec2 needs at least {self.min_samples}")
        param = next(self.wav2vec2.parameters())
        x = normalize_waveform(waveform.to(device=param.device, dtype=param.dtype))
        hidden, _ = self.wav2vec2(x)  # last hidden state, with the final layer norm
        if self.pooling == "mean":
            pooled = hidden.mean(dim=1)
        elif self.pooling == "sum":
            pooled = hidden.sum(dim=1)
        else:
            pooled = hidden.max(dim=1).values
        probs = torch.softmax(self.classifier(pooled), dim=-1)
        return probs.index_select(-1, self.order)
