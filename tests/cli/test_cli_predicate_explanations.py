"""`agentguard check` says which argument a predicate refused; `--where` errors point to the
predicate reference; the new operators work from the command line."""

from __future__ import annotations

import json

import pytest

from .cli_support import CLI, grant

WHERE = (
    'billing/refund={amount: {"<=": 100}, password: {like: "ok*"},'
    ' city: {"==": Paris, ignore: [case, whitespace]}}'
)


@pytest.fixture
def bot(cli: CLI) -> CLI:
    cli.ok("init", "--org", "org:acme")
    cli.ok("identity", "new", "agent:bot")
    grant(
        cli,
        "--from", "org:acme", "--to", "agent:bot",
        "--tool", "billing/refund", "--where", WHERE, "--ttl", "1h",
        out="d.dlg",
    )  # fmt: skip
    return cli


def check(cli: CLI, args: dict[str, object]) -> tuple[int, str]:
    result = cli("check", "d.dlg", "billing/refund", json.dumps(args), "--as", "agent:bot")
    return result.exit_code, result.stdout + result.stderr


def test_check_names_the_failing_argument_value_and_operator(bot: CLI) -> None:
    code, text = check(bot, {"amount": 5000, "password": "ok-1", "city": "Paris"})
    assert code == 3
    assert "argument amount = 5000 fails <= 100" in " ".join(text.split())


def test_check_never_shows_a_redacted_value(bot: CLI) -> None:
    """`password` is in the default redact list: named, never shown."""
    code, text = check(bot, {"amount": 5, "password": "hunter2x", "city": "Paris"})
    assert code == 3
    assert "argument password = [redacted] fails like" in " ".join(text.split())
    assert "hunter2x" not in text


def test_case_and_whitespace_variants_pass_from_the_cli(bot: CLI) -> None:
    code, text = check(bot, {"amount": 5, "password": "ok-1", "city": " PARIS"})
    assert code == 0, text


@pytest.mark.parametrize(
    "where", ['billing/refund={amount: {"=<": 100}}', "billing/refund={amount: [unclosed"]
)
def test_where_errors_point_to_the_predicate_reference(cli: CLI, where: str) -> None:
    cli.ok("init", "--org", "org:acme")
    cli.ok("identity", "new", "agent:bot")
    result = cli(
        "grant", "--from", "org:acme", "--to", "agent:bot", "--tool", "billing/refund",
        "--where", where, "--ttl", "1h", "-o", "x.dlg",
    )  # fmt: skip
    assert result.exit_code != 0
    assert "README, 'Argument predicates'" in " ".join((result.stdout + result.stderr).split())
