"""The trainer's --sample-step files rendered to ground truth | generated videos."""
import av
import torch

from shard_factory import make_shards
from shards.tar import iter_tar_samples
from trainer.sample.step_renderer import SampleRenderer


def _setup(tmp_path):
    manifest = make_shards(tmp_path / "shards", {"train": 1, "val": 2}, frames=55, dim_w=512, audio_dim=8)
    manifest["encoders"]["motion"]["width"] = 0.125  # a thin seeded decoder keeps the test fast
    val = tmp_path / "shards" / manifest["splits"]["val"]["shards"][0]["name"]
    key = next(iter_tar_samples(str(val)))[0]
    g = torch.Generator().manual_seed(0)
    record = {"keys": [key, "not-a-clip"], "motion": 0.01 * torch.randn(2, 3, 512, generator=g),
              "target": 0.01 * torch.randn(2, 3, 512, generator=g), "step": 10}
    path = tmp_path / "samples" / "sample_step_10.pt"
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


def test_rendered_samples_get_the_lip_sync_proxy_against_the_source_audio(tmp_path, monkeypatch):
    import json

    import numpy as np

    import trainer.sample.step_renderer as sample_render

    manifest, key, path = _setup(tmp_path)
    record = torch.load(path, weights_only=True)
    record["motion"], record["target"] = (torch.randn(2, 12, 512, generator=torch.Generator().manual_seed(s))
                                          for s in (1, 2))
    record["starts"] = [5, 0]
    torch.save(record, path)
    asked = []

    def fake_source(meta, n_frames):  # a clip-long 16 kHz waveform with a loudness that moves
        asked.append((meta["key"], n_frames))
        t = np.arange(n_frames * 640) / 16000
        return (np.sin(2 * np.pi * 200 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 1.5 * t))).astype(np.float32)

    monkeypatch.setattr(sample_render, "source_waveform", fake_source)
    logs = []
    renderer = SampleRenderer(manifest, tmp_path / "shards", 512, logs.append)
    renderer(path)
    assert asked == [(key, 55)]  # the rendered clip's own source, whole; the window is cut from frame 5
    renderer(path)  # the next sample step
    assert asked == [(key, 55)], "the source audio is decoded once per run, not at every sample step"
    scores = json.loads((path.with_suffix("") / "lipsync.json").read_text())
    assert [c["key"] for c in scores["clips"]] == [key]
    assert set(scores["clips"][0]["lipsync"]) == {"generated", "truth"}
    assert any(line.startswith(f"sample {key}: lip-sync proxy") for line in logs)


def test_without_the_source_audio_no_lip_sync_is_claimed(tmp_path):
    manifest, key, path = _setup(tmp_path)
    record = torch.load(path, weights_only=True)
    record["starts"] = [0, 0]
    torch.save(record, path)
    SampleRenderer(manifest, tmp_path / "shards", 512, lambda m: None)(path)
    assert (path.with_suffix("") / f"{key}.mp4").exists()
    assert not (path.with_suffix("") / "lipsync.json").exists()  # meta's source "synthetic" is no file
