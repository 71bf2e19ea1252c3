"""Read-only commands write nothing: no key, no directory, no database (issue 13, item 9).

Each command runs against a real home; the home's file list, sizes and
modification times are compared before and after, also with the guard's key gone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .cli_support import CLI, add_approver, one_line_error

Snapshot = dict[str, tuple[int, int]]


def _snapshot(root: Path) -> Snapshot:
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _read_only(request_id: str) -> list[tuple[str, ...]]:
    return [
        ("audit", "verify"),
        ("audit", "tail"),
        ("audit", "export"),
        ("inspect", "sub.dlg"),
        ("grants", "list"),
        ("approvals", "list", "--all"),
        ("approvals", "show", request_id),
        ("policy", "validate"),
    ]


@pytest.fixture
def used(scenario: CLI) -> str:
    """The scenario home with audit records and one approval request; returns its id."""
    assert scenario("check", "sub.dlg", "tickets/read").exit_code == 0
    add_approver(scenario, "user:carol")  # someone who may answer it
    asked = scenario("check", "bot.dlg", "billing/refund", '{"amount": 5}', "--request-approval")
    assert asked.exit_code == 4, asked.stderr
    found = re.search(r"apr_[A-Za-z0-9_-]+", asked.stdout + asked.stderr)
    assert found is not None
    return found.group(0)


def test_read_only_commands_change_nothing_in_the_home(scenario: CLI, used: str) -> None:
    """Every read-only command succeeds and leaves every file as it was."""
    before = _snapshot(scenario.root)
    for command in _read_only(used):
        result = scenario(*command)
        assert result.exit_code == 0, (command, result.stdout, result.stderr)
        assert _snapshot(scenario.root) == before, command


def test_a_missing_guard_key_is_an_error_not_a_new_key(scenario: CLI, used: str) -> None:
    """With the guard key gone, nothing makes a new one; 'audit verify' names the missing file."""
    key = scenario.home / "keys" / "service_agentguard.key"
    key.unlink()
    before = _snapshot(scenario.root)
    for command in _read_only(used):
        result = scenario(*command)
        if command == ("audit", "verify"):
            assert result.exit_code == 1
            line = one_line_error(result, str(key), "missing")
            assert "NOT intact" not in line
        else:
            assert result.exit_code == 0, (command, result.stdout, result.stderr)
        assert _snapshot(scenario.root) == before, command
    assert not key.exists()


def test_read_only_commands_create_no_home(cli: CLI) -> None:
    """Without a state directory, read-only commands refuse (inspect runs in memory), make none."""
    cli.ok("init", "--org", "org:acme")
    cli.ok("identity", "new", "agent:bot")
    cli.ok("grant", "--from", "org:acme", "--to", "agent:bot", "--tool", "a/b", "--ttl", "1h",
           "-o", "bot.dlg")  # fmt: skip
    elsewhere = cli.root / "not-made"
    for command in _read_only("apr_x"):
        command = ("inspect", "bot.dlg") if command[0] == "inspect" else command
        result = (
            cli(*command, "--home", str(elsewhere)) if command[0] != "policy" else cli(*command)
        )
        assert result.exit_code in (0, 1, 3), (command, result.stderr)
        assert not elsewhere.exists(), command


def test_a_missing_database_is_an_error_not_a_new_one(scenario: CLI) -> None:
    """A home whose state.db is gone: the audit commands say so and make no new database."""
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (scenario.home / name).unlink(missing_ok=True)
    before = _snapshot(scenario.root)
    result = scenario("audit", "verify")
    assert result.exit_code == 1
    one_line_error(result, "state.db")
    assert _snapshot(scenario.root) == before
