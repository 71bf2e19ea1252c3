"""Issue 16, part 2: from a bearer token's verified claims to a delegation chain.

The policy's ``federation:`` section, escaping claim values into principal ids,
deriving a chain bounded by the federation rules, the verifier enforcing that
bound against links forged with the federation key, sponsor revocation, the
per-token cache and the tools-listing helper. The token validation itself (JWKS,
iss/aud/exp) is the proxy's (tests/adapters/mcp/test_oauth.py).
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard.clock import ManualClock
from agentguard.decision import Reason
from agentguard.delegation import Delegation
from agentguard.errors import ConfigError, DeniedError, IssuanceError
from agentguard.federation import (
    EVIDENCE_KEY,
    DerivedChains,
    Federation,
    FederationError,
    reachable_tools,
    token_sha256,
)
from agentguard.guard import Guard
from agentguard.keys import Identity, validate_principal_id
from agentguard.policy import (
    IdTemplate,
    PolicyError,
    escape_claim_value,
    load_policy,
    policy_schema,
    templates_may_collide,
)
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import START, RecordingTool, audit_records, capture_spans
from agentguard.tokens import Grant, Rule
from agentguard.verify import Verifier

ISSUER = "https://login.example.com"
AUDIENCE = "https://mcp.example.com/mcp"
GUARD_ID = "service:agentguard"
#: What a bearer token looks like: it must never appear in a chain, a record or a span.
BEARER = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCJ9."
    "eyJzdWIiOiJhbGljZSIsImdyb3VwcyI6WyJpbmNpZGVudC1yZXNwb25zZSJdfQ."
    "c2lnbmF0dXJlLXRoYXQtd291bGQtYmUtdXNhYmxlLWFzLWEtYmVhcmVyLWNyZWRlbnRpYWw"
)

#: The section as issue 16 pins it (with a predicate and an approval rule).
SECTION: list[dict[str, Any]] = [
    {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "alias": "corp",
        "subject": "user:{alias}.{sub}",
        "client": "agent:{alias}.{client_id}",
        "rules": [
            {"claim": "groups", "equals": "incident-response", "tools": ["time/*", "tickets/*"]},
            {
                "claim": "roles",
                "equals": "refunder",
                "tools": ["billing/refund"],
                "where": {"amount": {"<=": 100}},
                "scope": "tools.write",
            },
            {"scope": "tools.read", "tools": ["docs/read"]},
            {"claim": "groups", "equals": "admins", "tools": ["admin/*"], "approval": True},
        ],
    }
]


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "client_id": "vscode",
        "groups": ["incident-response", "everyone"],
        "scope": "openid tools.read",
        "jti": "tok-1",
        "iat": int(START),
        "exp": int(START) + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture
def guard_key() -> Identity:
    return Identity.generate(GUARD_ID)


@pytest.fixture
def federation(guard_key: Identity) -> Federation:
    return Federation.from_policy(
        load_policy({"federation": SECTION}), guard_key=guard_key.principal
    )


def _verifier(
    federation: Federation, store: Any = None, clock: ManualClock | None = None
) -> Verifier:
    return Verifier(
        [],
        revocations=MemoryStore() if store is None else store,
        clock=clock or ManualClock(START),
        bounded_roots=federation.bounded_roots(),
    )


def _derive(federation: Federation, guard_key: Identity, **overrides: Any) -> Delegation:
    claims = _claims(**overrides)
    provider = federation.provider_for(ISSUER)
    assert provider is not None
    return federation.derive(claims, provider, signer=guard_key, now=START, token=BEARER).delegation


def _payload(grant: Grant) -> str:
    body = grant.token.split(".")[1]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


# -- 1. the policy section -----------------------------------------------------------


def test_the_pinned_section_loads_with_its_defaults() -> None:
    section = [{k: v for k, v in SECTION[0].items() if k not in ("subject", "client")}]
    policy = load_policy({"federation": section})
    provider = policy.federation[0]
    assert (provider.subject, provider.client) == (
        "user:{alias}.{sub}",
        "agent:{alias}.{client_id}",
    )
    assert provider.key is None
    assert provider.max_depth == 0
    assert provider.rules[1].where is not None  # compiled as in grants


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"issuer": "http://login.example.com"}, "https URL (http only on a loopback"),
        ({"issuer": "ftp://127.0.0.1"}, "https URL"),
        ({"issuer": "https://"}, "https URL"),
        ({"issuer": "https://login.example.com/?x=1"}, "no query"),
        ({"issuer": "https://u:p@login.example.com"}, "no query, fragment or user"),
        ({"audience": " "}, "name the audience"),
        ({"alias": "Corp"}, "an alias is"),
        ({"alias": "corp.x"}, "an alias is"),
        ({"subject": "person:{alias}.{sub}"}, "must start with a principal kind"),
        ({"subject": "user:{sub}"}, "must start with a letter or digit"),
        ({"subject": "user:corp.{sub}.{email}"}, "exactly one claim placeholder"),
        ({"subject": "user:{alias}.{alias}.{sub}"}, "exactly one claim placeholder"),
        ({"subject": "user:{alias}:{sub}"}, "unexpected ':'"),
        ({"rules": []}, "at least one rule"),
        (
            {"rules": [{"scope": "s", "tools": [f"t{i}/x" for i in range(40)]}] * 2},
            "80 tool patterns; a derived grant holds at most 64",
        ),
        ({"rules": [{"claim": "groups", "tools": ["a/b"]}]}, "claim and equals together"),
        ({"rules": [{"tools": ["a/b"]}]}, "needs a condition"),
        ({"rules": [{"scope": "two words", "tools": ["a/b"]}]}, "one word"),
        ({"rules": [{"scope": "s", "tools": ["not a pattern"]}]}, "rules[0].tools"),
        ({"rules": [{"scope": "s", "tools": ["a/b"], "where": {"x": {"~~": 1}}}]}, "where"),
        ({"max_depth": 4}, "max_depth"),
        ({"issuers": "x"}, "unknown key (did you mean 'issuer'?)"),
    ],
)
def test_a_bad_provider_is_refused_with_a_clear_error(change: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy({"federation": [{**SECTION[0], **change}]})
    assert message in str(info.value)


def _two(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    base = {"audience": AUDIENCE, "rules": [{"scope": "s", "tools": ["a/b"]}]}
    return [
        {**base, "issuer": ISSUER, "alias": "corp", **first},
        {**base, "issuer": "https://b.example", "alias": "corp2", **second},
    ]


def test_two_providers_with_default_templates_validate() -> None:
    assert len(load_policy({"federation": _two({}, {})}).federation) == 2


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        ({}, {"issuer": ISSUER}, "federation[1].issuer: 'https://login.example.com' is also"),
        ({}, {"alias": "corp"}, "federation[1].alias: 'corp' is also"),
        # corp + "2x" and corp2 + "x": the same id from two providers
        ({"subject": "user:{alias}{sub}"}, {}, "federation[1].subject: ids it makes could equal"),
        ({"subject": "user:shared.{sub}"}, {"subject": "user:shared.{sub}"}, "could equal"),
        # a person of one provider named like a client of the other
        ({"subject": "agent:{alias}.{sub}"}, {}, "federation[0].client: ids it makes could equal"),
    ],
)
def test_providers_that_could_name_the_same_principal_are_refused(
    first: dict[str, Any], second: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy({"federation": _two(first, second)})
    assert message in str(info.value)


def test_the_collision_the_check_refuses_is_real() -> None:
    glued = IdTemplate("user:{alias}{sub}")
    assert glued.render("corp", "2x") == glued.render("corp2", "x") == "user:corp2x"


def test_a_federation_key_that_is_also_a_trusted_root_is_refused(guard_key: Identity) -> None:
    root = {"id": GUARD_ID, "public_key": guard_key.principal.public_jwk()}
    with pytest.raises(PolicyError, match="also a trusted root"):
        load_policy({"trusted_roots": [root], "federation": SECTION})
    other = {"id": "service:fed", "public_key": guard_key.principal.public_jwk()}
    with pytest.raises(PolicyError, match="service:fed is also a trusted root"):
        load_policy({"trusted_roots": [{**other}], "federation": [{**SECTION[0], "key": other}]})


def test_the_schema_describes_the_section() -> None:
    schema = policy_schema()
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors({"federation": SECTION})) == []
    bad = {
        "federation": [
            {**SECTION[0], "rules": [{"claim": "g", "equals": "x", "tools": ["a/b"], "extra": 1}]}
        ]
    }
    assert list(validator.iter_errors(bad))
    assert "federation" in schema["properties"]


def test_the_section_loads_from_yaml_with_line_numbers(tmp_path: Path) -> None:
    doc = {"federation": [{**SECTION[0], "alias": "Bad"}]}
    path = tmp_path / "agentguard.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert re.search(r"agentguard\.yaml:\d+: federation\[0\]\.alias: an alias is", str(info.value))


# -- escaping claim values into the principal grammar -------------------------------------


def _unescape(text: str) -> str:
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "+":
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out.extend(text[i].encode())
            i += 1
    return out.decode("utf-8", "surrogatepass")


_ESCAPED = re.compile(r"^(?:[A-Za-z0-9_@-]|\+[0-9A-F]{2})+$")


@settings(max_examples=400)
@given(st.text(min_size=1, max_size=60))
def test_escaping_is_reversible_and_uses_only_grammar_characters(value: str) -> None:
    escaped = escape_claim_value(value)
    assert _ESCAPED.match(escaped), escaped
    assert "." not in escaped
    assert ":" not in escaped
    assert _unescape(escaped) == value


def test_an_empty_claim_value_names_nobody() -> None:
    with pytest.raises(ValueError, match="empty"):
        escape_claim_value("")


_hostile = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["corp2.bob", "bob", ".", "+2E", "x:y", "user:corp.bob", "a\u0000b", "\ud800"]),
    st.builds(
        lambda a, b: f"{a}.{b}", st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8)
    ),
)


@settings(max_examples=400)
@given(
    _hostile,
    _hostile,
    st.sampled_from(["subject", "client"]),
    st.sampled_from(["subject", "client"]),
)
def test_no_claim_value_names_a_principal_of_another_provider(
    one: str, two: str, role_one: str, role_two: str
) -> None:
    providers = load_policy({"federation": _two({}, {})}).federation

    def render(index: int, alias: str, role: str, value: str) -> str | None:
        try:
            return providers[index].templates()[role].render(alias, value)
        except ValueError:
            assert len(escape_claim_value(value)) > 100  # refused only for its length
            return None

    first, second = render(0, "corp", role_one, one), render(1, "corp2", role_two, two)
    for made in (first, second):
        assert made is None or validate_principal_id(made) == made
    assert first is None or first != second
    assert first is None or first.split(":", 1)[1].startswith("corp.")
    again = render(0, "corp", role_one, two)
    assert one == two or first is None or again is None or first != again


_literal = st.text(alphabet="ab.", min_size=0, max_size=3)


@settings(max_examples=300)
@given(
    _literal,
    _literal,
    _literal,
    _literal,
    st.text(alphabet="ab.+", min_size=1, max_size=4),
    st.text(alphabet="ab.+", min_size=1, max_size=4),
)
def test_templates_the_check_lets_through_never_collide(
    p1: str, s1: str, p2: str, s2: str, v1: str, v2: str
) -> None:
    one = IdTemplate(f"user:x{p1}{{sub}}{s1}")
    two = IdTemplate(f"user:x{p2}{{sub}}{s2}")
    if not templates_may_collide(one.affixes("a"), two.affixes("a")):
        assert one.render("a", v1) != two.render("a", v2)


def test_a_claim_value_too_long_for_an_id_is_refused(
    federation: Federation, guard_key: Identity
) -> None:
    with pytest.raises(FederationError) as info:
        _derive(federation, guard_key, sub="x" * 200)
    assert info.value.reason == Reason.MALFORMED_TOKEN
    assert "too long" in info.value.explanation


# -- 2. deriving the chain -------------------------------------------------------------


def test_the_derived_chain_is_the_client_on_behalf_of_the_person(
    federation: Federation, guard_key: Identity
) -> None:
    chain = _derive(federation, guard_key, roles="refunder", scope="tools.read tools.write")
    grant = chain.root
    assert chain.path == (GUARD_ID, "agent:corp.vscode")
    assert grant.on_behalf_of == "user:corp.alice"
    assert grant.scope == (
        Rule("time/*"),
        Rule("tickets/*"),
        Rule("billing/refund", {"amount": {"<=": 100}}),
        Rule("docs/read"),
    )
    assert grant.expires_at == START + 600
    assert grant.not_before == START
    assert grant.max_depth == 0
    verifier = _verifier(federation)
    verified = verifier.verify_chain(chain.serialize())
    assert verifier.authorize(verified, "billing/refund", {"amount": 50}).rules == (2,)
    with pytest.raises(DeniedError) as info:
        verifier.authorize(verified, "billing/refund", {"amount": 500})
    assert info.value.reason == Reason.PREDICATE_FAILED


def test_a_derived_link_lives_no_longer_than_the_policy_lets_a_root(guard_key: Identity) -> None:
    policy = load_policy({"federation": SECTION, "limits": {"max_root_ttl": "5m"}})
    federation = Federation.from_policy(policy, guard_key=guard_key.principal)
    chain = _derive(federation, guard_key, exp=START + 7200)
    assert chain.root.expires_at == START + 300
    assert chain.root.purpose == "signed in through corp"
    policy.check_limits(chain)
    _verifier(federation).verify_chain(chain)


def test_rules_need_their_claim_and_their_scope(
    federation: Federation, guard_key: Identity
) -> None:
    # roles claim without the tools.write scope: no refund rule; scp as a list counts
    chain = _derive(federation, guard_key, roles=["refunder"], scope=None, scp=["tools.read"])
    assert [r.tool for r in chain.root.scope] == ["time/*", "tickets/*", "docs/read"]
    # a string claim counts as one value; an admin rule keeps its approval flag
    chain = _derive(federation, guard_key, groups="admins", scope=None)
    assert chain.root.scope == (Rule("admin/*", approval=True),)
    # a claim of another type counts as no value
    with pytest.raises(FederationError) as info:
        _derive(federation, guard_key, groups={"incident-response": True}, scope=7)
    assert info.value.insufficient_scope
    assert info.value.reason == Reason.OUT_OF_SCOPE


def test_a_token_that_meets_no_rule_reaches_nothing(
    federation: Federation, guard_key: Identity
) -> None:
    with pytest.raises(FederationError) as info:
        _derive(federation, guard_key, groups=["everyone"], scope="openid")
    assert info.value.insufficient_scope


@pytest.mark.parametrize(
    ("change", "reason", "text"),
    [
        ({"exp": START - 1}, Reason.LINK_EXPIRED, "expired"),
        ({"exp": None}, Reason.MALFORMED_TOKEN, "exp"),
        ({"exp": "soon"}, Reason.MALFORMED_TOKEN, "exp"),
        ({"exp": float("inf")}, Reason.MALFORMED_TOKEN, "exp"),
        ({"exp": True}, Reason.MALFORMED_TOKEN, "exp"),
        ({"sub": None}, Reason.MALFORMED_TOKEN, "'sub'"),
        ({"sub": ""}, Reason.MALFORMED_TOKEN, "'sub'"),
        ({"sub": ["alice"]}, Reason.MALFORMED_TOKEN, "'sub'"),
        ({"client_id": None}, Reason.MALFORMED_TOKEN, "names no client (client_id or azp)"),
        ({"iss": "https://other.example.com"}, Reason.UNTRUSTED_ROOT, "issuer"),
        ({"aud": "https://other.example.com/mcp"}, Reason.UNTRUSTED_ROOT, "(aud)"),
        ({"aud": ["https://other.example.com/mcp"]}, Reason.UNTRUSTED_ROOT, "(aud)"),
        ({"aud": None}, Reason.UNTRUSTED_ROOT, "(aud)"),
    ],
)
def test_unusable_claims_are_refused(
    federation: Federation,
    guard_key: Identity,
    change: dict[str, Any],
    reason: str,
    text: str,
) -> None:
    with pytest.raises(FederationError) as info:
        _derive(federation, guard_key, **change)
    assert info.value.reason == reason
    assert text in info.value.explanation


def test_claim_values_no_rule_uses_are_not_recorded(
    federation: Federation, guard_key: Identity
) -> None:
    chain = _derive(federation, guard_key, groups=["incident-response", "x" * 3000])
    assert "x" * 100 not in json.dumps(chain.root.meta)
    with pytest.raises(FederationError, match="too large to record"):
        _derive(federation, guard_key, jti="j" * 3000)


def test_aud_may_be_a_list_naming_the_audience(federation: Federation, guard_key: Identity) -> None:
    chain = _derive(federation, guard_key, aud=["https://api.example.com", AUDIENCE])
    assert chain.holder == "agent:corp.vscode"


def test_azp_names_the_client_when_there_is_no_client_id(
    federation: Federation, guard_key: Identity
) -> None:
    chain = _derive(federation, guard_key, client_id=None, azp="claude.ai")
    assert chain.holder == "agent:corp.claude+2Eai"


def test_hostile_claim_values_stay_inside_the_provider(
    federation: Federation, guard_key: Identity
) -> None:
    chain = _derive(federation, guard_key, sub="bob.evil:x", client_id="corp2.bot")
    assert chain.root.on_behalf_of == "user:corp.bob+2Eevil+3Ax"
    assert chain.holder == "agent:corp.corp2+2Ebot"


def test_the_link_records_its_evidence_and_never_the_token(
    federation: Federation, guard_key: Identity
) -> None:
    chain = _derive(federation, guard_key, sub="alice", roles="refunder", scope="tools.write")
    evidence = chain.root.meta[EVIDENCE_KEY]  # type: ignore[index]
    assert evidence == {
        "iss": ISSUER,
        "sub": "alice",
        "person": {"sub": "alice"},
        "client": "vscode",
        "jti": "tok-1",
        "token_sha256": token_sha256(BEARER),
        "exp": START + 600,
        "claims": {"groups": ["incident-response"], "roles": ["refunder"]},
        "scope": ["tools.write"],
    }
    text = chain.serialize() + "".join(_payload(g) for g in chain)
    for part in BEARER.split("."):
        assert part not in text


def test_without_jti_or_token_the_evidence_cannot_identify_the_token(
    federation: Federation, guard_key: Identity
) -> None:
    provider = federation.provider_for(ISSUER)
    assert provider is not None
    with pytest.raises(FederationError, match="no jti"):
        federation.derive(_claims(jti=None), provider, signer=guard_key, now=START)
    derived = federation.derive(
        _claims(jti=None), provider, signer=guard_key, now=START, token=BEARER
    )
    assert "jti" not in derived.delegation.root.meta[EVIDENCE_KEY]  # type: ignore[index]


def test_only_the_federation_key_signs_and_only_its_provider_derives(
    federation: Federation, guard_key: Identity
) -> None:
    provider = federation.provider_for(ISSUER)
    assert provider is not None
    assert federation.provider_for("https://other.example.com") is None
    assert federation.provider_for(None) is None
    with pytest.raises(ConfigError, match="signed by service:agentguard"):
        federation.derive(_claims(), provider, signer=Identity.generate(GUARD_ID), now=START)
    other = Federation.from_policy(
        load_policy({"federation": SECTION}), guard_key=guard_key.principal
    )
    foreign = other.provider_for(ISSUER)
    assert foreign is not None
    with pytest.raises(FederationError):
        federation.derive(_claims(), foreign, signer=guard_key, now=START)


def test_the_guard_key_must_be_the_policys_guard_id(guard_key: Identity) -> None:
    with pytest.raises(ConfigError, match="guard_id"):
        Federation.from_policy(
            load_policy({"federation": SECTION}), guard_key=Identity.generate("service:x").principal
        )


def test_a_named_federation_key_vouches_instead_of_the_guards(
    tmp_path: Path, guard_key: Identity
) -> None:
    fed = Identity.generate("service:fed")
    (tmp_path / "fed.pub").write_text(json.dumps({"jwk": fed.principal.public_jwk()}))
    (tmp_path / "agentguard.yaml").write_text(
        yaml.safe_dump(
            {"federation": [{**SECTION[0], "key": {"id": "service:fed", "key_file": "fed.pub"}}]}
        )
    )
    federation = Federation.from_policy(
        load_policy(tmp_path / "agentguard.yaml"), guard_key=guard_key.principal
    )
    provider = federation.provider_for(ISSUER)
    assert provider is not None
    assert provider.signer == "service:fed"
    chain = federation.derive(_claims(), provider, signer=fed, now=START).delegation
    assert chain.root.issuer == "service:fed"
    _verifier(federation).verify_chain(chain)
    (tmp_path / "fed.pub").write_text("{}")
    with pytest.raises(ConfigError, match=r"federation\[0\]\.key: cannot load key"):
        Federation.from_policy(
            load_policy(tmp_path / "agentguard.yaml"), guard_key=guard_key.principal
        )


def test_a_private_holder_key_signs_call_tokens_a_public_one_does_not(
    federation: Federation, guard_key: Identity
) -> None:
    provider = federation.provider_for(ISSUER)
    assert provider is not None
    derived = federation.derive(_claims(), provider, signer=guard_key, now=START)
    assert derived.holder is not None
    assert derived.holder.id == "agent:corp.vscode"
    clock = ManualClock(START)
    token = derived.delegation.mint_call_token(derived.holder, "time/now", {}, clock=clock)
    verifier = _verifier(federation, clock=clock)
    chain = verifier.verify_chain(derived.delegation)
    verifier.verify_call_token(chain, token, tool="time/now", args={})
    agent = Identity.generate("agent:corp.vscode")
    derived = federation.derive(
        _claims(), provider, signer=guard_key, now=START, holder_key=agent.private_key.public_key()
    )
    assert derived.holder is None
    assert derived.delegation.leaf.subject_key.kid == agent.kid


# -- the verifier enforces the bound (attack tests) -----------------------------------------


def _forge(guard_key: Identity, chain: Delegation, **changes: Any) -> Delegation:
    """A root link signed with the real federation key, changed as given."""
    grant = chain.root
    fields: dict[str, Any] = {
        "scope": grant.scope,
        "issued_at": grant.issued_at,
        "not_before": grant.not_before,
        "expires_at": grant.expires_at,
        "max_depth": grant.max_depth,
        "on_behalf_of": grant.on_behalf_of,
        "purpose": grant.purpose,
        "meta": grant.meta,
        "subject": grant.subject_key,
    }
    fields.update(changes)
    subject = fields.pop("subject")
    return Delegation([Grant.sign(guard_key, subject, **fields)])


def _evidence(chain: Delegation, **changes: Any) -> dict[str, Any]:
    evidence = dict(chain.root.meta[EVIDENCE_KEY])  # type: ignore[index]
    evidence.update(changes)
    return {EVIDENCE_KEY: {k: v for k, v in evidence.items() if v is not None}}


@pytest.mark.parametrize(
    "forgery",
    [
        "wider_scope",
        "extra_rule",
        "dropped_predicate",
        "dropped_approval",
        "other_person",
        "other_client",
        "no_sponsor",
        "other_purpose",
        "outlives_token",
        "deeper",
        "no_evidence",
        "unknown_issuer",
        "malformed_evidence",
        "evidence_person_unusable",
    ],
)
def test_a_link_forged_with_the_federation_key_beyond_its_rules_is_refused(
    federation: Federation, guard_key: Identity, forgery: str
) -> None:
    chain = _derive(federation, guard_key, roles="refunder", scope="tools.write", groups=["admins"])
    scope = chain.root.scope
    other = Identity.generate("agent:corp.vscode").principal
    table: dict[str, dict[str, Any]] = {
        "wider_scope": {"scope": (Rule("*/*"),)},
        "extra_rule": {"scope": (*scope, Rule("fs/*"))},
        "dropped_predicate": {"scope": (Rule("billing/refund"), scope[1])},
        "dropped_approval": {"scope": (scope[0], Rule("admin/*"))},
        "other_person": {"on_behalf_of": "user:corp.bob"},
        "other_client": {"subject": Identity.generate("agent:corp.other").principal},
        "no_sponsor": {"on_behalf_of": None},
        "other_purpose": {"purpose": "approved by the CISO"},
        "outlives_token": {"expires_at": chain.root.expires_at + 3600},
        "deeper": {"max_depth": 1},
        "no_evidence": {"meta": {"note": "trust me"}},
        "unknown_issuer": {"meta": _evidence(chain, iss="https://evil.example")},
        "malformed_evidence": {"meta": _evidence(chain, claims={"groups": "admins"})},
        "evidence_person_unusable": {"meta": _evidence(chain, person={"sub": ""})},
    }
    changes = table[forgery]
    assert chain.root.scope == (
        Rule("billing/refund", {"amount": {"<=": 100}}),
        Rule("admin/*", approval=True),
    )
    honest = _forge(guard_key, chain, subject=other)
    _verifier(federation).verify_chain(honest)  # the forger's key works for an honest link
    forged = _forge(guard_key, chain, **changes)
    with pytest.raises(DeniedError) as info:
        _verifier(federation).verify_chain(forged)
    assert info.value.reason == Reason.UNTRUSTED_ROOT
    assert info.value.link == 0
    assert "federation key service:agentguard" in info.value.explanation
    # the same forged link under a plainly trusted key would have passed: the bound is the defence
    Verifier(
        [guard_key.principal], revocations=MemoryStore(), clock=ManualClock(START)
    ).verify_chain(forged)


def test_a_derived_chain_is_not_trusted_without_the_federation_bound(
    federation: Federation, guard_key: Identity
) -> None:
    chain = _derive(federation, guard_key)
    with pytest.raises(DeniedError) as info:
        Verifier([], revocations=MemoryStore(), clock=ManualClock(START)).verify_chain(chain)
    assert info.value.reason == Reason.UNTRUSTED_ROOT
    with pytest.raises(ValueError, match="both a trusted and a bounded root"):
        Verifier(
            [guard_key.principal],
            revocations=MemoryStore(),
            bounded_roots=federation.bounded_roots(),
        )
    verifier = _verifier(federation)
    assert verifier.trusted_roots == {}


def test_a_derived_chain_cannot_be_delegated_further(
    federation: Federation, guard_key: Identity
) -> None:
    provider = federation.provider_for(ISSUER)
    assert provider is not None
    derived = federation.derive(_claims(), provider, signer=guard_key, now=START)
    assert derived.holder is not None
    with pytest.raises(IssuanceError, match="max_depth 0"):
        derived.delegation.attenuate(
            derived.holder, Identity.generate("agent:sub"), ["time/*"], clock=ManualClock(START)
        )


# -- revocation: person or client stops at once -------------------------------------------


@pytest.mark.parametrize("principal", ["user:corp.alice", "agent:corp.vscode"])
def test_revoking_the_person_or_the_client_stops_the_chain_and_empties_the_cache(
    tmp_path: Path, federation: Federation, guard_key: Identity, principal: str
) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    clock = ManualClock(START)
    verifier = _verifier(federation, store=store, clock=clock)
    chain = _derive(federation, guard_key)
    cache = DerivedChains(4)
    holder = Identity.generate("agent:corp.vscode")
    cache.put(BEARER, chain, holder)
    verifier.verify_chain(chain)
    assert cache.get(BEARER, now=START, revocations=store) == (chain, holder)
    store.revoke("principal", principal, reason="left the company", at=START)
    with pytest.raises(DeniedError) as info:
        verifier.verify_chain(chain)
    assert info.value.reason == Reason.REVOKED
    assert principal in info.value.explanation
    assert cache.get(BEARER, now=START, revocations=store) is None
    assert len(cache) == 0


def test_the_cache_never_outlives_the_token_and_is_bounded(
    federation: Federation, guard_key: Identity
) -> None:
    cache = DerivedChains(2)
    holder = Identity.generate("agent:corp.vscode")
    chains = {
        f"token-{i}": _derive(federation, guard_key, jti=f"t{i}", exp=START + 100 + i)
        for i in range(3)
    }
    for token, chain in chains.items():
        cache.put(token, chain, holder)
    assert len(cache) == 2
    assert cache.get("token-0", now=START) is None
    assert cache.get("token-1", now=START) is not None
    assert cache.get("token-1", now=START + 101) is None  # the token expired
    assert cache.get("token-2", now=START + 101) is not None
    assert "token-2" not in repr(cache._items)  # keyed by digest, not by the token
    off = DerivedChains(0)
    off.put("token-0", chains["token-0"], holder)
    assert off.get("token-0", now=START) is None


# -- 3. which tools a chain reaches --------------------------------------------------------


def test_reachable_tools_lists_what_every_link_reaches(
    federation: Federation, guard_key: Identity
) -> None:
    chain = _derive(federation, guard_key)
    tools = ["time/now", "fs/read", "tickets/create", "docs/read", "docs/write"]
    assert reachable_tools(chain, tools) == ["time/now", "tickets/create", "docs/read"]
    verified = _verifier(federation).verify_chain(chain)
    assert reachable_tools(verified, tools) == ["time/now", "tickets/create", "docs/read"]
    assert reachable_tools(chain, ["fs/read", "admin/x"]) == []
    org, agent, bot = (Identity.generate(p) for p in ("org:acme", "agent:a", "agent:b"))
    clock = ManualClock(START)
    two = Delegation.issue(org, agent, ["time/*", "fs/*"], ttl="1h", clock=clock).attenuate(
        agent, bot, ["time/now", "fs/*"], clock=clock
    )
    assert reachable_tools(two, ["time/now", "time/zone", "fs/read"]) == ["time/now", "fs/read"]


# -- the guard: a real SQLite store, spans and audit, no bearer credential anywhere ----------


def test_a_guard_decides_derived_calls_and_stores_no_bearer_credential(
    tmp_path: Path, guard_key: Identity
) -> None:
    clock = ManualClock(START)
    guard = Guard({"federation": SECTION}, home=tmp_path, clock=clock, guard_identity=guard_key)
    federation = Federation.from_policy(guard.policy, guard_key=guard_key.principal)
    provider = federation.provider_for(ISSUER)
    assert provider is not None
    derived = federation.derive(_claims(), provider, signer=guard_key, now=START, token=BEARER)
    assert derived.holder is not None
    tool = RecordingTool("12:00")
    with capture_spans() as spans:
        assert (
            guard.call(derived.delegation, "time/now", {}, tool, holder=derived.holder) == "12:00"
        )
        with pytest.raises(DeniedError) as info:
            guard.call(derived.delegation, "fs/read", {"path": "/etc"}, tool, holder=derived.holder)
    assert info.value.reason == Reason.OUT_OF_SCOPE
    records = [r for r in audit_records(guard) if r["type"] == "decision"]
    assert [(r["tool"], r["outcome"]) for r in records] == [
        ("time/now", "allow"),
        ("fs/read", "deny"),
    ]
    assert records[0]["path"] == [GUARD_ID, "agent:corp.vscode"]
    # a forged wider link signed by the guard's own key is refused by the guard too
    forged = _forge(guard_key, derived.delegation, scope=(Rule("*/*"),))
    with pytest.raises(DeniedError) as info:
        guard.call(forged, "fs/read", {}, tool, holder=derived.holder)
    assert info.value.reason == Reason.UNTRUSTED_ROOT
    guard.revoke("principal", "user:corp.alice", reason="disabled")
    with pytest.raises(DeniedError) as info:
        guard.call(derived.delegation, "time/now", {}, tool, holder=derived.holder)
    assert info.value.reason == Reason.REVOKED
    guard.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    rows = sqlite3.connect(tmp_path / "state.db").execute("SELECT body FROM audit").fetchall()
    finished = spans.get_finished_spans()
    assert rows
    assert finished
    seen = (
        json.dumps(audit_records_from(rows))
        + json.dumps([dict(s.attributes or {}) for s in finished])
        + json.dumps([s.name for s in finished])
    )
    for part in BEARER.split("."):
        assert part.encode() not in stored
        assert part not in seen


def audit_records_from(rows: list[tuple[Any, ...]]) -> list[Any]:
    return [row[0] if isinstance(row[0], str) else row[0].decode() for row in rows]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
_evidence_values = st.fixed_dictionaries(
    {},
    optional={
        "iss": st.sampled_from([ISSUER, "https://evil.example"]) | _json,
        "person": st.dictionaries(st.sampled_from(["sub", "email"]), _json, max_size=2) | _json,
        "client": st.sampled_from(["vscode", ""]) | _json,
        "exp": st.sampled_from([START + 600, START + 60]) | _json,
        "claims": st.dictionaries(
            st.sampled_from(["groups", "roles"]),
            st.lists(st.sampled_from(["incident-response", "admins", "refunder"]), max_size=3)
            | _json,
            max_size=2,
        )
        | _json,
        "scope": st.lists(st.sampled_from(["tools.read", "tools.write"]), max_size=2) | _json,
    },
)


@settings(max_examples=150, deadline=None)
@given(_evidence_values)
def test_hostile_evidence_signed_by_the_federation_key_is_refused_or_exactly_derived(
    evidence: dict[str, Any],
) -> None:
    guard_key = _FUZZ_KEY
    federation = Federation.from_policy(
        load_policy({"federation": SECTION}), guard_key=guard_key.principal
    )
    chain = _derive(federation, guard_key)
    forged = _forge(guard_key, chain, meta={EVIDENCE_KEY: evidence})
    verifier = _verifier(federation)
    refused: DeniedError | None = None
    try:
        verifier.verify_chain(forged)
    except DeniedError as exc:
        refused = exc
    if refused is not None:
        assert refused.reason == Reason.UNTRUSTED_ROOT
        return
    # accepted: then the evidence derives exactly this link
    provider = federation.provider_for(evidence["iss"])
    assert provider is not None
    assert chain.root.scope == forged.root.scope
    assert provider.person_id(evidence["person"]) == forged.root.on_behalf_of


_FUZZ_KEY = Identity.generate(GUARD_ID)


@pytest.mark.parametrize("verified", [None, False, "true", 1, [True]])
def test_an_unverified_email_names_nobody(guard_key: Identity, verified: Any) -> None:
    """A ``{email}`` subject template: only an address the provider verified (JSON ``true``)
    names a person; missing, false or any look-alike of true is refused."""
    section = [{**SECTION[0], "subject": "user:{alias}.{email}"}]
    federation = Federation.from_policy(
        load_policy({"federation": section}), guard_key=guard_key.principal
    )
    provider = federation.provider_for(ISSUER)
    assert provider is not None
    claims = _claims(email="alice@example.com", email_verified=verified)
    with pytest.raises(FederationError) as refused:
        provider.person_id(claims)
    assert refused.value.reason == Reason.MALFORMED_TOKEN
    assert "not verified" in str(refused.value)
    with pytest.raises(FederationError):
        federation.derive(claims, provider, signer=guard_key, now=START, token=BEARER)
    verified_claims = _claims(email="alice@example.com", email_verified=True)
    assert provider.person_id(verified_claims) == "user:corp.alice@example+2Ecom"
