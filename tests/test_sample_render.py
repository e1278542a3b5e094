"""The trainer's --sample-step files rendered to ground truth | generated videos."""
import av
import torch

from shard_factory import make_shards
from shards.tar import iter_tar_samples
from trainer.sample_render import SampleRenderer


def _setup(tmp_path):
    manifest = make_shards(tmp_path / "shards", {"train": 1, "val": 2}, frames=55, dim_w=512, audio_dim=8)
    manifest["encoders"]["motion"]["width"] = 0.125  # a thin seeded decoder keeps the test fast
    val = tmp_path / "shards" / manifest["splits"]["val"]["shards"][0]["name"]
    key = next(iter_tar_samples(str(val)))[0]
    g = torch.Generator().manual_seed(0)
    record = {"keys": [key, "not-a-clip"], "motion": 0.01 * torch.randn(2, 3, 512, generator=g),
              "target": 0.01 * torch.randn(2, 3, 512, generator=g), "step": 10}
    path = tmp_path / "samples" / "step_00000010.pt"
    path.parent.mkdir()
    torch.save(record, path)
    return manifest, key, path


def test_saved_samples_become_side_by_side_videos(tmp_path):
    manifest, key, path = _setup(tmp_path)
    logs = []
    SampleRenderer(manifest, tmp_path / "shards", 512, logs.append)(path)
    video = path.with_suffix("") / f"{key}.mp4"
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 3
    assert frames[0].shape[1] >= 2 * 64  # ground truth | generated, 64 px each
    assert any("RANDOM" in line for line in logs)
    assert any("not-a-clip" in line and "no reference image" in line for line in logs)
    assert not (path.with_suffix("") / "not-a-clip.mp4").exists()


def test_without_a_fitting_decoder_samples_stay_latents(tmp_path):
    manifest, key, path = _setup(tmp_path)
    logs = []
    SampleRenderer(manifest, tmp_path / "shards", 16, logs.append)(path)  # the model's dim_w differs
    assert not path.with_suffix("").exists()
    assert any("latents only" in line for line in logs)
