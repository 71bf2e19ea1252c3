"""README "Behind your identity provider", the `federation:` section: every sentence, run.

The example policy is loaded as written; each table row is a token shaped as
the row says, derived through the row's placeholders; validation and revocation
go through the real CLI against a home `agentguard init` made.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentguard.clock import ManualClock
from agentguard.decision import Reason
from agentguard.errors import DeniedError
from agentguard.federation import EVIDENCE_KEY, Federation, FederationError, token_sha256
from agentguard.guard import Guard
from agentguard.keys import Identity, Principal
from agentguard.policy import load_policy
from agentguard.store.memory import MemoryStore
from agentguard.testing import START, RecordingTool
from agentguard.tokens import Grant, Rule
from agentguard.verify import Verifier
from tests.cli.cli_support import CLI

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README.split("#### The `federation:` section", 1)[1].split("\n### ", 1)[0]
EXAMPLE = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", SECTION, re.S)[0])
GUARD = Identity.generate("service:agentguard")
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


def _claims(**extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "https://login.example.com",
        "aud": "https://mcp.example.com/mcp",
        "sub": "alice",
        "client_id": "vscode",
        "groups": ["incident-response"],
        "jti": "t-1",
        "exp": int(START) + 900,
    }
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not None}


def _federation(doc: dict[str, Any] | None = None) -> Federation:
    return Federation.from_policy(load_policy(doc or EXAMPLE), guard_key=GUARD.principal)


def _derive(federation: Federation, claims: dict[str, Any]) -> Grant:
    provider = federation.provider_for(claims["iss"])
    assert provider is not None
    derived = federation.derive(claims, provider, signer=GUARD, now=START, token=TOKEN)
    return derived.delegation.root


def test_the_example_derives_the_chain_the_readme_describes() -> None:
    assert "from its own key (the\npolicy's `guard_id`, or the provider's `key`)" in SECTION
    grant = _derive(_federation(), _claims())
    assert grant.issuer == "service:agentguard"
    assert grant.subject == "agent:corp.vscode"
    assert grant.on_behalf_of == "user:corp.alice"
    assert grant.scope == (Rule("time/*"), Rule("tickets/*"))
    assert grant.expires_at == START + 900
    assert "(sooner when `limits.max_root_ttl` is shorter)" in SECTION
    short = {**EXAMPLE, "limits": {"max_root_ttl": 600}}
    assert _derive(_federation(short), _claims()).expires_at == START + 600
    assert "with the purpose\n`signed in through corp`" in SECTION
    assert grant.purpose == "signed in through corp"
    # the refund rule needs its claim and its scope
    assert len(_derive(_federation(), _claims(roles=["refunder"])).scope) == 2
    both = _derive(_federation(), _claims(roles=["refunder"], scope="openid tools.write"))
    assert both.scope[2] == Rule("billing/refund", {"amount": {"<=": 100}}, approval=True)
    scp = _derive(_federation(), _claims(roles="refunder", scp=["tools.write"]))
    assert scp.scope == both.scope


def test_a_token_meeting_no_rule_gets_no_chain() -> None:
    assert "the error says\n`insufficient_scope`" in SECTION
    with pytest.raises(FederationError) as info:
        _derive(_federation(), _claims(groups=["everyone"]))
    assert info.value.insufficient_scope


def test_escaping_as_written() -> None:
    assert "(`alice.smith` becomes\n`user:corp.alice+2Esmith`)" in SECTION
    assert _derive(_federation(), _claims(sub="alice.smith")).on_behalf_of == (
        "user:corp.alice+2Esmith"
    )


def test_policy_validate_refuses_what_the_readme_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    cli = CLI(tmp_path)
    provider = EXAMPLE["federation"][0]
    colliding = {
        "federation": [
            {**provider, "subject": "user:{alias}{sub}"},
            {**provider, "issuer": "https://other.example.com", "alias": "corp2"},
        ]
    }
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(colliding))
    result = cli("policy", "validate", "two.yaml")
    assert result.exit_code != 0
    assert "ids it makes could equal ids of federation[0].subject" in result.stderr
    key = {"id": "service:fed", "public_key": GUARD.principal.public_jwk()}
    rooted = {"trusted_roots": [key], "federation": [{**provider, "key": key}]}
    (tmp_path / "rooted.yaml").write_text(yaml.safe_dump(rooted))
    result = cli("policy", "validate", "rooted.yaml")
    assert result.exit_code != 0
    assert "service:fed is also a trusted root" in result.stderr
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(EXAMPLE))
    cli.ok("policy", "validate", "ok.yaml")


def _rows() -> list[list[str]]:
    table = [line for line in SECTION.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table[1:]]


def test_the_table_has_the_providers_it_names() -> None:
    assert [row[0] for row in _rows()] == ["Okta", "Microsoft Entra ID", "Keycloak", "Auth0"]


@pytest.mark.parametrize("row", _rows(), ids=lambda row: row[0])
def test_each_table_row_maps_a_token_shaped_as_it_says(row: list[str]) -> None:
    """A token with the row's claims in the row's shapes derives through the row's names."""
    name, person, client, claims_cell, scopes_cell = row
    subject_claim = re.findall(r"`\{(\w+)\}`", person)[0]
    client_claim = re.findall(r"`\{(\w+)\}`", client)[0]
    group_claims = re.findall(r"`([\w:/.-]+)`", claims_cell)
    scope_claim, shape = re.fullmatch(r"`(\w+)` \((list|text)\)", scopes_cell).groups()  # type: ignore[union-attr]
    doc = {
        "federation": [
            {
                **EXAMPLE["federation"][0],
                "subject": f"user:{{alias}}.{{{subject_claim}}}",
                "client": f"agent:{{alias}}.{{{client_claim}}}",
                "rules": [
                    {"claim": claim, "equals": "ops", "scope": "tools.read", "tools": [f"t{i}/*"]}
                    for i, claim in enumerate(group_claims)
                ],
            }
        ]
    }
    token: dict[str, Any] = {
        "iss": "https://login.example.com",
        "aud": "https://mcp.example.com/mcp",
        subject_claim: "person-1",
        client_claim: "app-1",
        scope_claim: ["openid", "tools.read"] if shape == "list" else "openid tools.read",
        "jti": "t",
        "exp": int(START) + 60,
    }
    for claim in group_claims:
        if "." in claim and "/" not in claim:  # a path into nested objects
            outer, inner = claim.split(".", 1)
            token.setdefault(outer, {})[inner] = ["ops", "other"]
        else:
            token[claim] = ["ops", "other"]
    if client_claim == "client_id":  # "falls back to azp"
        token.pop("client_id")
        token["azp"] = "app-1"
    federation = _federation(doc)
    grant = _derive(federation, token)
    assert grant.subject == "agent:corp.app-1", name
    assert grant.on_behalf_of == "user:corp.person-1"
    assert [r.tool for r in grant.scope] == [f"t{i}/*" for i in range(len(group_claims))]
    verifier = Verifier(
        [],
        revocations=MemoryStore(),
        clock=ManualClock(START),
        bounded_roots=federation.bounded_roots(),
    )
    assert verifier.verify_chain(grant.token).delegation.holder == "agent:corp.app-1"


