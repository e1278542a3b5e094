"""`floatctl train-motion` on crop shards served over HTTP (127.0.0.1), read as `floatctl train` reads latents:
one set, two sets mixed by weight, a brace pattern; a run stopped at step 4 and resumed to 6 ends with the
weights of an uninterrupted run; a 404 or cut-short crop shard is retried then skipped (shards/dataset.py's
rule); sets of other crop sizes, latent shards and pipe: commands are refused with one line."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crop_factory import make_crop_shards
from shard_factory import make_shards, write_tar
from shards.crops import CROP_ONLY_MEMBERS
from shards.http_serve import serve_folder
from shards.pairs import CropPairs, PairSpec
from shards.tar import iter_tar_samples
from trainer import checkpoints as ckpt
from trainer.errors import TrainingError
from trainer.logging import read_metrics
from trainer.settings import MotionSettings
from trainer.train_motion import read_crop_sets, train

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(scope="module")
def bucket(tmp_path_factory) -> Path:
    """Two crop sets of the same size (ravdess, hdtf: other clips), one of another size, one of latents."""
    root = tmp_path_factory.mktemp("bucket")
    make_crop_shards(root / "ravdess", {"train": 6, "val": 2}, frames=8, size=SIZE, seed=0)
    make_crop_shards(root / "hdtf", {"train": 6, "val": 2}, frames=8, size=SIZE, seed=1)
    for tar in sorted((root / "hdtf").glob("*.tar")):  # its own keys (served only: sizes may change)
        write_tar(tar, [(f"hdtf{k}", m) for k, m in iter_tar_samples(tar, None, known_members=CROP_ONLY_MEMBERS)])
    make_crop_shards(root / "big", {"train": 2, "val": 1}, frames=4, size=48, seed=2)
    make_shards(root / "latents", {"train": 2, "val": 1}, frames=12, dim_w=16, audio_dim=8, seed=0)
    return root


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def _settings(data_root, out, steps=2, **changes) -> MotionSettings:
    base = dict(data_root=data_root, out=str(out), preset="tiny", steps=steps, batch_size=4, log_step=0,
                val_step=2, sample_step=0, save_step=2, progress=False, tensorboard=False, val_clips=2,
                val_pairs_per_clip=2, pairs_per_clip=4, deterministic=True)
    base.update(changes)
    return MotionSettings(**base)


@pytest.mark.parametrize("roots", [["ravdess"], ["ravdess:0.4", "hdtf:0.6"]], ids=["one-set", "mixed"])
def test_training_from_http_resumes_exactly(bucket, tmp_path, roots):
    with serve_folder(bucket, lifetime=300) as server:
        data_root = [f"{server.url}/{r}" for r in roots]
        whole = train(_settings(data_root, tmp_path / "whole", 6))
        first = train(_settings(data_root, tmp_path / "split", 4))
        resumed = train(_settings(data_root, tmp_path / "split", 6, resume="auto"))
        asked = list(server.requests)
    assert whole.step == first.step + 2 == resumed.step == 6
    assert any(r.endswith("manifest.json") for r in asked)
    assert {r.split("/")[0] for r in asked if "/train-" in r} == {r.split(":")[0] for r in roots}
    assert {r for r in asked if "/val-" in r} == {"ravdess/val-000000.tar"}, "val pairs from the first set only"
    assert [m["step"] for m in read_metrics(tmp_path / "whole", "val")] == [0, 2, 4, 6]
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "whole"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "split"))
    at4 = ckpt.load_checkpoint(tmp_path / "split" / "checkpoints" / "final_step_4.pt")
    assert b["step"] == 6 and a["crop_size"] == SIZE
    weights = [float(r.split(":")[1]) for r in roots] if len(roots) > 1 else None
    assert a["stream"]["ranks"][0]["weights"] == weights, "the pair stream draws the sets by their weights"
    assert any(not torch.equal(at4["model"][n], a["model"][n]) for n in a["model"]), "steps 5-6 changed weights"
    for part in ("model", "ema"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name} differs after resume"


def test_mixed_sets_draw_by_weight_and_a_resume_on_another_mix_is_refused(bucket, tmp_path):
    with serve_folder(bucket, lifetime=120) as server:
        roots = [f"{server.url}/ravdess:0.2", f"{server.url}/hdtf:0.8"]
        sets = read_crop_sets(_settings(roots, tmp_path / "x"))
        urls, mix = sets.loader_kwargs("train")
        assert sets.mixed and mix["weights"] == [0.2, 0.8] and mix["sources"] == [0, 0, 0, 1, 1, 1]
        pairs = CropPairs(urls, PairSpec(1), seed=0, size=SIZE, shuffle_buffer=1, shards_per_block=3, **mix)
        keys = [pair["key"] for _, pair in zip(range(60), pairs)]
        train(_settings(roots, tmp_path / "run", 2))
        with pytest.raises(TrainingError, match="trained on shards written with other settings"):
            train(_settings([f"{server.url}/ravdess:0.5", f"{server.url}/hdtf:0.5"], tmp_path / "run", 4,
                            resume="auto"))
    from_hdtf = sum(k.startswith("hdtf") for k in keys)
    assert 36 <= from_hdtf <= 57, f"{from_hdtf} of 60 pairs from the 0.8 set"  # 48 expected


def test_a_brace_pattern_reads_only_its_shards_and_the_manifest_beside_them(bucket, tmp_path):
    with serve_folder(bucket, lifetime=120) as server:
        pattern = f"{server.url}/hdtf/train-{{000000..000001}}.tar"
        sets = read_crop_sets(_settings([pattern], tmp_path / "x"))
        assert sets.loader_kwargs("train")[0] == [f"{server.url}/hdtf/train-00000{i}.tar" for i in range(2)]
        result = train(_settings([pattern], tmp_path / "run", 2, val_step=0))
        asked = list(server.requests)
    assert result.step == 2
    assert "hdtf/manifest.json" in asked and "hdtf/train-000002.tar" not in asked
    assert {r for r in asked if "/train-" in r} <= {"hdtf/train-000000.tar", "hdtf/train-000001.tar"}


def test_a_404_and_a_cut_short_crop_shard_are_retried_then_skipped(bucket, tmp_path, caplog):
    served = tmp_path / "copy"
    shutil.copytree(bucket / "ravdess", served)
    (served / "train-000002.tar").unlink()  # listed in the manifest, answered with 404
    caplog.set_level(logging.WARNING, logger="shards.dataset")
    with serve_folder(served, cut={"train-000001.tar"}, lifetime=120) as server:
        sets = read_crop_sets(_settings([server.url], tmp_path / "x"))
        urls, _ = sets.loader_kwargs("train")
        pairs = CropPairs(urls, PairSpec(1), seed=0, size=SIZE, resampled=False, retry_delay=0.01)
        keys = sorted(p["key"] for p in pairs)
        asked = list(server.requests)
    # The intact shard whole; of the cut one at most the clip sent before the cut, and once (a retry does not
    # repeat it): whether the reader yields it before it sees the connection drop is a race; nothing from the
    # missing one.
    assert keys in (["train-c000", "train-c001"], ["train-c000", "train-c001", "train-c002"])
    assert asked.count("train-000002.tar") == 3 and asked.count("train-000001.tar") == 3, "2 retries each"
    assert pairs.skipped == 2
    assert f"{urls[2]}: unreadable after 3 tries" in caplog.text and "HTTP error" in caplog.text
    assert f"{urls[1]}: unreadable after 3 tries" in caplog.text and "cut short" in caplog.text


def test_a_missing_val_shard_over_http_stops_the_start_naming_the_set(bucket, tmp_path):
    served = tmp_path / "copy"
    shutil.copytree(bucket / "ravdess", served)
    (served / "val-000000.tar").unlink()
    with serve_folder(served, lifetime=120) as server:
        with pytest.raises(TrainingError, match=f"val split of {server.url}: .*val-000000.tar"):
            train(_settings([server.url], tmp_path / "run", 2))


def test_sets_of_other_crop_sizes_latents_and_pipes_are_refused(bucket, tmp_path):
    with pytest.raises(TrainingError, match=r"crop size \(input_size\): .*ravdess has 32, .*big has 48"):
        read_crop_sets(_settings([f"{bucket}/ravdess:0.5", f"{bucket}/big:0.5"], tmp_path / "x"))
    with pytest.raises(TrainingError, match=r"shard kind \(kind\): .*ravdess has 'crops', .*latents has None"):
        read_crop_sets(_settings([f"{bucket}/ravdess:0.5", f"{bucket}/latents:0.5"], tmp_path / "x"))
    with serve_folder(bucket, lifetime=60) as server:
        with pytest.raises(TrainingError, match=f"{server.url}/latents holds latent shards, not crop shards"):
            read_crop_sets(_settings([f"{server.url}/latents"], tmp_path / "x"))
    with pytest.raises(TrainingError, match="pipe: command has no manifest.json"):
        read_crop_sets(_settings(["pipe:cat train-000000.tar"], tmp_path / "x"))


def test_a_local_crop_shard_that_is_not_a_tar_is_named_at_start(bucket, tmp_path):
    folder = tmp_path / "crops"
    shutil.copytree(bucket / "ravdess", folder)
    shard = folder / "train-000001.tar"
    shard.write_bytes(b"x" * shard.stat().st_size)  # the manifest's size: past the integrity check
    with pytest.raises(TrainingError, match=r"train-000001.tar: not a shard \(not a readable tar"):
        train(_settings([str(folder)], tmp_path / "run"))


def test_the_cli_refuses_mixed_crop_sizes_in_one_line(bucket, tmp_path):
    run = subprocess.run([sys.executable, "-m", "trainer.command", "train-motion", "--data-root",
                          f"{bucket}/ravdess:1", "--data-root", f"{bucket}/big:1", "--out", str(tmp_path / "run"),
                          "--preset", "tiny", "--no-progress"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 2, run.stderr[-2000:]
    assert "crop size (input_size)" in run.stderr and "Traceback" not in run.stderr
