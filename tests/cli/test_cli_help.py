"""Every command's help, and a group run without its subcommand (issue 18, item 5)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from agentguard.cli import app

from .cli_support import CLI, one_line_error


def _paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if hasattr(command, "list_commands"):
        ctx = command.context_class(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            yield from _paths(sub, (*path, name))


def _groups(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if hasattr(command, "list_commands"):
        yield path
        ctx = command.context_class(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            yield from _groups(sub, (*path, name))


def test_no_help_text_shows_a_type_for_a_flag(cli: CLI) -> None:
    """No command's help labels a flag (--json, --help, --force) with a value type like <bool>."""
    paths = list(_paths(typer.main.get_command(app)))
    assert ("grants", "list") in paths
    assert ("audit", "verify") in paths
    for path in paths:
        result = cli.ok(*path, "--help")
        assert "Usage" in result.stdout, path
        assert "<bool>" not in result.stdout, (path, result.stdout)
        assert "--help" in result.stdout


def test_a_group_without_its_subcommand_says_what_is_missing(cli: CLI) -> None:
    """'agentguard grants' (and every other group) exits 2 with a message naming its commands."""
    groups = [g for g in _groups(typer.main.get_command(app)) if g]
    assert ("grants",) in groups
    assert ("audit",) in groups
    for path in groups:
        result = cli(*path)
        assert result.exit_code == 2, path
        line = one_line_error(result, "agentguard " + " ".join(path), "--help")
        assert "error: (see" not in line
        assert "missing command" in line
    grants = one_line_error(cli("grants"), "list")
    assert "list" in grants