def test_the_evidence_is_recorded_and_checked_as_written() -> None:
    grant = _derive(_federation(), _claims(roles="refunder", scope="tools.write"))
    evidence = grant.meta[EVIDENCE_KEY]  # type: ignore[index]
    assert evidence["iss"] == "https://login.example.com"
    assert evidence["sub"] == "alice"
    assert (evidence["person"], evidence["client"]) == ({"sub": "alice"}, "vscode")
    assert (evidence["jti"], evidence["token_sha256"]) == ("t-1", token_sha256(TOKEN))
    assert evidence["exp"] == START + 900
    assert evidence["claims"] == {"groups": ["incident-response"], "roles": ["refunder"]}
    assert evidence["scope"] == ["tools.write"]
    assert TOKEN not in grant.token
    assert "c2lnbmF0dXJl" not in str(grant.meta)
    federation = _federation()
    verifier = Verifier(
        [],
        revocations=MemoryStore(),
        clock=ManualClock(START),
        bounded_roots=federation.bounded_roots(),
    )
    fields: dict[str, Any] = {
        "scope": grant.scope,
        "issued_at": grant.issued_at,
        "not_before": grant.not_before,
        "expires_at": grant.expires_at,
        "max_depth": grant.max_depth,
        "on_behalf_of": grant.on_behalf_of,
        "purpose": grant.purpose,
        "meta": grant.meta,
    }
    honest = Grant.sign(GUARD, grant.subject_key, **fields)
    verifier.verify_chain(honest.token)
    stranger = Identity.generate("agent:corp.other").principal
    assert "client, person, purpose, scope, depth and expiry" in SECTION
    # each changed alone is refused
    forgeries: list[tuple[Principal, dict[str, Any]]] = [
        (stranger, {}),
        (grant.subject_key, {"on_behalf_of": "user:corp.bob"}),
        (grant.subject_key, {"purpose": "approved by the CISO"}),
        (grant.subject_key, {"scope": (*grant.scope, Rule("fs/*"))}),
        (grant.subject_key, {"max_depth": 1}),
        (grant.subject_key, {"expires_at": grant.expires_at + 1}),
    ]
    for subject, change in forgeries:
        forged = Grant.sign(GUARD, subject, **{**fields, **change})
        with pytest.raises(DeniedError) as info:
            verifier.verify_chain(forged.token)
        assert info.value.reason == Reason.UNTRUSTED_ROOT


