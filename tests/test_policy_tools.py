"""A rule's ``tools``: the JSON schema and the loader agree on every spelling.

The loader takes one pattern (``tools: billing/*``) as a list of that one pattern,
never as its characters, so the schema (``agentguard policy schema``) accepts a
string too; both refuse an empty list and anything that is not text.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard.errors import ConfigError
from agentguard.policy import load_policy, policy_schema
from agentguard.testing import World

VALIDATOR = jsonschema.Draft202012Validator(policy_schema())
ISSUER = "https://login.example.com"


def with_tools(kind: str, tools: Any) -> dict[str, Any]:
    """A policy whose one ``kind`` rule has ``tools``."""
    doc: dict[str, Any] = {"guard_id": "service:agentguard"}
    if kind in ("deny", "step_up"):
        doc[kind] = [{"tools": tools}]
    elif kind == "budgets":
        doc[kind] = [{"tools": tools, "window": "1h", "calls": 3, "per": "chain"}]
    elif kind == "approvers":
        doc[kind] = [{"id": "user:alice", "tools": tools}]
    else:
        doc["federation"] = [
            {
                "issuer": ISSUER,
                "audience": "https://mcp.example.com/mcp",
                "alias": "kc",
                "rules": [{"claim": "groups", "equals": "r", "tools": tools}],
            }
        ]
    return doc


def loads(doc: dict[str, Any]) -> bool:
    try:
        load_policy(doc)
    except ConfigError:
        return False
    return True


def schema_accepts(doc: dict[str, Any]) -> bool:
    return not list(VALIDATOR.iter_errors(doc))


KINDS = ["deny", "step_up", "budgets", "approvers", "federation"]


def loaded_tools(kind: str, tools: Any) -> list[str]:
    policy = load_policy(with_tools(kind, tools))
    if kind == "federation":
        return list(policy.federation[0].rules[0].tools)
    if kind == "deny":
        return list(policy.deny[0].tools)
    if kind == "step_up":
        return list(policy.step_up[0].tools)
    if kind == "budgets":
        return list(policy.budgets[0].tools)
    return list(policy.approvers[0].tools)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tools", ["billing/*", ["billing/*"], ["billing/*", "tickets/read"]])
def test_both_spellings_load_and_pass_the_schema(kind: str, tools: Any) -> None:
    doc = with_tools(kind, tools)
    assert schema_accepts(doc)
    assert loads(doc)
    # One pattern is one pattern, never a list of its characters.
    assert loaded_tools(kind, tools) == ([tools] if isinstance(tools, str) else tools)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tools", [[], 5, None, {"a": "b"}, ["billing/*", 3], [["x/*"]], True])
def test_both_refuse_what_is_not_patterns(kind: str, tools: Any) -> None:
    doc = with_tools(kind, tools)
    assert not schema_accepts(doc)
    assert not loads(doc)


def test_a_deny_rule_with_one_pattern_denies_that_pattern_only() -> None:
    world = World()
    guard = world.guard(deny=[{"tools": "tickets/delete"}])
    refused = guard.check(world.delegation, "tickets/delete", {}, holder=world.bot)
    assert not refused.allowed
    assert refused.reason == "policy_denied"
    assert guard.check(world.delegation, "tickets/read", {}, holder=world.bot).allowed


_pattern = st.sampled_from(["billing/*", "*/*", "tickets/read", "a/b"])
_tools = st.one_of(
    _pattern,
    st.lists(_pattern, max_size=3),
    st.text(max_size=12),
    st.lists(st.text(max_size=8), max_size=3),
    st.lists(st.one_of(st.text(max_size=4), st.integers(), st.none()), max_size=3),
    st.integers(),
    st.none(),
)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(KINDS), tools=_tools)
def test_the_schema_never_refuses_what_loads(kind: str, tools: Any) -> None:
    """The loader checks more (a pattern's syntax); the schema refuses nothing it takes."""
    doc = with_tools(kind, tools)
    if loads(doc):
        assert schema_accepts(doc)
    if not schema_accepts(doc):
        assert not loads(doc)
