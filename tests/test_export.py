"""`floatctl export`: an official-format state dict (fmt.*, audio_encoder.audio_projection.*)."""
from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from float.checkpoint import load_official_state_dict, load_parts
from float.config import get_preset
from float.model import FloatMotionModel
from float.motion_autoencoder import MotionAutoEncoder
from trainer.checkpoints import CHECKPOINT_VERSION, save_final
from float.checkpoint import official_state_dict
from trainer.export import export

TINY = dict(dim_w=32, dim_a=16, dim_h=32, depth=1, num_heads=2, audio_input_dim=12)


def cli(args):
    app = typer.Typer()
    app.command()(export)
    app.command(name="other")(lambda: None)  # two commands: invoked as `export ...` like floatctl
    return CliRunner().invoke(app, ["export", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A training checkpoint whose EMA and raw weights differ."""
    cfg = get_preset("tiny", **TINY)
    torch.manual_seed(0)
    raw, ema = FloatMotionModel(cfg), FloatMotionModel(cfg)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    # The EMA model standardises its latents (as for seeded random encoders); the raw one does not.
    ema.set_motion_stats(torch.full((TINY["dim_w"],), 0.5), torch.full((TINY["dim_w"],), 0.1))
    state = {"version": CHECKPOINT_VERSION, "step": 42, "model": raw.state_dict(), "ema": ema.state_dict(),
             "config": cfg.to_dict(), "settings": {}}
    path = save_final(tmp_path_factory.mktemp("run") / "checkpoints", state)
    return {"path": path, "cfg": cfg, "raw": raw.state_dict(), "ema": ema.state_dict()}


def load_into_fresh(path, cfg):
    fresh = FloatMotionModel(cfg)
    report = load_parts(load_official_state_dict(path),
                        {"fmt.": fresh.fmt, "audio_encoder.audio_projection.": fresh.audio_encoder.audio_projection})
    return fresh, report


@pytest.mark.parametrize("flag,which", [([], "ema"), (["--raw"], "raw")])
def test_export_loads_into_a_fresh_model_with_nothing_missing(checkpoint, tmp_path, flag, which):
    out = tmp_path / "float_trained.pth"
    result = cli([checkpoint["path"], out, *flag])
    assert result.exit_code == 0, result.output
    assert which.upper() in result.output and "step 42" in result.output
    # Standardised latents have no official counterpart: said plainly, and the stats are not exported.
    assert ("standardised motion latents" in result.output) == (which == "ema")
    state = torch.load(out, weights_only=True)
    assert all(k.startswith(("fmt.", "audio_encoder.audio_projection.")) for k in state)
    fresh, report = load_into_fresh(out, checkpoint["cfg"])
    assert report.ok and report.other == []
    assert all(not r.missing and not r.unexpected and not r.mismatched for r in report.parts.values())
    for k, v in fresh.state_dict().items():
        if k.startswith(("fmt.", "audio_encoder.")):
            assert torch.equal(v, checkpoint[which][k]), k


def test_paper_preset_names_and_shapes_are_the_official_ones(ref_dir):
    official = json.loads((ref_dir / "float_default_parameters.json").read_text())
    shapes = {**official["parameters"], **official["buffers"]}
    with torch.device("meta"):  # names and shapes only: no 157 M parameters in memory
        model = FloatMotionModel(get_preset("paper"))
    exported = official_state_dict(model)
    assert set(exported) <= set(shapes)
    assert {k: list(v.shape) for k, v in exported.items()} == {k: shapes[k] for k in exported}
    # Every official fmt / audio projection parameter is exported.
    wanted = {k for k in official["parameters"] if k.startswith(("fmt.", "audio_encoder.audio_projection."))}
    assert wanted <= set(exported)


def test_float_ckpt_adds_the_motion_autoencoder_for_the_official_loader(checkpoint, tmp_path):
    motion = MotionAutoEncoder(8).state_dict()
    official = {f"motion_autoencoder.{k}": v for k, v in motion.items()}
    official["fmt.unused_marker"] = torch.zeros(1)  # only motion_autoencoder.* is taken from it
    float_pth = tmp_path / "float.pth"
    torch.save(official, float_pth)
    out = tmp_path / "complete.pth"
    result = cli([checkpoint["path"], out, "--float-ckpt", float_pth])
    assert result.exit_code == 0, result.output
    state = torch.load(out, weights_only=True)
    assert {k for k in state if k.startswith("motion_autoencoder.")} == {f"motion_autoencoder.{k}" for k in motion}
    assert "fmt.unused_marker" not in state
    for k, v in checkpoint["ema"].items():  # and the model's own weights are all there
        if k.startswith(("fmt.", "audio_encoder.")):
            assert torch.equal(state[k], v), k


def test_export_bad_inputs(checkpoint, tmp_path):
    result = cli([tmp_path / "missing.pt", tmp_path / "x.pth"])
    assert result.exit_code == 2 and "missing.pt" in result.output and "no such file" in result.output
    # An official-format file is not a training checkpoint.
    plain = tmp_path / "plain.pth"
    torch.save({"fmt.x": torch.zeros(1)}, plain)
    result = cli([plain, tmp_path / "x.pth"])
    assert result.exit_code == 2 and "is an official FLOAT state dict" in result.output
    assert "takes an FMT checkpoint" in result.output
    no_motion = tmp_path / "nomotion.pth"
    torch.save({"fmt.x": torch.zeros(1)}, no_motion)
    result = cli([checkpoint["path"], tmp_path / "y.pth", "--float-ckpt", no_motion])
    assert result.exit_code == 2 and "no motion_autoencoder" in result.output
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "y.pth").exists()


def test_motion_ckpt_makes_a_complete_file_trained_here(checkpoint, tmp_path):
    from crop_factory import write_stage1_checkpoint
    from float.motion_checkpoint import load_motion_checkpoint

    stage1 = write_stage1_checkpoint(tmp_path / "stage1.pt", size=16)
    out = tmp_path / "complete.pth"
    result = cli([checkpoint["path"], out, "--motion-ckpt", stage1])
    assert result.exit_code == 0, result.output
    state = torch.load(out, weights_only=True)
    expected, _, _ = load_motion_checkpoint(stage1)  # the EMA weights, under the official names
    for k, v in expected.state_dict().items():
        assert torch.equal(state[f"motion_autoencoder.{k}"], v), k
    assert any(k.startswith("fmt.") for k in state)
    # One motion auto-encoder per file; an FMT checkpoint is not a stage-1 one.
    both = cli([checkpoint["path"], tmp_path / "x.pth", "--motion-ckpt", stage1, "--float-ckpt", stage1])
    assert both.exit_code == 2 and "not both" in both.output
    wrong = cli([checkpoint["path"], tmp_path / "y.pth", "--motion-ckpt", checkpoint["path"]])
    assert wrong.exit_code == 2 and "is an FMT training checkpoint" in wrong.output
    assert "takes a stage-1 checkpoint" in wrong.output


def test_a_stage1_run_exports_a_slim_checkpoint(tmp_path):
    from crop_factory import write_stage1_checkpoint
    from float.motion_checkpoint import load_motion_checkpoint

    run_ckpt = write_stage1_checkpoint(tmp_path / "final.pt", size=16, optimizer={"state": {}, "bulk": torch.zeros(10**5)})
    slim = tmp_path / "stage1-slim.pt"
    result = cli([run_ckpt, slim, "--half"])
    assert result.exit_code == 0, result.output
    assert slim.stat().st_size < run_ckpt.stat().st_size / 2
    full, _, _ = load_motion_checkpoint(run_ckpt)
    half, info, _ = load_motion_checkpoint(slim)
    assert info["step"] == 3
    for k, v in full.state_dict().items():
        assert torch.allclose(half.state_dict()[k], v, atol=1e-2, rtol=1e-3), k


def test_sampling_refuses_a_stage1_checkpoint_naming_what_it_is(tmp_path):
    from crop_factory import write_stage1_checkpoint
    from trainer.checkpoints import load_sampling_model
    from trainer.errors import SampleError

    stage1 = write_stage1_checkpoint(tmp_path / "stage1.pt", size=16, version=CHECKPOINT_VERSION)
    with pytest.raises(SampleError, match="stage-1 motion auto-encoder checkpoint.*--motion-ckpt"):
        load_sampling_model(stage1)


def test_export_warns_that_relative_motion_is_not_the_official_models(tmp_path):
    """A model trained with relative_motion generates motion minus the reference frame's; the official code adds
    no reference back, so the export says so (and one trained without it says nothing of the kind)."""
    warned = {}
    for relative in (True, False):
        cfg = get_preset("tiny", **TINY, relative_motion=relative)
        model = FloatMotionModel(cfg)
        state = {"version": CHECKPOINT_VERSION, "step": 7, "model": model.state_dict(), "ema": model.state_dict(),
                 "config": cfg.to_dict(), "settings": {}}
        path = save_final(tmp_path / f"run-{relative}" / "checkpoints", state)
        result = cli([path, tmp_path / f"out-{relative}.pth"])
        assert result.exit_code == 0, result.output
        warned[relative] = "relative to the reference frame" in result.output
    assert warned == {True: True, False: False}
