"""`floatctl train` on shards served over HTTP (127.0.0.1): a run stopped at step 4 and resumed to 6
ends with the weights of an uninterrupted run to 6, for one shard set and for two mixed by weight."""
from __future__ import annotations

import shutil

import pytest
import torch

from shard_factory import make_shards, write_tar
from shards.http_serve import serve_folder
from shards.tar import iter_tar_samples
from trainer import checkpoints as ckpt
from trainer.settings import TrainSettings
from trainer.train_fmt import train

TINY = {"dim_w": 16, "dim_a": 16, "dim_h": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def served_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bucket")
    make_shards(root / "ravdess", {"train": 8, "val": 2}, frames=60, dim_w=16, audio_dim=12, seed=0)
    shutil.copytree(root / "ravdess", root / "hdtf")
    for tar in sorted((root / "hdtf").glob("*.tar")):
        write_tar(tar, [(f"hdtf{k}", m) for k, m in iter_tar_samples(tar, read=None)])
    return root


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def _settings(data_root, out, steps, resume=None) -> TrainSettings:
    return TrainSettings(data_root=data_root, out=str(out), preset="tiny", overrides=dict(TINY), steps=steps,
                         batch_size=2, lr=3e-3, log_step=0, val_step=2, sample_step=0, save_step=2,
                         progress=False, tensorboard=False, val_nfe=2, val_clips=2, deterministic=True,
                         resume=resume)


@pytest.mark.parametrize("roots", [["ravdess"], ["ravdess:0.4", "hdtf:0.6"]], ids=["one-set", "mixed"])
def test_training_from_http_resumes_exactly(served_root, tmp_path, roots):
    with serve_folder(served_root, lifetime=300) as server:
        data_root = [f"{server.url}/{r}" for r in roots]
        whole = train(_settings(data_root, tmp_path / "whole", 6))
        first = train(_settings(data_root, tmp_path / "split", 4))
        resumed = train(_settings(data_root, tmp_path / "split", 6, resume="auto"))
        asked = list(server.requests)
    assert whole.step == first.step + 2 == resumed.step == 6
    assert any(r.endswith("manifest.json") for r in asked) and any(r.endswith("val-000000.tar") for r in asked)
    assert {r.split("/")[0] for r in asked if "train-" in r} == {r.split(":")[0] for r in roots}
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "whole"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "split"))
    assert b["step"] == 6
    at4 = ckpt.load_checkpoint(tmp_path / "split" / "checkpoints" / "final_step_4.pt")
    assert any(not torch.equal(at4["model"][n], a["model"][n]) for n in a["model"]), "steps 5-6 changed weights"
    for part in ("model", "ema"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name} differs after resume"
