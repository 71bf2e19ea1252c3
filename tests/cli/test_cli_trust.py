"""CLI side of the trust fixes: duplicate policy keys, sponsors, mismatched keys, odd addresses."""

from __future__ import annotations

from pathlib import Path

from tests.test_policy_duplicate_keys import DENY_ERASED

from .cli_support import CLI, one_line_error


def test_policy_validate_refuses_duplicate_keys(cli: CLI) -> None:
    """``agentguard policy validate`` fails with one line naming the file and both lines."""
    cli.ok("init", "--org", "org:acme")
    Path("dup.yaml").write_text(DENY_ERASED, encoding="utf-8")
    result = cli("policy", "validate", "dup.yaml")
    assert result.exit_code == 1
    one_line_error(result, "dup.yaml:6", "duplicate key 'deny'", "first defined on line 2")
