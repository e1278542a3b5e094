"""Read Hugging Face wav2vec2 model folders into torchaudio models, without `transformers`.

A folder holds `config.json` and the weights as `model.safetensors` or `pytorch_model.bin`
(optionally sharded with an `*.index.json`). Two key styles exist in the wild:

- current `save_pretrained`: bare keys (`encoder.layers.0...`) for a `Wav2Vec2Model`, the
  positional convolution's weight norm under `parametrizations.weight.original0/1`;
- legacy (e.g. facebook/wav2vec2-base-960h): keys prefixed `wav2vec2.` (a CTC or classification
  checkpoint, with `lm_head.*` or `classifier.*` beside them) and the weight norm as
  `weight_g` / `weight_v`.

Both map onto torchaudio's `Wav2Vec2Model`, whose positional convolution also uses
`parametrizations.weight_norm(dim=2)`, so g and v load as they are (original0 = g, original1 = v).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torchaudio.models import Wav2Vec2Model, wav2vec2_model

from float.safe_load import CheckpointError, safe_torch_load

SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"
CONFIG = "config.json"

# Keys a checkpoint may carry that a feature extractor does not use: the CTC head, the
# training-time mask embedding and the pre-training quantiser / projections.
IGNORED_PREFIXES = ("lm_head.", "quantizer.", "project_q.", "project_hid.", "dropout_features.")
IGNORED_KEYS = ("masked_spec_embed",)

# HF name (after removing the `wav2vec2.` prefix) -> torchaudio name, first match wins.
_PREFIX_MAP = (
    ("feature_extractor.", "feature_extractor."),
    ("feature_projection.", "encoder.feature_projection."),
    ("encoder.", "encoder.transformer."),
)
_WEIGHT_NORM_SUFFIXES = {
    "conv.weight_g": "conv.parametrizations.weight.original0",
    "conv.weight_v": "conv.parametrizations.weight.original1",
}


def read_hf_config(folder: str | Path) -> dict:
    folder = _existing_folder(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a Hugging Face model folder needs its config.json")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if config.get("model_type", "wav2vec2") != "wav2vec2":
        raise CheckpointError(f"{path}: model_type {config['model_type']!r} is not wav2vec2")
    return config


def read_hf_state_dict(folder: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of the folder's weights and the file they came from (safetensors preferred)."""
    folder = _existing_folder(folder)
    for name in (SAFETENSORS, PYTORCH_BIN):
        index = folder / f"{name}.index.json"
        if (folder / name).is_file():
            return _load_file(folder / name), folder / name
        if index.is_file():
            return _load_sharded(index), index
    raise FileNotFoundError(
        f"{folder}: no weights found (expected {SAFETENSORS} or {PYTORCH_BIN}, or a sharded *.index.json)"
    )


