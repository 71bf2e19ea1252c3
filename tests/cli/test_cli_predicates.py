"""The trust review's reproductions through the CLI: restrictive rules that could not tell.

Each command here was allowed on the release before three-valued predicates;
each must now be refused (exit 3) or need approval (exit 4).
"""

from __future__ import annotations

import json

import pytest

from .cli_support import CLI, grant

STEP_UP = """step_up:
  - tools: [billing/refund]
    where: {amount: {">": 100}}
    reason: large refunds
"""
DENY = """deny:
  - tools: ["fs/*"]
    where: {path: {within: /etc}}
"""


@pytest.fixture
def bot(cli: CLI) -> CLI:
    """org:acme grants agent:bot billing/refund, fs/* and hosts/*; the policy has the rules."""
    cli.ok("init", "--org", "org:acme")
    cli.ok("identity", "new", "agent:bot")
    policy = cli.root / "agentguard.yaml"
    text = policy.read_text().replace("step_up: []\n", STEP_UP).replace("deny: []\n", DENY)
    policy.write_text(text)
    grant(
        cli,
        "--from", "org:acme", "--to", "agent:bot",
        "--tool", "billing/refund", "--tool", "fs/*", "--ttl", "1h",
        out="d.dlg",
    )  # fmt: skip
    return cli


@pytest.mark.parametrize("amount", ["5000", " 5000", "5e3", ["5000"], [5000], None])
def test_step_up_applies_to_amounts_it_cannot_compare(bot: CLI, amount: object) -> None:
    """`amount > 100` cannot be told false for a string, an array or a missing amount."""
    args = {} if amount is None else {"amount": amount}
    result = bot("check", "d.dlg", "billing/refund", json.dumps(args), "--as", "agent:bot")
    assert result.exit_code == 4, (result.stdout, result.stderr)


def test_step_up_steps_aside_for_a_small_number(bot: CLI) -> None:
    """A definite `5 > 100 is false` is the only way past the step-up rule."""
    result = bot("check", "d.dlg", "billing/refund", '{"amount": 5}', "--as", "agent:bot")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    "path", ["/../etc/shadow", "//etc/./shadow", ["/etc/shadow"], "/etc/shadow\u0000", "etc/x"]
)
def test_within_deny_applies_to_paths_it_cannot_place_outside(bot: CLI, path: object) -> None:
    """`/..` is `/`; arrays, NUL bytes and relative paths cannot be proven outside /etc."""
    args = json.dumps({"path": path})
    result = bot("check", "d.dlg", "fs/read", args, "--as", "agent:bot", "--json")
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["reason"] == "policy_denied"


def test_within_deny_lets_other_absolute_paths_through(bot: CLI) -> None:
    """A path that normalises outside /etc is definitely not within it."""
    args = json.dumps({"path": "/srv/../home/x"})
    assert bot("check", "d.dlg", "fs/read", args, "--as", "agent:bot").exit_code == 0


def test_an_approval_rule_is_not_dropped_by_a_broader_free_rule(cli: CLI) -> None:
    """`hosts/*` free plus `hosts/quarantine` with approval: quarantine still needs approval."""
    cli.ok("init", "--org", "org:acme")
    cli.ok("identity", "new", "user:alice")
    result = grant(
        cli,
        "--from", "org:acme", "--to", "user:alice",
        "--tool", "hosts/*", "--tool", "hosts/quarantine", "--approval", "hosts/quarantine",
        "--ttl", "1h",
        out="alice.dlg",
    )  # fmt: skip
    assert "warning: rule 1 (hosts/quarantine [approval]) lies inside rule 0" in result.stderr
    assert "still need approval" in result.stderr
    quarantine = cli("check", "alice.dlg", "hosts/quarantine", "{}", "--as", "user:alice")
    assert quarantine.exit_code == 4, quarantine.stderr
    assert cli("check", "alice.dlg", "hosts/list", "{}", "--as", "user:alice").exit_code == 0
