"""Tests for agentguard.delegation: issuing, attenuating, serialising and parsing chains."""

from __future__ import annotations

import pytest

from agentguard.clock import ManualClock
from agentguard.delegation import DEFAULT_MAX_LINKS, Delegation
from agentguard.errors import IdentityError, IssuanceError, TokenFormatError
from agentguard.keys import Identity
from agentguard.predicates import compile_predicate
from agentguard.tokens import Rule
from agentguard.verify import Verifier


def test_issue_writes_every_claim(clock: ManualClock, org: Identity, team: Identity) -> None:
    root = Delegation.issue(
        org,
        team,
        [
            "tickets/*",
            Rule("billing/refund", compile_predicate({"amount": {"<=": 100}}), approval=True),
        ],
        ttl="24h",
        purpose="incident 42",
        on_behalf_of="user:alice",
        max_depth=2,
        meta={"evidence": "sha256:abc"},
        clock=clock,
    )
    grant = root.root
    assert len(root) == 1
    assert root.leaf is grant
    assert (grant.issuer, grant.subject) == ("org:acme", "team:ir")
    assert grant.kid == org.kid
    assert grant.subject_key.kid == team.kid
    assert grant.parent is None
    assert grant.issued_at == grant.not_before == int(clock.now())
    assert grant.expires_at == int(clock.now()) + 86400
    assert grant.max_depth == 2
    assert grant.purpose == "incident 42"
    assert grant.on_behalf_of == "user:alice"
    assert grant.meta == {"evidence": "sha256:abc"}
    assert [r.tool for r in grant.scope] == ["tickets/*", "billing/refund"]
    assert grant.scope[1].approval
    assert grant.scope[1].where == [["<=", ".amount", 100]]
    assert root.holder == "team:ir"
    assert root.path == ("org:acme", "team:ir")


def test_round_trip_through_the_string_form(chain: Delegation) -> None:
    text = chain.serialize()
    assert str(chain) == text
    assert text.count("~") == 3
    assert not text.endswith("~")
    again = Delegation.parse(text)
    assert again == chain
    assert hash(again) == hash(chain)
    assert again.link_ids == chain.link_ids
    assert [g.scope for g in again] == [g.scope for g in chain]
    assert Delegation.parse(f"  {text}\n") == chain


def test_attenuation_links_each_grant_to_its_parent(
    chain: Delegation, team: Identity, alice: Identity, bot: Identity, sub: Identity
) -> None:
    assert chain.path == ("org:acme", "team:ir", "user:alice", "agent:bot", "agent:sub")
    assert chain.holder == "agent:sub"
    signers = [team, alice, bot]
    for index, grant in enumerate(chain.grants[1:], start=1):
        parent = chain.grants[index - 1]
        assert grant.parent == parent.link_id
        assert grant.issuer == parent.subject
        assert grant.kid == signers[index - 1].kid
        assert grant.max_depth == parent.max_depth - 1
    assert [g.max_depth for g in chain] == [4, 3, 2, 1]
    assert chain.leaf.subject_key.kid == sub.kid
    assert chain.expires_at == chain.leaf.expires_at


def test_attenuation_inherits_purpose_sponsor_and_expiry(
    clock: ManualClock, org: Identity, team: Identity, bot: Identity
) -> None:
    root = Delegation.issue(
        org, team, ["tickets/*"], ttl="1h", purpose="triage", on_behalf_of="user:alice", clock=clock
    )
    child = root.attenuate(team, bot, ["tickets/read"], clock=clock)
    assert child.leaf.purpose == "triage"
    assert child.leaf.on_behalf_of == "user:alice"
    assert child.leaf.expires_at == root.leaf.expires_at
    other = root.attenuate(
        team, bot, ["tickets/read"], purpose="one ticket", on_behalf_of="user:bob", clock=clock
    )
    assert other.leaf.purpose == "one ticket"
    assert other.leaf.on_behalf_of == "user:bob"


def test_summary_names_links_rules_purpose_and_sponsor(
    chain: Delegation, clock: ManualClock
) -> None:
    text = chain.summary(now=clock.now())
    for line in (
        "org:acme -> team:ir",
        "team:ir -> user:alice",
        "user:alice -> agent:bot",
        "agent:bot -> agent:sub",
        "purpose: incident response",
        "on behalf of: user:alice",
        "rule 0: tickets/*",
        "billing/refund where",
        "[approval]",
        "rule 1: tickets/comment",
        "valid, 1h left",
        "max_depth 4",
    ):
        assert line in text
    for grant in chain:
        assert grant.token not in text
    clock.advance(7200)
    assert "expired 1h ago" in chain.summary(now=clock.now())