def test_revoking_the_principal_stops_them_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "`agentguard revoke --principal user:corp.alice`" in SECTION
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    monkeypatch.delenv("AGENTGUARD_POLICY", raising=False)
    cli = CLI(tmp_path)
    cli.ok("init", "--org", "org:acme")
    policy_path = tmp_path / "agentguard.yaml"
    doc = yaml.safe_load(policy_path.read_text())
    doc["federation"] = EXAMPLE["federation"]
    policy_path.write_text(yaml.safe_dump(doc))
    cases = [("user:corp.alice", "alice", "cursor"), ("agent:corp.vscode", "bob", "vscode")]
    for principal, sub, client in cases:
        clock = ManualClock(START)
        guard = Guard(policy_path, home=tmp_path / ".agentguard", clock=clock)
        signer = guard.guard_identity
        federation = Federation.from_policy(guard.policy, guard_key=signer.principal)
        provider = federation.provider_for("https://login.example.com")
        assert provider is not None
        claims = _claims(sub=sub, client_id=client)
        derived = federation.derive(claims, provider, signer=signer, now=START)
        assert derived.holder is not None
        tool = RecordingTool()
        guard.call(derived.delegation, "time/now", {}, tool, holder=derived.holder)
        cli.ok("revoke", "--principal", principal)
        with pytest.raises(DeniedError) as info:
            guard.call(derived.delegation, "time/now", {}, tool, holder=derived.holder)
        assert info.value.reason == Reason.REVOKED
        guard.close()
        # a fresh token for the same person or client derives a chain that is refused too
        again = federation.derive({**claims, "jti": "t-2"}, provider, signer=signer, now=START)
        guard = Guard(policy_path, home=tmp_path / ".agentguard", clock=clock)
        with pytest.raises(DeniedError) as info:
            guard.call(again.delegation, "time/now", {}, tool, holder=again.holder)
        assert info.value.reason == Reason.REVOKED
        guard.close()
