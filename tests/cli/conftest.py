"""Fixtures for the CLI tests: a fresh working directory and state home per test.

``cli`` invokes the Typer app in-process (exceptions are not caught, so a
traceback would fail the test); ``scenario`` builds the org -> user -> agent ->
sub-agent chain through the CLI itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .cli_support import CLI, grant


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CLI:
    """A CLI runner in ``tmp_path`` with ``AGENTGUARD_HOME`` pointing inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    monkeypatch.delenv("AGENTGUARD_POLICY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return CLI(tmp_path)


@pytest.fixture
def scenario(cli: CLI) -> CLI:
    """org:acme -> user:alice -> agent:bot -> agent:sub, written to alice/bot/sub.dlg.

    Alice may use ``tickets/*`` and ``billing/refund`` with amount <= 100, the
    refund needing approval; the bot gets both for 8 h; the sub-agent only
    ``tickets/read`` for 1 h.
    """
    cli.ok("init", "--org", "org:acme")
    for principal in ("user:alice", "agent:bot", "agent:sub"):
        cli.ok("identity", "new", principal)
    grant(
        cli,
        "--from", "org:acme", "--to", "user:alice",
        "--tool", "tickets/*", "--tool", "billing/refund",
        "--where", 'billing/refund={"amount": {"<=": 100}}',
        "--approval", "billing/refund",
        "--ttl", "2d", "--purpose", "support shift", "--on-behalf-of", "user:alice",
        out="alice.dlg",
    )  # fmt: skip
    grant(
        cli,
        "--from", "user:alice", "--to", "agent:bot",
        "--tool", "tickets/*", "--tool", "billing/refund", "--ttl", "8h",
        out="bot.dlg", parent="alice.dlg",
    )  # fmt: skip
    grant(
        cli,
        "--from", "agent:bot", "--to", "agent:sub", "--tool", "tickets/read", "--ttl", "1h",
        out="sub.dlg", parent="bot.dlg",
    )  # fmt: skip
    return cli