def test_repr_and_html_name_the_path(chain: Delegation) -> None:
    assert "org:acme -> team:ir -> user:alice -> agent:bot -> agent:sub" in repr(chain)
    assert "4 links" in repr(chain)
    page = chain._repr_html_()
    assert "agent:sub" in page
    assert chain.leaf.token not in page


def test_call_tokens_are_minted_by_the_holder_only(
    chain: Delegation, clock: ManualClock, bot: Identity, sub: Identity, verifier: Verifier
) -> None:
    token = chain.mint_call_token(sub, "tickets/read", {"id": 7}, clock=clock)
    verified = verifier.verify_call_token(
        verifier.verify_chain(chain), token, tool="tickets/read", args={"id": 7}
    )
    assert verified.claims.issuer == "agent:sub"
    with pytest.raises(IssuanceError, match="only agent:sub"):
        chain.mint_call_token(bot, "tickets/read", {"id": 7}, clock=clock)


# --- issuance refusals -------------------------------------------------------------------


def test_child_may_not_expire_after_its_parent(
    clock: ManualClock, org: Identity, team: Identity, bot: Identity
) -> None:
    root = Delegation.issue(org, team, ["tickets/*"], ttl="1h", clock=clock)
    with pytest.raises(IssuanceError, match="after its parent"):
        root.attenuate(team, bot, ["tickets/*"], ttl="2h", clock=clock)
    clock.advance(1800)
    with pytest.raises(IssuanceError, match="after its parent"):
        root.attenuate(team, bot, ["tickets/*"], ttl="31m", clock=clock)
    assert root.attenuate(team, bot, ["tickets/*"], ttl="30m", clock=clock).leaf.expires_at == (
        root.leaf.expires_at
    )


def test_child_may_not_start_before_its_parent(
    clock: ManualClock, org: Identity, team: Identity, bot: Identity
) -> None:
    start = clock.now() + 600
    root = Delegation.issue(org, team, ["tickets/*"], ttl="1h", not_before=start, clock=clock)
    with pytest.raises(IssuanceError, match="start before its parent"):
        root.attenuate(team, bot, ["tickets/*"], not_before=start - 1, clock=clock)
    child = root.attenuate(team, bot, ["tickets/*"], clock=clock)
    assert child.leaf.not_before == root.leaf.not_before


@pytest.mark.parametrize("depth", [2, 3, 10])
def test_child_max_depth_must_be_lower_than_the_parents(
    clock: ManualClock, org: Identity, team: Identity, bot: Identity, depth: int
) -> None:
    root = Delegation.issue(org, team, ["tickets/*"], ttl="1h", max_depth=2, clock=clock)
    with pytest.raises(IssuanceError, match="not lower than the parent's"):
        root.attenuate(team, bot, ["tickets/*"], max_depth=depth, clock=clock)
    with pytest.raises(IssuanceError, match="not lower"):
        root.attenuate(team, bot, ["tickets/*"], max_depth=-1, clock=clock)
    assert root.attenuate(team, bot, ["tickets/*"], max_depth=0, clock=clock).leaf.max_depth == 0


def test_a_root_with_negative_depth_is_refused(
    clock: ManualClock, org: Identity, team: Identity
) -> None:
    with pytest.raises(IssuanceError, match="negative"):
        Delegation.issue(org, team, ["tickets/*"], ttl="1h", max_depth=-1, clock=clock)


def test_only_the_holder_can_attenuate(
    chain: Delegation, clock: ManualClock, bot: Identity, sub: Identity
) -> None:
    with pytest.raises(IssuanceError, match=r"only the holder .*\(agent:sub\).*agent:bot"):
        chain.attenuate(bot, bot, ["tickets/read"], clock=clock)
    impostor = Identity.generate("agent:sub")
    with pytest.raises(IssuanceError, match="only the holder"):
        chain.attenuate(impostor, bot, ["tickets/read"], clock=clock)
    assert len(chain.attenuate(sub, bot, ["tickets/read"], clock=clock)) == 5


@pytest.mark.parametrize("rule", ["admin/*", "tickets2/read", "Tickets/read", "fs/write"])
def test_a_rule_naming_no_tool_the_parent_allows_is_refused(
    clock: ManualClock, org: Identity, team: Identity, bot: Identity, rule: str
) -> None:
    root = Delegation.issue(org, team, ["tickets/*", "fs/read_*"], ttl="1h", clock=clock)
    with pytest.raises(IssuanceError, match="names no tool the parent grant allows"):
        root.attenuate(team, bot, ["tickets/read", rule], clock=clock)


def test_rules_overlapping_the_parent_are_accepted(
    clock: ManualClock, org: Identity, team: Identity, bot: Identity
) -> None:
    root = Delegation.issue(org, team, ["tickets/*", "fs/read_*"], ttl="1h", clock=clock)
    child = root.attenuate(team, bot, ["*/read_log", "*/*", "tickets/a/b"], clock=clock)
    assert [r.tool for r in child.leaf.scope] == ["*/read_log", "*/*", "tickets/a/b"]


