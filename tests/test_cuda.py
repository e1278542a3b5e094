"""On a CUDA GPU: bf16 and compiled training steps of both stages, exact resume, and sampling to an mp4.

Every test here is marked ``cuda`` and skipped (with the reason) where torch.cuda.is_available() is False;
a GPU session runs them with ``pytest -m cuda -q`` (benchmarks/gpu_session.sh). Sizes are tiny: the point
is that the CUDA paths (autocast bf16, torch.compile, deterministic kernels, the decoder on the GPU) work,
not their speed (benchmarks/gpu.py measures that).

FLOAT_CUDA_TESTS_DEVICE=cpu runs the same tests on the CPU (fp32 instead of bf16), to check the tests'
own logic on a machine without a GPU; it is not a substitute for running them on one.
"""
from __future__ import annotations

import os

# Deterministic cuBLAS needs this before the first cuBLAS handle exists (trainer.train_fmt.train sets it too,
# but by then an earlier test may have made the handle).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from pathlib import Path  # noqa: E402

import av  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from crop_factory import make_crop_shards  # noqa: E402
from shard_factory import make_shards  # noqa: E402
from trainer import checkpoints as ckpt  # noqa: E402
from trainer.logging import read_metrics  # noqa: E402
from trainer.settings import MotionSettings, TrainSettings  # noqa: E402

