"""floatctl: every stage is reachable from the one console script."""
from typer.testing import CliRunner

from cli import app


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("shards", "inspect", "train", "train-motion", "sample", "export", "app"):
        assert command in result.output


def test_unknown_command_fails():
    result = CliRunner().invoke(app, ["frobnicate"])
    assert result.exit_code != 0