def torchaudio_kwargs(config: dict) -> dict:
    """Arguments for `torchaudio.models.wav2vec2_model` from an HF config; dropouts forced to 0
    because the encoders here are frozen feature extractors."""
    norm = config.get("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
        raise CheckpointError(f"config feat_extract_norm {norm!r} is neither 'group' nor 'layer'")
    for key in ("feat_extract_activation", "hidden_act"):
        if config.get(key, "gelu") != "gelu":
            raise CheckpointError(f"config {key} {config[key]!r}: only 'gelu' is supported (torchaudio)")
    if config.get("add_adapter") or config.get("position_embeddings_type") not in (None, "conv"):
        raise CheckpointError("config asks for adapters or non-convolutional position embeddings: unsupported")
    return dict(
        extractor_mode=f"{norm}_norm",
        extractor_conv_layer_config=list(zip(config["conv_dim"], config["conv_kernel"], config["conv_stride"])),
        extractor_conv_bias=bool(config.get("conv_bias", False)),
        encoder_embed_dim=config["hidden_size"],
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=config["num_conv_pos_embeddings"],
        encoder_pos_conv_groups=config["num_conv_pos_embedding_groups"],
        encoder_num_layers=config["num_hidden_layers"],
        encoder_num_heads=config["num_attention_heads"],
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=config["intermediate_size"],
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=bool(config.get("do_stable_layer_norm", False)),
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )


def build_wav2vec2(config: dict) -> Wav2Vec2Model:
    """An untrained torchaudio model shaped by an HF config (eps of the encoder norms included)."""
    model = wav2vec2_model(**torchaudio_kwargs(config))
    eps = float(config.get("layer_norm_eps", 1e-5))
    # HF uses config.layer_norm_eps for the projection and transformer norms only; the conv
    # stack's norms keep torch's default, as torchaudio's do.
    for module in model.encoder.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = eps
    return model


def map_hf_key(key: str) -> str | None:
    """torchaudio name of one HF wav2vec2 key (prefix `wav2vec2.` already removed), None if unknown."""
    for hf_prefix, ta_prefix in _PREFIX_MAP:
        if key.startswith(hf_prefix):
            mapped = ta_prefix + key[len(hf_prefix):]
            for old, new in _WEIGHT_NORM_SUFFIXES.items():
                if mapped.endswith(old):
                    mapped = mapped[: -len(old)] + new
            return mapped
    return None


def hf_name(torchaudio_key: str) -> str:
    """The current-style HF name of a torchaudio key, for messages."""
    for hf_prefix, ta_prefix in reversed(_PREFIX_MAP):
        if torchaudio_key.startswith(ta_prefix):
            return hf_prefix + torchaudio_key[len(ta_prefix):]
    return torchaudio_key


def split_hf_state_dict(
    state: dict[str, torch.Tensor], head_prefixes: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str], dict[str, str]]:
    """(torchaudio backbone state, head state under `head_prefixes`, unknown keys, and for each
    backbone key the file's key it came from)."""
    backbone, head, unknown = {}, {}, []
    origin: dict[str, str] = {}
    for key, value in state.items():
        if head_prefixes and key.startswith(head_prefixes):
            head[key] = value
            continue
        bare = key[len("wav2vec2."):] if key.startswith("wav2vec2.") else key
        if bare in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES):
            continue
        mapped = map_hf_key(bare)
        if mapped is None:
            unknown.append(key)
        else:
            backbone[mapped] = value
            origin[mapped] = key
    return backbone, head, unknown, origin


def load_hf_wav2vec2(folder: str | Path) -> tuple[Wav2Vec2Model, dict]:
    """torchaudio wav2vec2 (eval, frozen) with the folder's weights, and its HF config."""
    model, config, _ = load_hf_wav2vec2_with_head(folder, head_prefixes=())
    return model, config


def load_hf_wav2vec2_with_head(
    folder: str | Path, head_prefixes: tuple[str, ...]
) -> tuple[Wav2Vec2Model, dict, dict[str, torch.Tensor]]:
    """As `load_hf_wav2vec2`, also returning the tensors under `head_prefixes` (e.g. a classifier)."""
    config = read_hf_config(folder)
    state, source = read_hf_state_dict(folder)
    backbone, head, unknown, origin = split_hf_state_dict(state, head_prefixes)
    if unknown:
        raise CheckpointError(f"{source}: unknown keys, not part of a wav2vec2 model: {sorted(unknown)}")
    model = build_wav2vec2(config)
    _load_exact(model, backbone, origin, source)
    model.eval().requires_grad_(False)
    return model, config, head


def state_fingerprint(module: torch.nn.Module, length: int = 16) -> str:
    """Short sha256 of every tensor's name, dtype, shape and bytes, for manifests."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:length]


def _load_exact(
    model: torch.nn.Module, state: dict[str, torch.Tensor], origin: dict[str, str], source: Path
) -> None:
    """Load every tensor or fail naming the file's keys that are missing, unknown or misshaped."""
    expected = model.state_dict()
    missing = sorted(hf_name(k) for k in set(expected) - set(state))
    extra = sorted(origin[k] for k in set(state) - set(expected))
    wrong = sorted(
        f"{origin[k]}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if extra:
        problems.append(f"unknown keys, not built by this config {extra}")
    if wrong:
        problems.append(f"shape mismatches {wrong}")
    if problems:
        raise CheckpointError(f"{source}: does not fit its config.json: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _existing_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: model folder not found")
    return folder


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    state = safe_torch_load(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat dict of tensors")
    return state


def _load_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError) as err:
        raise CheckpointError(f"{index}: not a valid shard index ({err})") from err
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        path = index.parent / shard
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard listed in {index.name} is missing")
        state.update(_load_file(path))
    return state
