"""Nested claims in federation rules: a dotted claim path (``realm_access.roles``).

A rule's ``claim`` is a top-level claim name, whole, or, when the token has no claim of
that name, a path into nested objects separated by dots. Hostile and odd tokens fail
closed: the rule does not apply. The verifier's bound re-derives the same scope from the
evidence a derived link records.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard.clock import ManualClock
from agentguard.federation import EVIDENCE_KEY, MAX_CLAIM_DEPTH, Federation, claim_value
from agentguard.keys import Identity
from agentguard.policy import PolicyError, load_policy
from agentguard.store.memory import MemoryStore
from agentguard.testing import START
from agentguard.tokens import Rule
from agentguard.verify import Verifier

ISSUER = "https://login.example.com"
AUDIENCE = "https://mcp.example.com/mcp"
NAMESPACED = "https://example.com/roles"
SECTION: list[dict[str, Any]] = [
    {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "alias": "kc",
        "rules": [
            {"claim": "realm_access.roles", "equals": "responder", "tools": ["tickets/*"]},
            {"claim": NAMESPACED, "equals": "refunder", "tools": ["billing/refund"]},
        ],
    }
]


def _claims(**extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "client_id": "cli",
        "jti": "t-1",
        "exp": int(START) + 600,
    }
    claims.update(extra)
    return claims


@pytest.fixture
def guard_key() -> Identity:
    return Identity.generate("service:agentguard")


@pytest.fixture
def federation(guard_key: Identity) -> Federation:
    policy = load_policy({"guard_id": "service:agentguard", "federation": SECTION})
    return Federation.from_policy(policy, guard_key=guard_key.principal)


def _scope(federation: Federation, claims: dict[str, Any]) -> list[str]:
    provider = federation.providers[0]
    return [tool for rule in provider.matching_rules(claims) for tool in rule.tools]


def test_a_nested_claim_is_found_by_its_dotted_path(federation: Federation) -> None:
    nested = _claims(realm_access={"roles": ["responder", "offline_access"]})
    assert _scope(federation, nested) == ["tickets/*"]
    assert claim_value(nested, "realm_access.roles") == ["responder", "offline_access"]
    assert _scope(federation, _claims(realm_access={"roles": "responder"})) == ["tickets/*"]


def test_a_namespaced_top_level_claim_is_taken_whole(federation: Federation) -> None:
    """Auth0's namespaced claims have dots in their names: looked up whole first."""
    assert _scope(federation, _claims(**{NAMESPACED: ["refunder"]})) == ["billing/refund"]


@pytest.mark.parametrize(
    "claims",
    [
        # both the exact top-level name and the nested path: ambiguous, neither counts
        {"realm_access.roles": ["responder"], "realm_access": {"roles": ["responder"]}},
        {"realm_access.roles": "x", "realm_access": {"roles": ["responder"]}},
        # the path leads through something that is not an object
        {"realm_access": ["roles", "responder"]},
        {"realm_access": "roles"},
        {"realm_access": None},
        {"realm_access": 7},
        {"realm_access": {"roles": {"responder": True}}},
        {"realm_access": {"roles": [["responder"]]}},
        {"realm_access": {"roles": 1}},
        {"realm_access": {"Roles": ["responder"]}},
        {"realm_access": {}},
        {},
    ],
    ids=lambda c: repr(c)[:60],
)
def test_odd_or_hostile_shapes_meet_no_rule(federation: Federation, claims: Any) -> None:
    assert _scope(federation, _claims(**claims)) == []


def test_paths_with_empty_names_or_too_deep_look_up_only_the_whole_name() -> None:
    deep: Any = "responder"
    names = [f"n{i}" for i in range(MAX_CLAIM_DEPTH + 1)]
    for name in reversed(names):
        deep = {name: deep}
    assert claim_value(deep, ".".join(names)) is None
    assert claim_value(deep["n0"], ".".join(names[1:])) == "responder"  # 8 names: found
    assert claim_value({"a": {"": {"b": 1}}}, "a..b") is None
    assert claim_value({"a": {"b": 1}}, "a.b.") is None
    assert claim_value({"a..b": 1}, "a..b") == 1


@pytest.mark.parametrize("name", ["realm_access..roles", ".roles", "realm access.roles"])
def test_a_claim_path_the_policy_cannot_mean_is_refused_or_never_matches(name: str) -> None:
    section = [{**SECTION[0], "rules": [{"claim": name, "equals": "r", "tools": ["t/*"]}]}]
    try:
        policy = load_policy({"guard_id": "service:agentguard", "federation": section})
    except PolicyError:
        return
    key = Identity.generate("service:agentguard")
    federation = Federation.from_policy(policy, guard_key=key.principal)
    hostile = _claims(realm_access={"": {"roles": ["r"]}, "roles": ["r"]}, roles=["r"])
    assert _scope(federation, hostile) == []


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(claims=st.dictionaries(st.text(max_size=8), _json, max_size=4), name=st.text(max_size=12))
def test_any_token_shape_and_claim_name_never_raises(claims: dict[str, Any], name: str) -> None:
    value = claim_value(claims, name)
    if name in claims and "." not in name:
        assert value == claims[name]
    if name not in claims and "." not in name:
        assert value is None


def test_a_derived_link_from_a_nested_claim_verifies_within_the_bound(
    federation: Federation, guard_key: Identity
) -> None:
    provider = federation.providers[0]
    claims = _claims(realm_access={"roles": ["responder"]})
    chain = federation.derive(claims, provider, signer=guard_key, now=START).delegation
    assert chain.root.scope == (Rule("tickets/*"),)
    evidence = chain.root.meta[EVIDENCE_KEY] if chain.root.meta else {}
    assert evidence["claims"] == {"realm_access.roles": ["responder"]}
    verifier = Verifier(
        [],
        revocations=MemoryStore(),
        clock=ManualClock(START),
        bounded_roots=federation.bounded_roots(),
    )
    assert verifier.verify_chain(chain).delegation == chain
