"""Budgets on the command line: ``grant --budget``, ``inspect`` and ``grants list`` show them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.guard import Guard
from agentguard.keys import Keyring
from tests.cli.cli_support import CLI, grant

BUDGET = "billing/refund={window: 1d, calls: 2, sum: {amount: 100}}"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CLI:
    """A CLI in ``tmp_path`` with an org, agent:bot and agent:sub, and a budgeted grant."""
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
        "--tool", "billing/read", "--budget", BUDGET, "--ttl", "8h",
        out="bot.dlg",
    )  # fmt: skip
    return runner


def refund(cli: CLI, amount: int, chain: str = "bot.dlg", holder: str = "agent:bot") -> str:
    """One real (not dry-run) refund through a guard on the CLI's home."""
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


def test_grant_signs_the_budget_and_inspect_shows_its_use(cli: CLI) -> None:
    shown = cli.ok("inspect", "bot.dlg").stdout
    assert "billing/refund [budget 2 calls, amount <= 100 per 1d]" in shown
    assert "budget 0/2 calls used (2 left), 0/100 amount used (100 left), resets" in shown
    assert refund(cli, 70) == "ran"
    doc = json.loads(cli.ok("inspect", "bot.dlg", "--json").stdout)
    (rule, read) = doc["links"][0]["rules"]
    assert rule["budget"] == {"window": 86400, "calls": 2, "sum": {"amount": "100"}}
    assert rule["budget_used"]["calls"] == {"used": 1, "limit": 2}
    assert rule["budget_used"]["sum"] == {"amount": {"used": "70", "limit": "100"}}
    assert "budget_used" not in read
    assert (
        "1/2 calls used (1 left), 70/100 amount used (30 left)"
        in cli.ok("inspect", "bot.dlg").stdout
    )
    assert refund(cli, 31) == "budget_exhausted"


def test_grants_list_shows_what_is_used_and_left(cli: CLI) -> None:
    assert refund(cli, 40) == "ran"
    table = cli.ok("grants", "list").stdout
    assert "budget (this window)" in table
    assert "rule 0:" in table
    assert "1/2 calls used (1 left)" in table
    assert "40/100 amount used (60 left)" in table
    (row,) = json.loads(cli.ok("grants", "list", "--json").stdout)
    (budget,) = row["budgets"]
    assert (budget["rule"], budget["calls"]["used"], budget["sum"]["amount"]["used"]) == (
        0,
        1,
        "40",
    )


def test_a_dry_run_check_leaves_the_budget_alone(cli: CLI) -> None:
    for _ in range(3):
        done = cli("check", "bot.dlg", "billing/refund", '{"amount": 100}', "--as", "agent:bot")
        assert done.exit_code == 0, done.stderr
    assert "0/2 calls used (2 left)" in cli.ok("inspect", "bot.dlg").stdout


