"""``inspect`` and ``grants list`` show the policy's ``budgets:`` that count a chain's calls.

A real home made by the CLI, a policy with three budgets (per chain, per holder,
global), real calls charged through a guard on that home; the views read the same
counters the guard charges (nothing is charged by showing them).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.guard import Guard
from agentguard.keys import Keyring
from tests.cli.cli_support import CLI, grant

POLICY_BUDGETS = """
budgets:
  - tools: [billing/refund]
    window: 1d
    calls: 3
    per: chain
  - tools: billing/*
    window: 1h
    sum: {amount: 100}
    per: holder
  - tools: [tickets/*]
    window: 1d
    calls: 5
    per: global
"""


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CLI:
    """org:acme -> agent:bot (bot.dlg) -> agent:sub (sub.dlg), and the policy's budgets."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    monkeypatch.delenv("AGENTGUARD_POLICY", raising=False)
    monkeypatch.setenv("COLUMNS", "240")
    runner = CLI(tmp_path)
    runner.ok("init", "--org", "org:acme")
    runner.ok("identity", "new", "agent:bot")
    runner.ok("identity", "new", "agent:sub")
    grant(
        runner,
        "--from", "org:acme", "--to", "agent:bot", "--tool", "billing/refund",
        "--tool", "tickets/read", "--ttl", "8h",
        out="bot.dlg",
    )  # fmt: skip
    grant(
        runner,
        "--from", "agent:bot", "--to", "agent:sub", "--tool", "billing/refund", "--ttl", "1h",
        out="sub.dlg", parent="bot.dlg",
    )  # fmt: skip
    with (tmp_path / "agentguard.yaml").open("a") as policy:
        policy.write(POLICY_BUDGETS)
    return runner


def refund(cli: CLI, amount: int, chain: str, holder: str) -> str:
    """One real refund through a guard on the CLI's home."""
    guard = Guard(policy=cli.root / "agentguard.yaml", home=cli.home)
    try:
        delegation = Delegation.parse((cli.root / chain).read_text())
        identity = Keyring(cli.home / "keys").identity(holder)
        guard.call(delegation, "billing/refund", {"amount": amount}, lambda amount: amount,
                   holder=identity)  # fmt: skip
        return "ran"
    except DeniedError as exc:
        return str(exc.reason)
    finally:
        guard.close()


def used(view: dict[str, Any]) -> tuple[Any, ...]:
    """(label, per, calls used/limit or None, amount used/limit or None)."""
    calls = view.get("calls")
    amount = view.get("sum", {}).get("amount")
    return (
        view["budget"],
        view["per"],
        None if calls is None else (calls["used"], calls["limit"]),
        None if amount is None else (amount["used"], amount["limit"]),
    )


def test_inspect_shows_the_policy_budgets_a_chain_is_counted_by(cli: CLI) -> None:
    doc = json.loads(cli.ok("inspect", "bot.dlg", "--json").stdout)
    assert [used(v) for v in doc["policy_budgets"]] == [
        ("policy budget 0", "chain", (0, 3), None),
        ("policy budget 1", "holder", None, ("0", "100")),
        ("policy budget 2", "global", (0, 5), None),
    ]
    assert refund(cli, 30, "bot.dlg", "agent:bot") == "ran"
    assert refund(cli, 20, "sub.dlg", "agent:sub") == "ran"
    # The bot's view: the chain's count has both calls (the sub-agent's is below the same
    # root), the holder's amount only its own 30; tickets/* has had none.
    doc = json.loads(cli.ok("inspect", "bot.dlg", "--json").stdout)
    assert [used(v) for v in doc["policy_budgets"]] == [
        ("policy budget 0", "chain", (2, 3), None),
        ("policy budget 1", "holder", None, ("30", "100")),
        ("policy budget 2", "global", (0, 5), None),
    ]
    assert doc["policy_budgets"][1]["tools"] == ["billing/*"]
    sub = json.loads(cli.ok("inspect", "sub.dlg", "--json").stdout)
    assert [used(v) for v in sub["policy_budgets"]][:2] == [
        ("policy budget 0", "chain", (2, 3), None),
        ("policy budget 1", "holder", None, ("20", "100")),
    ]
    text = cli.ok("inspect", "bot.dlg").stdout
    assert "policy budgets (this chain's counts)" in text
    assert "policy budget 0 (billing/refund, per chain): 2/3 calls used (1 left), resets" in text
    assert "policy budget 1 (billing/*, per holder): 30/100 amount used (70 left)" in text
    # Showing charges nothing: one more call fits the chain's 3, the next does not.
    assert refund(cli, 10, "bot.dlg", "agent:bot") == "ran"
    assert refund(cli, 10, "bot.dlg", "agent:bot") == "budget_exhausted"
    doc = json.loads(cli.ok("inspect", "bot.dlg", "--json").stdout)
    assert used(doc["policy_budgets"][0]) == ("policy budget 0", "chain", (3, 3), None)
    assert "3/3 calls used (0 left)" in cli.ok("inspect", "bot.dlg").stdout


def test_grants_list_shows_them_per_link(cli: CLI) -> None:
    assert refund(cli, 45, "sub.dlg", "agent:sub") == "ran"
    rows = json.loads(cli.ok("grants", "list", "--json").stdout)
    by_subject = {row["subject"]: row for row in rows}
    assert by_subject["agent:bot"]["budgets"] == []
    bot = [used(v) for v in by_subject["agent:bot"]["policy_budgets"]]
    sub = [used(v) for v in by_subject["agent:sub"]["policy_budgets"]]
    assert bot[:2] == [
        ("policy budget 0", "chain", (1, 3), None),
        ("policy budget 1", "holder", None, ("0", "100")),
    ]
    assert sub[:2] == [
        ("policy budget 0", "chain", (1, 3), None),
        ("policy budget 1", "holder", None, ("45", "100")),
    ]
    table = cli.ok("grants", "list").stdout
    assert "budget (this window)" in table
    assert "1/3 calls used (2 left)" in table
    assert "45/100 amount used (55 left)" in table


def test_no_policy_budgets_no_section(tmp_path: Path, cli: CLI) -> None:
    policy = tmp_path / "agentguard.yaml"
    policy.write_text(policy.read_text().replace(POLICY_BUDGETS, ""))
    doc = json.loads(cli.ok("inspect", "bot.dlg", "--json").stdout)
    assert doc["policy_budgets"] == []
    assert "policy budget" not in cli.ok("inspect", "bot.dlg").stdout
    table = cli.ok("grants", "list").stdout
    assert "budget (this window)" not in table
    assert all(
        row["policy_budgets"] == [] for row in json.loads(cli.ok("grants", "list", "--json").stdout)
    )


def test_unreadable_counters_say_cannot_tell(tmp_path: Path, cli: CLI) -> None:
    """A damaged counter row cannot be trusted to be low: the views say they cannot tell."""
    assert refund(cli, 5, "bot.dlg", "agent:bot") == "ran"
    (database,) = (tmp_path / ".agentguard").glob("*.db")
    with sqlite3.connect(database) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        (table,) = [t for t in tables if "budget" in t]
        columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
        (sums,) = [c for c in columns if "sum" in c]
        db.execute(f"UPDATE {table} SET {sums} = 'not json'")  # noqa: S608 - test's own table
    doc = json.loads(cli.ok("inspect", "bot.dlg", "--json").stdout)
    assert doc["policy_budgets"] is None
    assert "cannot tell what the policy's budgets have used" in cli.ok("inspect", "bot.dlg").stdout
    rows = json.loads(cli.ok("grants", "list", "--json").stdout)
    assert all(row["policy_budgets"] is None for row in rows)
    assert "cannot tell" in cli.ok("grants", "list").stdout
