"""The `fedgen` command line's table of subcommands (simulations.cli)."""

from __future__ import annotations

import pytest

from simulations import cli
from simulations.bench import BENCHMARKS
from simulations.cli import bench


def test_the_bench_help_names_every_benchmark():
    assert bench.NAMES == tuple(BENCHMARKS)


def test_every_subcommand_has_its_help_arguments_and_run(capsys):
    for name, command in cli.COMMANDS.items():
        assert command.HELP and callable(command.add_arguments) and callable(command.run), name
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in cli.COMMANDS)


def test_a_config_error_exits_2(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("fedgen: config file not found")
