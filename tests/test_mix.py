"""Several shard sets in one run: --data-root LOCATION[:WEIGHT], drawn proportions, exact resume,
sets from other encoders refused, and the option from the command line and a --config file."""
from __future__ import annotations

import itertools
import json
import shutil

import pytest
import typer
from typer.testing import CliRunner

from shard_factory import make_shards, write_tar
from shards.dataset import TrainWindows
from shards.loader import make_loader
from shards.mix import DataRoot, open_shard_sets, parse_data_root
from shards.tar import iter_tar_samples
from shards.windows import WindowSpec
from trainer.settings import TrainSettings, typer_command

SPEC = WindowSpec(num_frames=20, num_prev_frames=4, windows_per_clip=1)


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """"ravdess" and "hdtf": same encoders, keys told apart by a prefix."""
    base = tmp_path_factory.mktemp("mix")
    ravdess = base / "ravdess"
    make_shards(ravdess, {"train": 12, "val": 2}, frames=30, dim_w=8, audio_dim=6, seed=1, clips_per_shard=3)
    hdtf = base / "hdtf"
    shutil.copytree(ravdess, hdtf)
    for tar in sorted(hdtf.glob("*.tar")):  # the same clips under other keys
        write_tar(tar, [(f"hdtf{k}", m) for k, m in iter_tar_samples(tar, read=None)])
    return ravdess, hdtf


@pytest.mark.parametrize("text,expected", [
    ("data/ravdess", DataRoot("data/ravdess")),
    ("data/ravdess:0.3", DataRoot("data/ravdess", 0.3)),
    ("s3://bucket/hdtf:2", DataRoot("s3://bucket/hdtf", 2.0)),
    ("http://host:8000", DataRoot("http://host:8000")),  # a port, not a weight
    ("http://host:8000/shards", DataRoot("http://host:8000/shards")),
    ("http://host:8000/shards:.5", DataRoot("http://host:8000/shards", 0.5)),
    ("s3://bucket/:1e-1", DataRoot("s3://bucket/", 0.1)),
])
def test_data_root_syntax(text, expected):
    assert parse_data_root(text) == expected


def test_bad_weights_are_refused(two_sets):
    ravdess, hdtf = two_sets
    with pytest.raises(ValueError, match="must be > 0"):
        parse_data_root(f"{ravdess}:0")
    with pytest.raises(ValueError, match="every --data-root a weight"):
        open_shard_sets([f"{ravdess}:1", str(hdtf)])


def test_the_stream_draws_clips_by_weight(two_sets):
    sets = open_shard_sets([f"{two_sets[0]}:0.3", f"{two_sets[1]}:0.7"])
    urls, mix = sets.loader_kwargs("train")
    assert mix["weights"] == [0.3, 0.7] and mix["sources"] == [0] * 4 + [1] * 4
    windows = list(itertools.islice(iter(TrainWindows(urls, SPEC, seed=0, shuffle_buffer=8, **mix)), 2000))
    share = sum(w["key"].startswith("hdtf") for w in windows) / len(windows)
    assert share == pytest.approx(0.7, abs=0.04)
    # Other weights move the share; without weights the sets are one folder (by clip count: 1:1 here).
    urls, mix = open_shard_sets([f"{two_sets[0]}:3", f"{two_sets[1]}:1"]).loader_kwargs("train")
    windows = list(itertools.islice(iter(TrainWindows(urls, SPEC, seed=0, **mix)), 2000))
    assert sum(w["key"].startswith("hdtf") for w in windows) / len(windows) == pytest.approx(0.25, abs=0.04)
    urls, mix = open_shard_sets([str(p) for p in two_sets]).loader_kwargs("train")
    assert mix == {} and len(urls) == 8


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume_holds_with_mixing(two_sets, num_workers):
    urls, mix = open_shard_sets([f"{two_sets[0]}:0.3", f"{two_sets[1]}:0.7"]).loader_kwargs("train")
    loader = make_loader(urls, SPEC, batch_size=3, num_workers=num_workers, seed=2, shuffle_buffer=4, **mix)
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    tail = [next(it) for _ in range(6)]
    del it
    assert state["weights"] == [0.3, 0.7]
    resumed = make_loader(urls, SPEC, batch_size=3, num_workers=num_workers, seed=2, shuffle_buffer=4,
                          state=state, **mix)
    again = list(itertools.islice(iter(resumed), 6))
    assert [b["key"] for b in again] == [b["key"] for b in tail]
    assert all(a["start"].tolist() == b["start"].tolist() for a, b in zip(again, tail))
    # Another mix is another stream: its saved position is refused.
    other = dict(mix, weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="weights"):
        make_loader(urls, SPEC, batch_size=3, num_workers=num_workers, seed=2, shuffle_buffer=4, state=state, **other)


def test_sets_from_other_encoders_are_refused_naming_the_difference(two_sets, tmp_path):
    other = tmp_path / "other"
    make_shards(other, {"train": 3, "val": 1}, frames=30, dim_w=8, audio_dim=7, seed=1, clips_per_shard=3,
                motion_fingerprint="stage1-run-b")
    with pytest.raises(ValueError) as err:
        open_shard_sets([f"{two_sets[0]}:1", f"{other}:1"])
    text = str(err.value)
    assert "motion encoder fingerprint" in text and "'stage1-run-b'" in text and "'synthetic-motion-seed-0'" in text
    assert "audio features" in text and str(other) in text and str(two_sets[0]) in text
    assert "emotion" not in text and "crop size" not in text, "only what differs is named"


def _invoke(args):
    seen = []
    app = typer.Typer()
    app.command()(typer_command(TrainSettings, seen.append, "train", "test"))
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return seen[0]


def test_data_root_repeats_on_the_command_line_and_lists_in_a_config_file(tmp_path):
    assert _invoke([]).data_root == ["data/shards"]
    assert _invoke(["--data-root", "a:0.3", "--data-root", "b:0.7"]).data_root == ["a:0.3", "b:0.7"]
    config = tmp_path / "run.yaml"
    config.write_text("data-root:\n  - s3://bucket/ravdess:0.3\n  - s3://bucket/hdtf:0.7\n")
    assert _invoke(["--config", config]).data_root == ["s3://bucket/ravdess:0.3", "s3://bucket/hdtf:0.7"]
    config.write_text("data-root: data/one\n")
    assert _invoke(["--config", config]).data_root == ["data/one"]
    assert _invoke(["--config", config, "--data-root", "data/two"]).data_root == ["data/two"]
    assert TrainSettings(data_root="data/x").data_root == ["data/x"]