def test_a_parent_with_max_depth_zero_cannot_be_attenuated(
    clock: ManualClock, org: Identity, team: Identity, bot: Identity
) -> None:
    root = Delegation.issue(org, team, ["tickets/*"], ttl="1h", max_depth=0, clock=clock)
    with pytest.raises(IssuanceError, match=r"allows no further delegation \(max_depth 0\)"):
        root.attenuate(team, bot, ["tickets/*"], clock=clock)


def test_an_expired_parent_cannot_be_attenuated(
    clock: ManualClock, org: Identity, team: Identity, bot: Identity
) -> None:
    root = Delegation.issue(org, team, ["tickets/*"], ttl="1h", clock=clock)
    clock.advance(3600)
    with pytest.raises(IssuanceError, match="expired"):
        root.attenuate(team, bot, ["tickets/*"], clock=clock)


@pytest.mark.parametrize("ttl", [0, -5, "soon", "0s", True])
def test_bad_lifetimes_are_refused(
    clock: ManualClock, org: Identity, team: Identity, ttl: object
) -> None:
    with pytest.raises(IssuanceError):
        Delegation.issue(org, team, ["tickets/*"], ttl=ttl, clock=clock)


def test_bad_scopes_are_refused(clock: ManualClock, org: Identity, team: Identity) -> None:
    with pytest.raises(IssuanceError, match="at least one"):
        Delegation.issue(org, team, [], ttl="1h", clock=clock)
    with pytest.raises(IssuanceError, match="at most 64"):
        Delegation.issue(org, team, [f"ns/t{i}" for i in range(65)], ttl="1h", clock=clock)
    with pytest.raises(IssuanceError, match="tool patterns"):
        Delegation.issue(org, team, [42], ttl="1h", clock=clock)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="namespace/tool"):
        Delegation.issue(org, team, ["tickets"], ttl="1h", clock=clock)


def test_a_bad_sponsor_is_refused(
    clock: ManualClock, org: Identity, team: Identity, bot: Identity
) -> None:
    with pytest.raises(IdentityError, match="kind:name"):
        Delegation.issue(org, team, ["tickets/*"], ttl="1h", on_behalf_of="alice", clock=clock)
    root = Delegation.issue(org, team, ["tickets/*"], ttl="1h", clock=clock)
    with pytest.raises(IdentityError, match="kind:name"):
        root.attenuate(team, bot, ["tickets/*"], on_behalf_of="bob", clock=clock)


# --- parsing -----------------------------------------------------------------------------


def test_parse_applies_the_link_cap(chain: Delegation) -> None:
    with pytest.raises(TokenFormatError) as info:
        Delegation.parse(chain.serialize(), max_links=3)
    assert info.value.reason == "chain_too_long"
    assert len(Delegation.parse(chain.serialize(), max_links=4)) == 4
    assert DEFAULT_MAX_LINKS >= 4


@pytest.mark.parametrize("text", ["", "   ", "~", "a.b.c", "x~y"])
def test_parse_refuses_junk(text: str) -> None:
    with pytest.raises(TokenFormatError):
        Delegation.parse(text)


def test_an_empty_delegation_object_is_refused() -> None:
    with pytest.raises(TokenFormatError):
        Delegation([])


def test_scope_warnings_name_rules_inside_broader_rules() -> None:
    """Issuance notes say what an overlapping rule really does; disjoint rules get none."""
    from agentguard.delegation import scope_warnings
    from agentguard.tokens import Rule

    approval_inside = scope_warnings([Rule("hosts/*"), Rule("hosts/quarantine", approval=True)])
    assert len(approval_inside) == 1
    assert "rule 1 (hosts/quarantine [approval]) lies inside rule 0 (hosts/*)" in approval_inside[0]
    assert "still need approval" in approval_inside[0]
    free_inside = scope_warnings([Rule("admin/*", approval=True), Rule("admin/read")])
    assert free_inside == [
        "rule 1 (admin/read) lies inside rule 0 (admin/* [approval]): calls it selects need "
        "approval all the same"
    ]
    assert "adds nothing" in scope_warnings([Rule("a/b"), Rule("a/*")])[0]
    assert scope_warnings([Rule("a/b"), Rule("a/b")]) == [
        "rule 1 (a/b) lies inside rule 0 (a/b): it adds nothing"
    ]
    # A broader rule with a predicate does not cover: it may not admit what the other does.
    assert scope_warnings([Rule("a/*", {"x": 1}), Rule("a/b")]) == []
    assert scope_warnings([Rule("a/*"), Rule("b/*")]) == []
