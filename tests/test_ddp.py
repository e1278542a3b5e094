"""DDP through torchrun with two CPU processes (gloo): disjoint shards, ranks in step, no hang."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shard_factory import make_shards
from trainer import checkpoints as ckpt

REPO = Path(__file__).resolve().parents[1]
TINY = {"dim_w": 16, "dim_a": 16, "dim_h": 32, "depth": 1, "num_heads": 2}

# Runs under torchrun: trains, records the clip keys each rank trained on and its final weights.
DRIVER = """
import json, sys, torch
from float.loss import rectified_flow_loss
from trainer.distributed import cleanup, init_distributed
from trainer.settings import TrainSettings
from trainer.train_fmt import train

out, data, workers, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
info = init_distributed("cpu", timeout_s=60)
keys = []

def loss_fn(model, batch, weights, **kw):
    keys.extend(batch["key"])
    return rectified_flow_loss(model, batch, weights, **kw)

settings = TrainSettings(data_root=data, out=out, preset="tiny", overrides=json.loads(sys.argv[5]), steps=steps,
                         batch_size=4, lr=3e-3, num_workers=workers, log_step=2, val_step=0, sample_step=0,
                         save_step=2, progress=False, tensorboard=False)
result = train(settings, info=info, loss_fn=loss_fn)
torch.save({"model": result.model.state_dict(), "ema": result.ema_model.state_dict()},
           f"{out}/weights-rank{info.rank}.pt")
json.dump(keys, open(f"{out}/keys-rank{info.rank}.json", "w"))
cleanup()
"""


def torchrun(tmp_path: Path, shards: Path, workers: int, steps: int, timeout: float) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(driver), str(tmp_path / "run"), str(shards), str(workers), str(steps), json.dumps(TINY)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def shard_of(key: str) -> str:
    return key.split("-")[1]  # "train-s001-c0005" -> "s001"


def test_two_ranks_read_disjoint_shards_and_stay_in_step(tmp_path):
    shards = tmp_path / "shards"
    make_shards(shards, {"train": 16, "val": 2}, frames=60, dim_w=16, audio_dim=12, clips_per_shard=4)
    done = torchrun(tmp_path, shards, workers=0, steps=6, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    keys = [json.loads((run / f"keys-rank{r}.json").read_text()) for r in (0, 1)]
    assert len(keys[0]) == len(keys[1]) == 6 * 4
    shards_read = [{shard_of(k) for k in ks} for ks in keys]
    assert shards_read[0] and shards_read[1] and not shards_read[0] & shards_read[1]

    weights = [torch.load(run / f"weights-rank{r}.pt", weights_only=True) for r in (0, 1)]
    for part in ("model", "ema"):
        for name, value in weights[0][part].items():
            assert torch.equal(value, weights[1][part][name]), f"ranks differ in {part}.{name}"
    final = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert final["world_size"] == 2 and len(final["stream"]["ranks"]) == 2
    assert final["stream"]["ranks"][0]["rank"] == 0 and final["stream"]["ranks"][1]["rank"] == 1
    start = torch.load(run / "checkpoints" / "checkpoint_step_2.pt", weights_only=True)["model"]
    assert any(not torch.equal(start[k], final["model"][k]) for k in start), "training did not move the weights"
    # only rank 0 logs
    train_logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train_logs if r["split"] == "train"] == [2, 4, 6]


def test_fewer_shards_than_ranks_times_workers_does_not_hang(tmp_path):
    shards = tmp_path / "shards"
    make_shards(shards, {"train": 3, "val": 0}, frames=60, dim_w=16, audio_dim=12, clips_per_shard=4)
    try:
        done = torchrun(tmp_path, shards, workers=2, steps=4, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("2 ranks x 2 workers over 1 shard hung")
    assert done.returncode == 0, done.stderr[-3000:]
    keys = [json.loads((tmp_path / "run" / f"keys-rank{r}.json").read_text()) for r in (0, 1)]
    assert len(keys[0]) == len(keys[1]) == 4 * 4
