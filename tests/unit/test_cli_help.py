"""--help teaches every command, and the README names every command (kept in step)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from harden.cli import COMMANDS, cli

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    # a sentence of explanation, not just the option list
    assert len(result.output.split("Options:")[0].strip().splitlines()) >= 3


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_readme_names_every_command(name: str) -> None:
    assert re.search(rf"harden {name}\b", README), f"README.md does not mention `harden {name}`"


def test_top_level_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
