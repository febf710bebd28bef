"""The command line starts, prints help and its version."""

import subprocess
import sys

from typer.testing import CliRunner

import ramen_core
from ramen_cli.app import _register_commands, app

runner = CliRunner()


def test_help_lists_commands():
    _register_commands()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_version_matches_package():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert ramen_core.__version__ in result.output


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-c", "from ramen_cli.app import main; main()", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("ramen ")
