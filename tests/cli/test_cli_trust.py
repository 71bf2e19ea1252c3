"""CLI side of the trust fixes: duplicate policy keys, sponsors, mismatched keys, odd addresses."""

from __future__ import annotations

import json
from pathlib import Path

from agentguard.keys import Identity
from tests.test_policy_duplicate_keys import DENY_ERASED

from .cli_support import CLI, grant, one_line_error


def test_policy_validate_refuses_duplicate_keys(cli: CLI) -> None:
    """``agentguard policy validate`` fails with one line naming the file and both lines."""
    cli.ok("init", "--org", "org:acme")
    Path("dup.yaml").write_text(DENY_ERASED, encoding="utf-8")
    result = cli("policy", "validate", "dup.yaml")
    assert result.exit_code == 1
    one_line_error(result, "dup.yaml:6", "duplicate key 'deny'", "first defined on line 2")


def test_check_refuses_a_key_file_whose_kid_names_another_key(scenario: CLI) -> None:
    """A holder key file edited to claim another kid is refused before anything is signed."""
    path = scenario.home / "keys" / "agent_sub.key"
    doc = json.loads(path.read_text())
    doc["jwk"]["kid"] = Identity.generate("agent:sub").kid
    path.write_text(json.dumps(doc))
    result = scenario("check", "sub.dlg", "tickets/read", '{"id": 7}', "--as", "agent:sub")
    assert result.exit_code == 1
    one_line_error(result, "kid")


def test_grant_refuses_a_pattern_with_a_bidi_override(scenario: CLI) -> None:
    """``--tool`` with U+202E is a usage error (exit 2) naming the code point."""
    result = scenario(
        "grant", "--from", "agent:bot", "--to", "agent:sub", "--tool", "tickets/\u202edaer",
        "--ttl", "1h", "--parent", "bot.dlg", "-o", "odd.dlg",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "U+202E" in result.stderr
    assert not Path("odd.dlg").exists()


def test_check_refuses_an_address_with_a_format_character(scenario: CLI) -> None:
    """A dry run for ``tickets/read`` + ZERO WIDTH SPACE is denied as an invalid tool."""
    result = scenario("check", "sub.dlg", "tickets/read\u200b", "{}")
    assert result.exit_code == 3
    assert "invalid_tool" in result.stdout + result.stderr


def _sponsored_scenario(cli: CLI) -> None:
    """org:acme -> user:alice (on behalf of team:ir) -> agent:bot -> agent:sub."""
    cli.ok("init", "--org", "org:acme")
    for principal in ("user:alice", "agent:bot", "agent:sub"):
        cli.ok("identity", "new", principal)
    grant(
        cli, "--from", "org:acme", "--to", "user:alice", "--tool", "tickets/*", "--ttl", "1d",
        "--purpose", "incident response", "--on-behalf-of", "team:ir", out="alice.dlg",
    )  # fmt: skip
    grant(
        cli, "--from", "user:alice", "--to", "agent:bot", "--tool", "tickets/*", "--ttl", "8h",
        out="bot.dlg", parent="alice.dlg",
    )  # fmt: skip
    grant(
        cli, "--from", "agent:bot", "--to", "agent:sub", "--tool", "tickets/read", "--ttl", "1h",
        out="sub.dlg", parent="bot.dlg",
    )  # fmt: skip


def test_revoking_a_sponsor_stops_every_delegation_made_on_its_behalf(cli: CLI) -> None:
    """``revoke --principal team:ir``: check denies, grants list and inspect say revoked."""
    _sponsored_scenario(cli)
    assert cli("check", "sub.dlg", "tickets/read", '{"id": 7}').exit_code == 0
    cli.ok("revoke", "--principal", "team:ir", "--reason", "team dissolved")

    denied = cli("check", "sub.dlg", "tickets/read", '{"id": 7}', "--json")
    assert denied.exit_code == 3
    assert json.loads(denied.stdout)["reason"] == "revoked"

    listed = json.loads(cli.ok("grants", "list", "--json").stdout)
    assert {row["subject"]: row["status"] for row in listed} == {
        "user:alice": "revoked",
        "agent:bot": "revoked",
        "agent:sub": "revoked",
    }
    sponsored = json.loads(cli.ok("grants", "list", "--principal", "team:ir", "--json").stdout)
    assert [row["status"] for row in sponsored] == ["revoked"] * 3  # children inherit it

    shown = cli("inspect", "sub.dlg", "--json")
    assert shown.exit_code == 3
    doc = json.loads(shown.stdout)
    assert doc["reason"] == "revoked"
    assert doc["revoked_from"] == 0
    assert [link["revoked"] for link in doc["links"]] == [True, True, True]
    assert doc["links"][0]["state"] == "revoked (principal team:ir)"


def test_inspect_marks_a_revoked_link_and_everything_below_it(scenario: CLI) -> None:
    """Issue 18 item 2: after ``revoke --grant bot.dlg`` no link below says ``valid``."""
    scenario.ok("revoke", "--grant", "bot.dlg")
    result = scenario("inspect", "sub.dlg")
    assert result.exit_code == 3
    lines = [line for line in result.stdout.splitlines() if " -> " in line and "[" in line]
    assert len(lines) == 3, result.stdout
    assert "valid, expires" in lines[0]
    assert "revoked (link " in lines[1]
    assert "revoked (through link 1)" in lines[2]
    assert all("valid" not in line for line in lines[1:])
    doc = json.loads(scenario("inspect", "sub.dlg", "--json").stdout)
    assert [link["revoked"] for link in doc["links"]] == [False, True, True]


def test_demo_tree_after_revocation_marks_the_link_and_below(cli: CLI) -> None:
    """``agentguard demo`` step 6 shows the sub-agent's chain revoked from the agent's link."""
    out = cli.ok("demo").stdout
    after = out.split("6. Revoke", 1)[1]
    lines = [line for line in after.splitlines() if "] " in line and " -> " in line]
    assert "valid, expires" in lines[0]
    assert "revoked (link " in lines[1]
    assert "revoked (through link 1)" in lines[2]
