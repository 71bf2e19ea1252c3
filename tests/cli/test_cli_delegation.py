"""init, identity, grant, inspect, check and revoke through the CLI."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from agentguard.policy import load_policy

from .cli_support import CLI, grant, one_line_error


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_keys_trust_entry_and_a_valid_template(cli: CLI) -> None:
    cli.ok("init", "--org", "org:acme")
    keys = cli.home / "keys"
    assert _mode(keys / "org_acme.key") == 0o600
    assert _mode(keys / "service_agentguard.key") == 0o600
    assert (cli.home / "state.db").is_file()
    text = (cli.root / "agentguard.yaml").read_text()
    assert text.startswith("#")  # commented template
    policy = load_policy(cli.root / "agentguard.yaml")
    assert [r.id for r in policy.trusted_roots] == ["org:acme"]
    assert policy.trusted_roots[0].key_file == ".agentguard/keys/org_acme.pub"
    assert policy.limits.max_root_ttl == 7 * 86400
    assert policy.limits.max_link_ttl == 86400
    assert policy.limits.max_chain_length == 5
    assert policy.approval.channel == "queue"
    assert policy.guard_id == "service:agentguard"
    assert "valid" in cli.ok("policy", "validate").stdout


def test_init_refuses_to_overwrite_without_force_and_keeps_keys_with_it(cli: CLI) -> None:
    cli.ok("init", "--org", "org:acme")
    before = (cli.home / "keys" / "org_acme.key").read_bytes()
    one_line_error(cli("init", "--org", "org:acme"), "exists already", "--force")
    forced = cli.ok("init", "--org", "org:acme", "--force")
    assert "kept existing organisation key" in forced.stdout
    assert (cli.home / "keys" / "org_acme.key").read_bytes() == before


def test_identity_new_list_export_import(cli: CLI, tmp_path: Path) -> None:
    cli.ok("identity", "new", "user:alice")
    assert _mode(cli.home / "keys" / "user_alice.key") == 0o600
    one_line_error(cli("identity", "new", "user:alice"), "already")
    assert "user:alice" in cli.ok("identity", "list").stdout
    public = cli.ok("identity", "export", "user:alice", "--public").stdout
    assert '"d"' not in public
    private = cli.ok("identity", "export", "user:alice")
    assert '"d"' in private.stdout
    assert "PRIVATE" in private.stderr
    (tmp_path / "alice.pub.json").write_text(public)
    other = tmp_path / "elsewhere"
    imported = ("identity", "import", "user:alice", "--public-key", "alice.pub.json")
    cli.ok("--home", str(other), *imported)
    listed = cli.ok("identity", "list", "--home", str(other)).stdout
    assert "user:alice" in listed
    assert "public only" in listed
    # The file names another principal: refused.
    one_line_error(
        cli("identity", "import", "user:bob", "--public-key", "alice.pub.json"), "user:alice"
    )
    # A different key for the same id needs --force.
    cli.ok("identity", "new", "user:carol")
    carol = cli.ok("identity", "export", "user:carol", "--public").stdout
    (tmp_path / "carol.json").write_text(carol.replace("user:carol", "user:alice"))
    args = ("--home", str(other), "identity", "import", "user:alice", "--public-key", "carol.json")
    one_line_error(cli(*args), "different public key")
    cli.ok(*args, "--force")


def test_a_world_readable_private_key_is_refused(cli: CLI) -> None:
    cli.ok("init", "--org", "org:acme")
    cli.ok("identity", "new", "user:alice")
    (cli.home / "keys" / "org_acme.key").chmod(0o644)
    args = ("--from", "org:acme", "--to", "user:alice", "--tool", "a/b", "--ttl", "1h")
    result = cli("grant", *args)
    one_line_error(result, "refusing private key file", "chmod 600")
    assert result.exit_code == 1


def test_the_full_chain_is_written_0600_and_inspected(scenario: CLI) -> None:
    for name in ("alice.dlg", "bot.dlg", "sub.dlg"):
        assert _mode(scenario.root / name) == 0o600
    assert (scenario.root / "sub.dlg").read_text().count("~") == 2
    shown = scenario.ok("inspect", "sub.dlg").stdout
    assert "org:acme -> user:alice -> agent:bot -> agent:sub" in shown
    assert "verifies against the trusted roots" in shown
    assert "billing/refund where amount <= 100 [approval]" in shown
    assert "purpose: support shift" in shown
    assert "on behalf of: user:alice" in shown
    assert "rule 0: tickets/read" in shown
    doc = json.loads(scenario.ok("inspect", "sub.dlg", "--json").stdout)
    assert doc["verified"] is True
    assert doc["holder"] == "agent:sub"
    assert [link["subject"] for link in doc["links"]] == ["user:alice", "agent:bot", "agent:sub"]
    assert doc["links"][0]["rules"][1]["approval"] is True
    assert doc["links"][2]["max_depth"] == 1


def test_inspect_names_why_a_chain_does_not_verify(scenario: CLI, tmp_path: Path) -> None:
    other = tmp_path / "other-org"
    scenario.ok("--home", str(other), "identity", "new", "org:other")
    result = scenario(
        "--home", str(other), "--policy", str(other / "none.yaml"), "inspect", "sub.dlg"
    )
    one_line_error(result, "cannot read policy")
    # A policy with no trusted roots: the chain is shown but does not verify (exit 3).
    (tmp_path / "empty.yaml").write_text("version: 1\n")
    result = scenario("--policy", "empty.yaml", "inspect", "sub.dlg")
    assert result.exit_code == 3
    assert "DOES NOT VERIFY (untrusted_root)" in result.stdout


def test_check_exit_codes_and_json(scenario: CLI) -> None:
    allowed = scenario("check", "sub.dlg", "tickets/read", '{"id": 7}')
    assert allowed.exit_code == 0, allowed.stderr
    assert "ALLOW" in allowed.stdout
    assert "dry run" in allowed.stdout
    denied = scenario("check", "sub.dlg", "tickets/close", '{"id": 7}')
    assert denied.exit_code == 3
    assert "link 2 (agent:bot -> agent:sub) has no rule for tickets/close" in denied.stdout
    needs = scenario("check", "bot.dlg", "billing/refund", '{"amount": 40}')
    assert needs.exit_code == 4
    assert "link 0 rule 1" in needs.stdout
    # Deny beats approval: the same privileged tool outside its predicate is denied.
    over = scenario("check", "bot.dlg", "billing/refund", '{"amount": 400}', "--json")
    assert over.exit_code == 3
    doc = json.loads(over.stdout)  # stdout holds the JSON alone
    assert (doc["outcome"], doc["reason"], doc["link"], doc["rule"]) == (
        "deny",
        "predicate_failed",
        0,
        1,
    )
    ok = json.loads(scenario("check", "sub.dlg", "tickets/read", "--json").stdout)
    assert ok["outcome"] == "allow"
    assert ok["dry_run"] is True
    assert ok["path"] == ["org:acme", "user:alice", "agent:bot", "agent:sub"]


def test_check_as_signs_the_call_token_with_that_key(scenario: CLI) -> None:
    assert scenario("check", "sub.dlg", "tickets/read", "--as", "agent:sub").exit_code == 0
    other = scenario("check", "sub.dlg", "tickets/read", "--as", "agent:bot", "--json")
    assert other.exit_code == 3
    assert json.loads(other.stdout)["reason"] == "call_token_signer"


def test_where_with_a_yaml_flow_predicate_and_approval(scenario: CLI) -> None:
    grant(
        scenario,
        "--from", "org:acme", "--to", "agent:bot", "--tool", "tickets/*", "--tool", "fs/read",
        "--where", "tickets/*={business_unit: emea, priority: {'<=': 3}}",
        "--approval", "fs/read", "--ttl", "1h",
        out="emea.dlg",
    )  # fmt: skip
    emea = '{"business_unit": "emea", "priority": 2}'
    assert scenario("check", "emea.dlg", "tickets/update", emea).exit_code == 0
    us = '{"business_unit": "us", "priority": 2}'
    assert scenario("check", "emea.dlg", "tickets/update", us).exit_code == 3
    assert scenario("check", "emea.dlg", "fs/read", "{}").exit_code == 4


def test_where_and_approval_must_name_a_tool_pattern(scenario: CLI) -> None:
    base = ("grant", "--from", "org:acme", "--to", "agent:bot", "--tool", "tickets/*")
    result = scenario(*base, "--where", 'billing/*={"amount": 1}', "--ttl", "1h")
    assert result.exit_code == 2
    one_line_error(result, "--where", "not one of this command's --tool patterns")
    result = scenario(*base, "--approval", "billing/*", "--ttl", "1h")
    assert result.exit_code == 2
    one_line_error(result, "--approval")
    result = scenario(*base, "--where", "tickets/*", "--ttl", "1h")
    one_line_error(result, "PATTERN=PREDICATE")
    result = scenario(*base, "--where", 'tickets/*={"amount": {"~~": 1}}', "--ttl", "1h")
    assert result.exit_code == 2
    result = scenario(*base, "--ttl", "forever")
    one_line_error(result, "--ttl", "invalid duration")


def test_a_child_that_widens_its_parent_is_refused(scenario: CLI) -> None:
    later = scenario(
        "grant", "--from", "agent:bot", "--to", "agent:sub", "--tool", "tickets/read",
        "--ttl", "2d", "--parent", "bot.dlg",
    )  # fmt: skip
    assert later.exit_code == 1
    one_line_error(later, "after its parent", "shorter ttl")
    wider = scenario(
        "grant", "--from", "agent:bot", "--to", "agent:sub", "--tool", "payments/send",
        "--ttl", "1h", "--parent", "bot.dlg",
    )  # fmt: skip
    one_line_error(wider, "payments/send", "names no tool the parent grant allows")
    not_holder = scenario(
        "grant", "--from", "user:alice", "--to", "agent:sub", "--tool", "tickets/read",
        "--ttl", "1h", "--parent", "bot.dlg",
    )  # fmt: skip
    one_line_error(not_holder, "only the holder")
    too_long = scenario(
        "grant", "--from", "org:acme", "--to", "user:alice", "--tool", "a/b", "--ttl", "30d"
    )
    one_line_error(too_long, "the policy allows")


def test_revoke_grant_kills_the_descendant(scenario: CLI) -> None:
    assert scenario("check", "sub.dlg", "tickets/read").exit_code == 0
    done = scenario.ok("revoke", "--grant", "bot.dlg", "--reason", "shift over")
    assert "revoked link" in done.stdout
    after = scenario("check", "sub.dlg", "tickets/read", "--json")
    assert after.exit_code == 3
    doc = json.loads(after.stdout)
    assert doc["reason"] == "revoked"
    assert doc["link"] == 1
    assert scenario("check", "alice.dlg", "tickets/read", "--as", "user:alice").exit_code == 0


def test_revoke_by_link_prefix_principal_and_key(scenario: CLI) -> None:
    link = json.loads(scenario.ok("inspect", "sub.dlg", "--json").stdout)["links"][2]
    scenario.ok("revoke", "--", link["link_id"][:10])  # "--": ids may start with "-"
    assert scenario("check", "sub.dlg", "tickets/read").exit_code == 3
    scenario.ok("revoke", "--principal", "agent:bot")
    assert scenario("check", "bot.dlg", "tickets/read").exit_code == 3
    kid = re.search(r"user:alice\s+private\s+(\S+)", scenario.ok("identity", "list").stdout)
    assert kid is not None
    scenario.ok("revoke", "--key", kid.group(1))
    assert scenario("check", "alice.dlg", "tickets/read").exit_code == 3
    one_line_error(scenario("revoke"), "exactly one")
    one_line_error(scenario("revoke", "abc"), "LINK_ID")
    one_line_error(scenario("revoke", "--principal", "nobody"), "invalid principal id")


def test_a_child_rule_wider_than_its_parent_is_warned_with_its_effective_scope(cli: CLI) -> None:
    """'edr/*' under a parent allowing edr/a and edr/b: a warning naming what is left of it.

    Rules inside a parent rule (a plain tool under a glob, a prefix glob under a
    broader one, a tighter bound under a bound) draw no warning.
    """
    cli.ok("init", "--org", "org:acme")
    for principal in ("user:alice", "agent:bot"):
        cli.ok("identity", "new", principal)
    grant(
        cli,
        "--from", "org:acme", "--to", "user:alice", "--tool", "edr/isolate", "--tool", "edr/scan",
        "--tool", "tickets/*", "--tool", "billing/refund",
        "--where", 'billing/refund={"amount": {"<=": 100}}', "--ttl", "2d",
        out="alice.dlg",
    )  # fmt: skip
    wide = grant(
        cli,
        "--from", "user:alice", "--to", "agent:bot", "--tool", "edr/*", "--tool", "billing/refund",
        "--ttl", "1h", out="wide.dlg", parent="alice.dlg",
    )  # fmt: skip
    warnings = [line for line in wide.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, wide.stderr
    assert "rule 0 (edr/*) reaches beyond every rule of the parent link" in warnings[0]
    assert warnings[0].endswith("effective scope is only: edr/isolate; edr/scan")
    assert "rule 1 (billing/refund) reaches beyond" in warnings[1]
    assert "billing/refund where amount <= 100" in warnings[1].rsplit("only:", 1)[1]
    narrow = grant(
        cli,
        "--from", "user:alice", "--to", "agent:bot", "--tool", "edr/scan",
        "--tool", "tickets/read*", "--tool", "billing/refund",
        "--where", 'billing/refund={"amount": {"<=": 50}}', "--ttl", "1h",
        out="narrow.dlg", parent="alice.dlg",
    )  # fmt: skip
    assert "warning" not in narrow.stderr


@pytest.mark.parametrize(
    "revoke", [("--grant", "bot.dlg"), ("--principal", "agent:bot")], ids=["link", "principal"]
)
def test_every_view_marks_a_revoked_link_and_everything_below_it(
    scenario: CLI, revoke: tuple[str, str]
) -> None:
    """inspect (tree and JSON), grants list and the demo's delegation tree agree (issue 18 #2).

    After bot.dlg's link (or its subject) is revoked, the sub-agent's link below
    it reads revoked in every view, never "valid"; alice's link above stays active.
    """
    from rich.console import Console

    from agentguard.guard import Guard
    from agentguard.policy import load_policy
    from examples.agentguard_demo.rendering import delegation_tree

    scenario.ok("revoke", *revoke)
    tree = scenario("inspect", "sub.dlg")
    assert tree.exit_code == 3
    lines = tree.stdout.splitlines()
    links = {i: next(x for x in lines if f"[{i}] " in x) for i in range(3)}
    for index in (1, 2):
        assert "revoked" in links[index], links[index]
        assert "valid" not in links[index], links[index]
    assert "valid, expires" in links[0]
    doc = json.loads(scenario("inspect", "sub.dlg", "--json").stdout)
    assert [link["revoked"] for link in doc["links"]] == [False, True, True]
    rows = json.loads(scenario.ok("grants", "list", "--json").stdout)
    assert {r["subject"]: r["status"] for r in rows} == {
        "user:alice": "active",
        "agent:bot": "revoked",
        "agent:sub": "revoked",
    }
    guard = Guard(load_policy(scenario.root / "agentguard.yaml"), home=scenario.home)
    try:
        console = Console(record=True, width=200)
        console.print(delegation_tree(guard))
    finally:
        guard.close()
    rendered = console.export_text().splitlines()
    assert "[active]" in next(x for x in rendered if "user:alice" in x and "link" in x)
    for subject in ("agent:bot", "agent:sub"):
        line = next(x for x in rendered if f"{subject}  [" in x)
        assert "[revoked]" in line, line
