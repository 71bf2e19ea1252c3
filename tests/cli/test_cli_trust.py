"""CLI side of the trust fixes: duplicate policy keys, sponsors, mismatched keys, odd addresses."""

from __future__ import annotations

import json
from pathlib import Path

from agentguard.keys import Identity
from tests.test_policy_duplicate_keys import DENY_ERASED

from .cli_support import CLI, one_line_error


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
