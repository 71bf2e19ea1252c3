"""Duplicate keys in a policy file are an error naming both lines, at every level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentguard.errors import ConfigError
from agentguard.policy import load_policy

#: A second ``deny`` would silently erase the deny rules above it.
DENY_ERASED = """\
version: 1
deny:
  - tools: ["*/delete_*"]
    reason: nothing deletes in production
shadow: false
deny: []
"""

WEAKER_ASSURANCE = """\
version: 1
approvers:
  - id: user:carol
    min_assurance: signed
    tools: ["*/*"]
    min_assurance: agent
"""

NESTED_PREDICATE = """\
step_up:
  - tools: [billing/refund]
    where:
      amount: {">": 100}
      amount: {">": 1000000}
"""


def _error(tmp_path: Path, text: str, name: str = "agentguard.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "first", "second"),
    [
        (DENY_ERASED, "deny", 2, 6),
        (WEAKER_ASSURANCE, "min_assurance", 4, 6),
        (NESTED_PREDICATE, "amount", 4, 5),
        ("limits:\n  max_link_ttl: 1h\nlimits:\n  max_link_ttl: 30d\n", "limits", 1, 3),
    ],
    ids=["top-level", "in-a-list-item", "in-a-predicate", "whole-section"],
)
def test_duplicate_key_names_both_lines(
    tmp_path: Path, text: str, key: str, first: int, second: int
) -> None:
    """The second occurrence is reported with its line and the line of the first."""
    message = _error(tmp_path, text)
    path = tmp_path / "agentguard.yaml"
    assert message == (f"{path}:{second}: duplicate key {key!r} (first defined on line {first})")


def test_duplicate_keys_in_a_json_policy_file(tmp_path: Path) -> None:
    """A policy written as JSON is parsed by the same loader: duplicates are refused too."""
    text = '{\n  "deny": [{"tools": ["*/delete_*"]}],\n  "deny": []\n}\n'
    assert json.loads(text) == {"deny": []}  # what a plain JSON parser would have kept
    message = _error(tmp_path, text, "agentguard.json")
    assert message.endswith(":3: duplicate key 'deny' (first defined on line 2)")


def test_same_key_in_different_mappings_is_fine(tmp_path: Path) -> None:
    """Keys repeat across list items and sections without being duplicates."""
    path = tmp_path / "agentguard.yaml"
    path.write_text(
        "deny:\n"
        "  - tools: [a/x]\n    reason: one\n"
        "  - tools: [a/y]\n    reason: two\n"
        "step_up:\n  - tools: [a/z]\n    reason: three\n",
        encoding="utf-8",
    )
    policy = load_policy(path)
    assert [r.reason for r in policy.deny] == ["one", "two"]


@pytest.mark.parametrize(
    "text",
    [
        "deny:\n  - &base {tools: [a/x], reason: base}\n  - <<: *base\n    reason: override\n",
        "<<: {deny: [{tools: [fs/x]}]}\ndeny: []\n",
        "<<: [{deny: [{tools: [fs/x]}]}, {deny: []}]\n",
        "approval:\n  <<: {timeout: 5m}\n  timeout: 1s\n",
    ],
)
def test_merge_keys_are_refused(tmp_path: Path, text: str) -> None:
    """``<<`` can silently replace what it overlaps, so a policy may not use it at all."""
    path = tmp_path / "agentguard.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"merge keys \('<<'\) are not allowed"):
        load_policy(path)
