"""`floatctl eval` with dlib's shipped face models: real faces in, known answers out; bad input refused."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from float.config import SAMPLES_PER_FRAME
from preprocess import face_models
from preprocess.mp4 import write_mp4
from trainer.eval.faces import analyse, reference_embedding
from trainer.eval.metrics import cosine_similarity

pytestmark = pytest.mark.skipif(not face_models.available(), reason="dlib face models not installed")
PORTRAIT = Path(__file__).resolve().parents[2] / "shared" / "samples" / "portrait_512.jpg"
FRAMES, SIZE = 10, 128


@pytest.fixture(scope="module")
def face():
    """A 128 px face crop (the tiny preset's size) of scikit-image's astronaut photo: the face about 80 px."""
    from skimage.data import astronaut

    return cv2.resize(astronaut()[37:189, 148:300], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def still_video(face, shift=0):
    return np.stack([np.roll(face, shift, axis=1)] * FRAMES)


def speech():
    t = np.arange(FRAMES * SAMPLES_PER_FRAME) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.abs(np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def mp4(path, frames, audio=None):
    return write_mp4(path, frames, (frames.shape[2], frames.shape[1]), 25, audio)


def invoke(*args):
    # The identity network is the slow model: one frame a video is enough here.
    return CliRunner().invoke(app, ["eval", *map(str, args), "--identity-every", "10"])


@pytest.mark.skipif(not PORTRAIT.is_file(), reason="shared portrait missing")
def test_the_shared_portrait_has_one_face_with_landmarks_on_it_and_its_own_identity():
    image = cv2.cvtColor(cv2.imread(str(PORTRAIT)), cv2.COLOR_BGR2RGB)
    track = analyse(image[None], identity=True)
    assert track.face_rate == 1.0
    x, y, w, h = track.boxes[0]
    points = track.points[0]
    assert np.all((points[:, 0] > x - 0.2 * w) & (points[:, 0] < x + 1.2 * w))
    assert points[36:48, 1].mean() < points[27:36, 1].mean() < points[48:68, 1].mean()  # eyes, nose, mouth
    assert cosine_similarity(track.embeddings[0], reference_embedding(image)) == pytest.approx(1.0, abs=1e-6)
    small = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)  # 128 px: found by upsampling
    assert analyse(small[None]).upsample == 1 and analyse(small[None]).face_rate == 1.0


def test_paired_folders_give_known_answers_for_identical_and_shifted_videos(face, tmp_path):
    gen, real, refs, out = (tmp_path / n for n in ("gen", "real", "refs", "out"))
    mp4(gen / "same.mp4", still_video(face), speech())
    mp4(real / "same.mp4", still_video(face))
    mp4(gen / "moved.mp4", still_video(face, shift=6), speech())
    mp4(real / "moved.mp4", still_video(face))
    refs.mkdir()
    cv2.imwrite(str(refs / "same.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    result = invoke("--generated", gen, "--real", real, "--reference", refs, "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "eval.json").read_text())
    clips = {c["name"]: c for c in data["faces"][0]["clips"]}
    same, moved = clips["same"], clips["moved"]
    assert same["face_rate_generated"] == same["face_rate_truth"] == 1.0
    assert same["psnr_generated"] == 100.0 and same["ssim_generated"] == pytest.approx(1.0)
    assert same["lmd_generated"] == pytest.approx(0.0, abs=1e-9)
    assert same["csim_generated"] > 0.95 and same["csim_truth"] > 0.95
    assert same["jitter_generated"] < 0.01 and same["blink_generated"] == 0.0  # still, but for the codec
    assert moved["psnr_generated"] < 40 and moved["ssim_generated"] < 0.99
    assert 0 <= moved["lmd_generated"] < 3.0  # the same mouth, moved: alignment takes the move out
    assert "no reference image: the first real frame is the reference" in " ".join(moved["notes"])
    assert "lipsync_generated" in same and "lipsync_truth" in same  # the generated file's audio track
    md = (out / "eval.md").read_text()
    assert "| gen | - | 2 |" in md and "CSIM gen." in md and md in result.output
    assert (out / "eval_landmarks.png").is_file()


def test_bad_input_is_refused_with_one_clear_line(face, tmp_path):
    empty, gen, real = tmp_path / "empty", tmp_path / "gen", tmp_path / "real"
    empty.mkdir()
    mp4(gen / "a.mp4", still_video(face)[:2])
    mp4(real / "b.mp4", still_video(face)[:2])
    cases = [
        (("--generated", empty, "--real", real), "--generated " + str(empty) + ": no .mp4 files"),
        (("--generated", gen, "--real", real), "a.mp4 has no video of the same name in --real"),
        (("--generated", gen), "--generated and --real go together"),
        ((), "nothing to evaluate: give a run folder"),
        (("--generated", gen, "--real", tmp_path / "gone"), "no such folder"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    (real / "a.mp4").write_bytes(b"not a video at all")
    result = invoke("--generated", gen, "--real", real)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"unreadable video: {real / 'a.mp4'} is a text file" in result.output


def sample_run(run, face, steps=(5, 10), shift=4):
    """A run folder as the trainer and floatctl sample leave it, with face videos."""
    truth, generated = still_video(face), still_video(face, shift)
    side = np.concatenate([truth, generated], axis=2)
    for step in steps:
        mp4(run / "samples" / f"sample_step_{step}" / "clip.mp4", side)
    folder = run / "samples" / "final_step_10"
    mp4(folder / "k.mp4", generated, speech())
    mp4(folder / "k.truth.mp4", truth, speech())
    mp4(folder / "k.no_audio.mp4", still_video(face, 2 * shift), speech())
    cv2.imwrite(str(folder / "k.reference.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    (folder / "metrics.json").write_text(json.dumps({"items": [{"name": "k"}], "settings": {"step": 10}}))


def test_runs_side_by_side_with_a_plot_against_the_step(face, tmp_path):
    first, second, out = tmp_path / "runs" / "a", tmp_path / "runs" / "b", tmp_path / "cmp"
    sample_run(first, face)
    sample_run(second, face, steps=(), shift=8)
    result = invoke(first, second, "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((first / "eval.json").read_text())
    sets = {s["name"]: s for s in data["faces"]}
    assert list(sets) == ["sample_step_5", "sample_step_10", "final_step_10"]
    assert sets["sample_step_5"]["kind"] == "trainer" and sets["sample_step_10"]["step"] == 10
    sampled = sets["final_step_10"]["mean"]
    assert sampled["face_rate_generated"] == 1.0 and sampled["lmd_no_audio"] is not None
    assert sampled["csim_generated"] > 0.9 and sampled["psnr_generated"] < 100
    assert "lipsync_no_audio" in sampled and "lipsync_generated" not in sets["sample_step_5"]["mean"]  # silent
    assert (first / "eval_vs_step.png").is_file() and not (second / "eval_vs_step.png").exists()  # one step
    rows = json.loads((out / "comparison.json").read_text())
    assert [(Path(r["run"]).name, r["samples"]) for r in rows] == [
        ("a", "sample_step_5"), ("a", "sample_step_10"), ("a", "final_step_10"),
        ("b", "final_step_10")]
    assert (out / "comparison.md").read_text() in result.output


def test_no_faces_option_keeps_the_tables_and_skips_the_face_models(face, tmp_path):
    run = tmp_path / "run"
    sample_run(run, face, steps=())
    result = invoke(run, "--no-faces")
    assert result.exit_code == 0, result.output
    assert "Face metrics not asked for" in (run / "eval.md").read_text()
    assert json.loads((run / "eval.json").read_text())["faces"] == []


def test_an_older_sample_folder_takes_the_truth_from_the_side_by_side_with_its_captions_blanked(face, tmp_path):
    from trainer.sample.render import side_by_side

    folder = tmp_path / "run" / "samples" / "final_step_3"
    video = still_video(face)
    mp4(folder / "k.mp4", video, speech())
    mp4(folder / "k.gt_vs_generated.mp4", side_by_side(video, video), speech())  # captioned halves
    (folder / "metrics.json").write_text(json.dumps({"items": [{"name": "k"}], "settings": {"step": 3}}))
    result = invoke(tmp_path / "run")
    assert result.exit_code == 0, result.output
    clip = json.loads((tmp_path / "run" / "eval.json").read_text())["faces"][0]["clips"][0]
    assert clip["psnr_generated"] > 35  # the same face: the captions ("ground truth", "generated") do not count
    assert clip["lmd_generated"] < 1.0 and clip["face_rate_truth"] == 1.0


def test_user_weight_metrics_plug_in_per_clip_and_per_set(face, tmp_path):
    from trainer.eval.clips import paired_set
    from trainer.eval.score import UserMetrics, score_set

    mp4(tmp_path / "gen" / "a.mp4", still_video(face, 3), speech())
    mp4(tmp_path / "real" / "a.mp4", still_video(face))
    seen = {}

    def per_clip(clip):  # what LSE gets: the generated frames and the 16 kHz waveform
        seen["clip"] = (clip.generated.shape, clip.generated.dtype, clip.waveform.shape, clip.reference.shape)
        return {"lse_c": 7.5}

    def per_set(reals, fakes):  # what FID / FVD get: the lists of real and generated videos
        seen["set"] = (len(reals), reals[0].shape, fakes[0].shape)
        return {"fid": 12.0}

    result = score_set(paired_set(tmp_path / "gen", tmp_path / "real"), UserMetrics([per_clip], [per_set]),
                       identity_every=10, log=lambda m: None)
    assert seen["clip"] == ((FRAMES, SIZE, SIZE, 3), np.uint8, (FRAMES * SAMPLES_PER_FRAME,), (SIZE, SIZE, 3))
    assert seen["set"] == (1, (FRAMES, SIZE, SIZE, 3), (FRAMES, SIZE, SIZE, 3))
    assert result["clips"][0]["lse_c"] == 7.5 and result["mean"]["lse_c"] == 7.5 and result["mean"]["fid"] == 12.0
