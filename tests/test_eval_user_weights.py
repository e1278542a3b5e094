"""`floatctl eval --inception/--i3d/--syncnet` (or the same keys in --config): FID, FVD and LSE-C/D of the
weights the user gives, wired into the tables; a wrong file is refused before any video is scored.
The networks here are seeded ones of the real architectures (saved as the public files are); each metric's
formula is checked against its reference in test_fid.py, test_fvd.py and test_syncnet.py."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from preprocess import face_models
from test_eval_faces import face, mp4  # noqa: F401  (the face fixture, the mp4 writer)
from test_fid import inception_file  # noqa: F401
from test_fvd import i3d_file  # noqa: F401
from test_syncnet import syncnet_file  # noqa: F401

pytestmark = pytest.mark.skipif(not face_models.available(), reason="dlib face models not installed")
CLIP_FRAMES = 16  # FVD's clip length: two 16-frame videos give the two clips a side a covariance needs


def paired(tmp_path, face, shift):  # noqa: F811
    for i, name in enumerate(("a", "b")):
        real = np.stack([np.roll(face, 2 * (t % 4) + i, axis=0) for t in range(CLIP_FRAMES)])
        mp4(tmp_path / "real" / f"{name}.mp4", real)
        t = np.arange(CLIP_FRAMES * 640) / 16000
        audio = (0.3 * np.sin(2 * np.pi * 220 * t) * np.abs(np.sin(2 * np.pi * 3 * t))).astype(np.float32)
        mp4(tmp_path / "gen" / f"{name}.mp4", np.roll(real, shift, axis=2), audio)
    return tmp_path / "gen", tmp_path / "real"


def run_eval(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args), "--identity-every", "16"])


def test_fid_fvd_and_lse_fill_the_table(face, inception_file, i3d_file, syncnet_file, tmp_path, one_thread):  # noqa: F811
    gen, real = paired(tmp_path, face, shift=0)
    result = run_eval("--generated", gen, "--real", real, "--inception", inception_file, "--i3d", i3d_file,
                      "--syncnet", syncnet_file)
    assert result.exit_code == 0, result.output
    mean = json.loads((gen / "eval.json").read_text())["faces"][0]["mean"]
    # Generated frames equal to the real ones (same pixels, same encoder): both distances vanish ...
    assert abs(mean["fid"]) < 1e-3 and abs(mean["fvd"]) < 1e-3
    # ... and the generated video's sync scores are the ground truth's.
    assert np.isfinite(mean["lse_d_generated"]) and mean["lse_c_generated"] == pytest.approx(mean["lse_c_truth"])
    assert mean["lse_d_generated"] == pytest.approx(mean["lse_d_truth"])
    md = (gen / "eval.md").read_text()
    for heading in ("FID", "FVD", "LSE-C", "LSE-D", "LSE-C GT", "LSE-D GT"):
        assert f"| {heading} |" in md


def test_config_names_the_files_and_a_moved_face_scores_worse(face, inception_file, tmp_path, one_thread):  # noqa: F811
    gen, real = paired(tmp_path, face, shift=24)
    config = tmp_path / "eval.yaml"
    config.write_text(f"inception: {inception_file}\n")
    result = run_eval("--generated", gen, "--real", real, "--config", config)
    assert result.exit_code == 0, result.output
    assert json.loads((gen / "eval.json").read_text())["faces"][0]["mean"]["fid"] > 1.0
    config.write_text("inception: x.pth\nsyncnett: y.model\n")
    result = run_eval("--generated", gen, "--real", real, "--config", config)
    assert result.exit_code == 2 and "takes the keys inception, i3d, syncnet" in result.output


def test_a_wrong_weight_file_is_refused_before_anything_is_scored(face, syncnet_file, tmp_path):  # noqa: F811
    gen, real = paired(tmp_path, face, shift=0)
    result = run_eval("--generated", gen, "--real", real, "--inception", syncnet_file)
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(error) == 1 and str(syncnet_file) in error[0] and "pt_inception-2015-12-05" in error[0]
    assert not (gen / "eval.json").exists()


def test_too_little_for_fvd_or_lse_is_a_note_not_a_failure(i3d_file, syncnet_file):  # noqa: F811
    from trainer.eval.clips import Clip
    from trainer.eval.user_weights import load_user_metrics

    said = []
    user = load_user_metrics(i3d=i3d_file, syncnet=syncnet_file, log=said.append)
    short = [np.zeros((8, 32, 32, 3), np.uint8)]  # under one 16-frame clip a side
    assert user.per_set[0](short, short) == {}
    assert any(m.startswith("FVD: not computed") and "16 frames" in m for m in said), said
    assert user.per_set[0]([], []) == {} and "FVD: no clip has a ground-truth video: not computed" in said
    silent = Clip("s", short[0], short[0], None, None, None)
    assert user.per_clip[0](silent) == {} and silent.notes == ["no audio at hand: no LSE"]
    brief = Clip("b", short[0][:3], short[0][:3], None, None, np.zeros(3 * 640, np.float32))
    assert user.per_clip[0](brief) == {}
    assert [n.split(":")[0] for n in brief.notes] == ["LSE of the generated video", "LSE of the truth video"]