DEVICE = os.environ.get("FLOAT_CUDA_TESTS_DEVICE", "cuda")
ON_GPU = DEVICE == "cuda"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is False); run with pytest -m cuda there"),
]
AMP = "bf16" if ON_GPU else "fp32"  # bf16 autocast on a CPU is slow and not what these tests are for
FMT_TINY = {"dim_w": 16, "dim_a": 16, "dim_h": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    make_shards(folder, {"train": 16, "val": 2}, frames=80, dim_w=16, audio_dim=12, seed=0)
    return folder


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crops")
    make_crop_shards(folder, {"train": 6, "val": 2}, frames=10, size=32, seed=0)
    return folder


@pytest.fixture(autouse=True)
def restore_determinism():
    """--deterministic switches deterministic kernels on for the whole process; switch them back."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def fmt_settings(shards: Path, out: Path, **changes) -> TrainSettings:
    base = dict(data_root=str(shards), out=str(out), preset="tiny", overrides=dict(FMT_TINY), steps=40, batch_size=8,
                lr=3e-3, log_step=10, val_step=0, sample_step=0, save_step=0, progress=False, tensorboard=False,
                device=DEVICE, num_workers=0, precision=AMP)
    return TrainSettings(**(base | changes))


def motion_settings(crops: Path, out: Path, **changes) -> MotionSettings:
    base = dict(data_root=str(crops), out=str(out), preset="tiny", steps=40, batch_size=4, lr=3e-3, log_step=10,
                val_step=0, sample_step=0, save_step=0, progress=False, tensorboard=False, device=DEVICE,
                num_workers=0, precision=AMP, perceptual_weight=0.0, pairs_per_clip=4)
    return MotionSettings(**(base | changes))


def train_stage(stage: str, data: Path, out: Path, **changes):
    if stage == "fmt":
        from trainer.train_fmt import train

        return train(fmt_settings(data, out, **changes))
    from trainer.train_motion import train

    return train(motion_settings(data, out, **changes))


def stage_data(stage: str, shards: Path, crops: Path) -> Path:
    return shards if stage == "fmt" else crops


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("stage", ["fmt", "motion"])
def test_training_steps_run_and_the_loss_falls(stage, compiled, shards, crops, tmp_path):
    run = tmp_path / "run"
    result = train_stage(stage, stage_data(stage, shards, crops), run, compile=compiled)
    assert result.step == 40 and result.final_checkpoint.is_file() and result.nonfinite_steps == 0
    windows = read_metrics(run, "train")
    assert [w["step"] for w in windows] == [10, 20, 30, 40]
    totals = [w["total"] for w in windows]
    assert all(isinstance(t, float) for t in totals), f"non-finite losses: {totals}"
    assert totals[-1] < 0.9 * totals[0], f"the {stage} loss did not fall: {totals}"
    state = ckpt.load_checkpoint(result.final_checkpoint)
    assert not any(k.startswith("_orig_mod.") for k in state["model"]), "compiled names leaked into the checkpoint"
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def final_state(run: Path) -> dict:
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    return {"model": state["model"], "ema": state["ema"], "optimizer": state["optimizer"]["state"]}


def assert_same_state(a: dict, b: dict, relative: float | None = None) -> None:
    """Equal bit for bit, or each tensor within ``relative`` of the other in L2 norm (a norm, not each
    element: an element whose gradient is float noise may take Adam's step the other way)."""
    def same(x, y, what: str) -> None:
        if relative is None:
            assert torch.equal(x, y), f"{what} differs after resume"
        else:
            gap, size = (x.double() - y.double()).norm().item(), x.double().norm().item()
            assert gap <= relative * size + 1e-6, f"{what} differs after resume: |a - b| {gap:.3g}, |a| {size:.3g}"

    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            same(a[part][name], b[part][name], f"{part}.{name}")
    for index, moments in a["optimizer"].items():
        for key, value in moments.items():
            same(value, b["optimizer"][index][key], f"optimizer state {index}.{key}")


# The motion auto-encoder warps with grid_sample, whose CUDA backward adds with atomics and has no
# deterministic kernel: under --deterministic torch refuses it on a GPU (grid_sampler_2d_backward_cuda). So
# stage 1 resumes on the GPU without --deterministic, and the runs agree to float noise, not bit for bit.
MOTION_ON_GPU_RELATIVE = 1e-3


@pytest.mark.parametrize("stage", ["fmt", "motion"])
def test_stop_and_resume_equals_an_uninterrupted_run_in_fp32(stage, shards, crops, tmp_path):
    data = stage_data(stage, shards, crops)
    bitwise = stage == "fmt" or not ON_GPU
    exact = dict(precision="fp32", deterministic=bitwise, log_step=5)
    train_stage(stage, data, tmp_path / "whole", steps=12, **exact)
    train_stage(stage, data, tmp_path / "cut", steps=5, **exact)  # stops at step 5 with its final checkpoint
    resumed = train_stage(stage, data, tmp_path / "cut", steps=12, resume="auto", **exact)
    assert resumed.step == 12
    assert_same_state(final_state(tmp_path / "whole"), final_state(tmp_path / "cut"),
                      None if bitwise else MOTION_ON_GPU_RELATIVE)


def test_sampling_on_the_gpu_writes_an_mp4(tmp_path):
    from test_sample import SIZE, speech_like, write_checkpoint, write_shards, write_wav  # tests/test_sample.py
    from trainer.sample.command import run_sample
    from trainer.sample.options import SampleOptions

    import cv2
    import skimage.data

    manifest = write_shards(tmp_path / "shards")
    checkpoint = write_checkpoint(tmp_path / "runs" / "demo", tmp_path / "shards", manifest)
    audio = write_wav(tmp_path / "speech.wav", speech_like(2.0))
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    logs: list[str] = []
    result = run_sample(SampleOptions(checkpoint, audio=audio, image=image, out=tmp_path / "out", emotion="happy",
                                      nfe=4, device=DEVICE), log=logs.append)
    assert any(f"device {DEVICE}" in line for line in logs), logs[:5]
    video = tmp_path / "out" / "speech-astronaut.mp4"
    assert result.rendered and str(video) in result.files["video"]
    with av.open(str(video)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        width = container.streams.video[0].codec_context.width
        has_audio = bool(container.streams.audio)
    assert frames == 50 and width == SIZE and has_audio
    assert result.metrics["speed"]["device"].startswith(DEVICE)
