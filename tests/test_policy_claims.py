"""A federation rule's ``claim`` loads only when the matcher can apply it.

A dotted claim names a path into nested objects (``realm_access.roles``), which
:func:`agentguard.federation.claim_value` follows only with 1 to 8 non-empty names:
``a..b``, a leading or trailing dot and deeper paths are refused when the policy
loads, with the file and line. A namespaced claim (``https://example.com/roles``) is
looked up whole and stays valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard.federation import MAX_CLAIM_DEPTH, Federation, claim_value
from agentguard.keys import Identity
from agentguard.policy import PolicyError, load_policy
from tests.cli.cli_support import CLI

ISSUER = "https://login.example.com"


def section(claim: Any) -> dict[str, Any]:
    return {
        "guard_id": "service:agentguard",
        "federation": [
            {
                "issuer": ISSUER,
                "audience": "https://mcp.example.com/mcp",
                "alias": "kc",
                "rules": [{"claim": claim, "equals": "r", "tools": ["t/*"]}],
            }
        ],
    }


def scope(policy_doc: dict[str, Any], claims: dict[str, Any]) -> list[str]:
    """The tools the loaded policy's federation gives a token with ``claims``."""
    federation = Federation.from_policy(
        load_policy(policy_doc), guard_key=Identity.generate("service:agentguard").principal
    )
    provider = federation.providers[0]
    token = {"iss": ISSUER, "sub": "u1", **claims}
    return [tool for rule in provider.matching_rules(token) for tool in rule.tools]


NEVER_A_PATH = [
    "realm_access..roles",
    ".roles",
    "roles.",
    "a.",
    "_..",
    "a.b.c.d.e.f.g.h.i",
    "a." * 8 + "b",
]


@pytest.mark.parametrize("name", NEVER_A_PATH)
def test_a_dotted_path_the_matcher_cannot_follow_is_refused(name: str) -> None:
    with pytest.raises(PolicyError, match="claim"):
        load_policy(section(name))


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CLI:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    monkeypatch.delenv("AGENTGUARD_POLICY", raising=False)
    monkeypatch.setenv("COLUMNS", "400")
    return CLI(tmp_path)


def test_policy_validate_names_the_file_and_line(cli: CLI) -> None:
    Path("claims.yaml").write_text(
        "guard_id: service:agentguard\n"
        "federation:\n"
        f"  - issuer: {ISSUER}\n"
        "    audience: https://mcp.example.com/mcp\n"
        "    alias: kc\n"
        "    rules:\n"
        "      - claim: realm_access..roles\n"
        "        equals: r\n"
        "        tools: [t/*]\n"
        "      - claim: a.b.c.d.e.f.g.h.i\n"
        "        equals: r\n"
        "        tools: [t/*]\n"
        "      - claim: https://example.com/roles\n"
        "        equals: r\n"
        "        tools: [t/*]\n"
    )
    result = cli("policy", "validate", "claims.yaml")
    assert result.exit_code == 1
    problems = [line for line in result.stderr.splitlines() if not line.startswith("error:")]
    assert problems == [
        "claims.yaml:7: federation[0].rules[0].claim: claim 'realm_access..roles' has an "
        "empty name in its dotted path (a leading, trailing or doubled dot): a nested claim "
        "is names separated by single dots",
        "claims.yaml:10: federation[0].rules[1].claim: claim 'a.b.c.d.e.f.g.h.i' is a path "
        "of 9 names; the matcher follows at most 8",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "https://example.com/roles",
        "https://auth.dept.example.co.uk/claims/roles",
        "urn:example:roles",
        "http://a.b.c.d.e.f.g.h.i.j/x",
    ],
)
def test_namespaced_claims_stay_valid_and_match_whole(name: str) -> None:
    assert scope(section(name), {name: ["r"]}) == ["t/*"]


def test_the_deepest_path_loads_and_matches() -> None:
    names = [f"n{i}" for i in range(MAX_CLAIM_DEPTH)]
    nested: Any = ["r"]
    for name in reversed(names):
        nested = {name: nested}
    assert scope(section(".".join(names)), nested) == ["t/*"]


def nested_claims(path: list[str], value: Any) -> dict[str, Any]:
    for name in reversed(path[1:]):
        value = {name: value}
    return {path[0]: value}


_names = st.text(alphabet="ab_.:/-9Z", max_size=24) | st.text(max_size=12)


@settings(max_examples=400, deadline=None)
@given(name=_names | st.integers() | st.none() | st.lists(st.text(max_size=3), max_size=2))
def test_any_claim_either_is_refused_or_is_one_the_matcher_applies(name: Any) -> None:
    """Loading never crashes; what loads, the matcher finds (whole, and as a path)."""
    try:
        doc = section(name)
        load_policy(doc)
    except PolicyError:
        return
    assert isinstance(name, str)
    assert claim_value({name: ["r"]}, name) == ["r"]
    assert scope(doc, {name: ["r"]}) == ["t/*"]
    if "." in name and not any(c in name for c in ":/"):
        path = name.split(".")
        assert all(path)
        assert len(path) <= MAX_CLAIM_DEPTH
        assert claim_value(nested_claims(path, ["r"]), name) == ["r"]
        assert scope(doc, nested_claims(path, ["r"])) == ["t/*"]
