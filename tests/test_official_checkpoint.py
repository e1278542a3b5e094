"""Loading an official-format float.pth: key report per part, and safe refusal of bad files."""
import json
import os

import pytest
import torch

from float.checkpoint import CheckpointError, load_official_state_dict, load_parts
from float.config import get_preset


def official_state_dict(ref_dir):
    """A stand-in for float.pth: every official name with its shape (no real weights exist here)."""
    spec = json.loads((ref_dir / "float_default_parameters.json").read_text())
    sd = {}
    for i, (name, shape) in enumerate({**spec["parameters"], **spec["buffers"]}.items()):
        sd[name] = torch.full(shape, float(i % 7), dtype=torch.bool if name.endswith("alignment_mask") else torch.float32)
    return sd


@pytest.fixture(scope="module")
def paper_parts():
    from float.audio_encoder import AudioProjection
    from float.fmt import FlowMatchingTransformer
    from float.motion_autoencoder import MotionAutoEncoder

    cfg = get_preset("paper")
    return {
        "fmt.": FlowMatchingTransformer(cfg),
        "audio_encoder.audio_projection.": AudioProjection(cfg.audio_input_dim, cfg.dim_a),
        "motion_autoencoder.": MotionAutoEncoder(cfg.input_size, cfg.dim_w, cfg.dim_m),
    }


def test_official_names_load_into_every_part(ref_dir, paper_parts, tmp_path):
    sd = official_state_dict(ref_dir)
    path = tmp_path / "float.pth"
    torch.save(sd, path)
    report = load_parts(load_official_state_dict(path), paper_parts)
    assert report.ok, str(report)
    for prefix, r in report.parts.items():
        assert not r.unexpected and not r.missing and not r.mismatched, (prefix, str(report))
    assert report.skipped == sum(1 for k in sd if "wav2vec2" in k) > 0
    assert report.other == []
    # values really arrived
    name = "blocks.0.attn.qkv.weight"
    assert torch.equal(paper_parts["fmt."].state_dict()[name], sd["fmt." + name])


def test_report_lists_missing_unexpected_and_mismatched(ref_dir, paper_parts):
    sd = official_state_dict(ref_dir)
    del sd["fmt.decoder.linear.bias"]
    sd["fmt.extra.weight"] = torch.zeros(3)
    sd["audio_encoder.audio_projection.0.weight"] = torch.zeros(512, 768)  # last-layer features
    report = load_parts(sd, paper_parts)
    assert not report.ok
    fmt = report.parts["fmt."]
    assert fmt.missing == ["fmt.decoder.linear.bias"]
    assert fmt.unexpected == ["fmt.extra.weight"]
    proj = report.parts["audio_encoder.audio_projection."]
    assert len(proj.mismatched) == 1 and "(512, 768)" in proj.mismatched[0]
    text = str(report)
    assert "fmt.decoder.linear.bias" in text and "fmt.extra.weight" in text


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_that_runs_code_is_refused_not_executed(tmp_path):
    marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    torch.save({"fmt.x": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused") as e:
        load_official_state_dict(path)
    assert str(path) in str(e.value)
    assert not os.path.exists(marker)


def test_truncated_missing_and_wrong_content_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"fmt.x": torch.randn(1000)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_official_state_dict(cut)
    with pytest.raises(CheckpointError, match="no such file"):
        load_official_state_dict(tmp_path / "absent.pth")
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(2), tensor_only)
    with pytest.raises(CheckpointError, match=r"tensor\.pth is a single tensor .*official FLOAT state dict"):
        load_official_state_dict(tensor_only)
    mixed = tmp_path / "mixed.pth"
    torch.save({"fmt.x": torch.zeros(1), "step": 3}, mixed)
    with pytest.raises(CheckpointError, match=r"mixed\.pth is a dict with keys \['fmt\.x', 'step'\]"):
        load_official_state_dict(mixed)
