"""`python -m pytest_steer COMMAND`: one entry for the command-line tools."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_steer.__main__ import COMMANDS, main


def test_every_command_has_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        assert f"python -m pytest_steer {command}" in capsys.readouterr().out


def test_no_command_or_an_unknown_one_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "merge" in capsys.readouterr().out
    assert main(["merg"]) == 2
    assert "unknown command 'merg'" in capsys.readouterr().err


def test_the_module_runs_as_a_program() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest_steer", "html", "no-such.json", "-o", "x.html"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "no-such.json" in done.stderr