@pytest.mark.parametrize(
    ("budget", "says"),
    [
        ("billing/refund", "PATTERN=BUDGET"),
        ("billing/refund=", "PATTERN=BUDGET"),
        ("=calls: 1", "PATTERN=BUDGET"),
        ("tickets/*={window: 1d, calls: 1}", "not one of this command's --tool"),
        ("billing/refund={window: 1d, calls: 0}", "calls"),
        ("billing/refund={window: 1d, calls: -3}", "calls"),
        ("billing/refund={window: 0s, calls: 1}", "window"),
        ("billing/refund={window: 1d, sum: {amount: NaN}}", "finite"),
        ("billing/refund={window: 1d, sum: {amount: .nan}}", "finite"),
        ("billing/refund={window: 1d, sum: {amount: -5}}", "positive"),
        ("billing/refund={window: 1d, sum: {amount: 1e400}}", "above"),
        ("billing/refund={window: 1d, calls: 1, per: holder}", "unknown key"),
        ("billing/refund={window: 1d", "cannot parse"),
        ("billing/refund=!!python/object:os.system {}", "cannot parse"),
        ("billing/refund=[1, 2]", "mapping"),
    ],
)
def test_hostile_budget_options_are_usage_errors(cli: CLI, budget: str, says: str) -> None:
    result = cli(
        "grant", "--from", "org:acme", "--to", "agent:bot", "--tool", "billing/refund",
        "--budget", budget, "--ttl", "1h",
    )  # fmt: skip
    assert result.exit_code == 2
    assert says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_two_budgets_for_one_pattern_are_refused(cli: CLI) -> None:
    result = cli(
        "grant", "--from", "org:acme", "--to", "agent:bot", "--tool", "billing/refund",
        "--budget", BUDGET, "--budget", BUDGET, "--ttl", "1h",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "one budget per pattern" in result.stderr


def test_issuance_warns_of_a_child_budget_no_tighter_than_its_parents(cli: CLI) -> None:
    wide = cli(
        "grant", "--from", "agent:bot", "--to", "agent:sub", "--tool", "billing/refund",
        "--budget", "billing/refund={window: 1h, calls: 5, sum: {amount: 50}}",
        "--ttl", "1h", "--parent", "bot.dlg", "-o", "sub.dlg",
    )  # fmt: skip
    assert wide.exit_code == 0, wide.stderr
    assert "rule 0's budget (5 calls, amount <= 50 per 1h) can never take effect on calls" in (
        wide.stderr
    )
    assert "on sum of amount" not in wide.stderr  # 50 is tighter than 100: it binds
    # The child's budget still binds its amounts; the parent's binds its calls.
    assert refund(cli, 50, "sub.dlg", "agent:sub") == "ran"
    assert refund(cli, 1, "sub.dlg", "agent:sub") == "budget_exhausted"
    assert refund(cli, 50) == "ran"
    assert refund(cli, 0) == "budget_exhausted"  # the parent's 2 calls are spent


def test_a_tighter_child_budget_is_not_warned_about(cli: CLI) -> None:
    narrow = cli(
        "grant", "--from", "agent:bot", "--to", "agent:sub", "--tool", "billing/refund",
        "--budget", "billing/refund={window: 1h, calls: 1}",
        "--ttl", "1h", "--parent", "bot.dlg", "-o", "sub.dlg",
    )  # fmt: skip
    assert narrow.exit_code == 0, narrow.stderr
    assert "never take effect" not in narrow.stderr


def test_grant_help_documents_the_budget_spelling(cli: CLI) -> None:
    text = cli.ok("grant", "--help").stdout
    assert "--budget" in text
    assert "PATTERN=BUDGET" in text


def test_a_malformed_budget_names_its_option(cli: CLI) -> None:
    result = cli(
        "grant", "--from", "org:acme", "--to", "agent:bot", "--tool", "billing/refund",
        "--budget", "billing/refund={window: 1d}", "--ttl", "1h",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--budget" in result.stderr


def test_db_status_counts_budget_counters(pg_url: str, tmp_path: Path) -> None:
    """``agentguard db status`` lists the budget counters with the other rows."""
    from agentguard.budgets import Budget, charge_of
    from agentguard.store.postgres import PostgresStore
    from tests.test_store_postgres_cli import agentguard

    store = PostgresStore(pg_url)
    try:
        hourly = Budget(3600, 5)
        store.budget_charge([charge_of("a", "a", hourly, {}), charge_of("b", "b", hourly, {})], 0)
    finally:
        store.close()
    shown = agentguard(tmp_path, "db", "status", "--json", url=pg_url)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["counts"]["budget counters"] == 2
    text = agentguard(tmp_path, "db", "status", url=pg_url)
    assert "budget counters: 2" in text.stdout


def test_policy_validate_warns_that_holder_budgets_count_sub_agents_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``per: holder`` budget where chains may be delegated further gets a note on stderr;
    chains of one link cannot be, and ``per: chain`` budgets get none."""
    import yaml

    from tests.cli.cli_support import CLI

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    runner = CLI(tmp_path)
    entry = {"tools": ["search/*"], "window": "1h", "calls": 20}
    cases: dict[str, tuple[dict[str, Any], bool]] = {
        "holder.yaml": ({"budgets": [{**entry, "per": "holder"}]}, True),
        "chain.yaml": ({"budgets": [{**entry, "per": "chain"}]}, False),
        "flat.yaml": (
            {"budgets": [{**entry, "per": "holder"}], "limits": {"max_chain_length": 1}},
            False,
        ),
    }
    for name, (doc, warned) in cases.items():
        (tmp_path / name).write_text(yaml.safe_dump({"version": 1, **doc}))
        result = runner.ok("policy", "validate", name)
        said = "budgets[0]: per: holder counts each principal apart" in result.stderr
        assert said is warned, (name, result.stderr)
        assert "valid" in result.stdout
