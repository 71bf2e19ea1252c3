"""Federated chains across replicas (issue 16 x issue 15: keys for many processes).

With ``guard_keys:`` a chain derived (or exchanged) by any listed guard key
verifies on every replica, each key within its window; a provider naming its
own key may name several (``keys:``). Every other bound of a federation key is
unchanged, and the attack cases below stay refused.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentguard.budgets import chain_key
from agentguard.clock import ManualClock
from agentguard.decision import Reason
from agentguard.delegation import Delegation
from agentguard.errors import ConfigError, DeniedError
from agentguard.federation import EVIDENCE_KEY, Federation, FederationRoot
from agentguard.guard import Guard
from agentguard.keys import Identity, Principal, TrustedKey
from agentguard.policy import PolicyError, load_policy
from agentguard.store.memory import MemoryStore
from agentguard.testing import START, RecordingTool
from agentguard.tokens import Grant, Rule
from agentguard.verify import Verifier
from tests.cli.cli_support import CLI

ISSUER = "https://login.example.com"
AUDIENCE = "https://mcp.example.com/mcp"
GUARD_ID = "service:agentguard"
BEARER = "header.payload.signature-of-a-bearer-token"

PROVIDER: dict[str, Any] = {
    "issuer": ISSUER,
    "audience": AUDIENCE,
    "alias": "corp",
    "rules": [
        {"claim": "groups", "equals": "incident-response", "tools": ["time/*"]},
        {"claim": "groups", "equals": "admins", "tools": ["admin/*"]},
    ],
}


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "client_id": "vscode",
        "groups": ["incident-response"],
        "jti": "tok-1",
        "exp": int(START) + 3600,
    }
    claims.update(overrides)
    return claims


def _entry(identity: Identity, **window: Any) -> dict[str, Any]:
    return {"public_key": identity.principal.public_jwk(), **window}


def _at(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


@pytest.fixture
def replicas() -> tuple[Identity, Identity]:
    return Identity.generate(GUARD_ID), Identity.generate(GUARD_ID)


def _policy(*keys: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"guard_keys": list(keys), "federation": [PROVIDER], **extra}


def _federation(policy: dict[str, Any], own: Identity) -> Federation:
    return Federation.from_policy(load_policy(policy), guard_key=own.principal)


def _derive(federation: Federation, signer: Identity, now: float = START, **claims: Any) -> Any:
    provider = federation.provider_for(ISSUER)
    assert provider is not None
    return federation.derive(_claims(**claims), provider, signer=signer, now=now, token=BEARER)


def _verifier(federation: Federation, now: float = START, **kwargs: Any) -> Verifier:
    return Verifier(
        kwargs.pop("roots", []),
        revocations=MemoryStore(),
        clock=ManualClock(now),
        bounded_roots=federation.bounded_roots(),
        **kwargs,
    )


def _refused(verifier: Verifier, chain: Delegation) -> DeniedError:
    with pytest.raises(DeniedError) as info:
        verifier.verify_chain(chain)
    return info.value


# -- 1. any listed guard key, on every replica --------------------------------------------


def test_a_chain_derived_by_any_listed_guard_key_verifies_on_every_replica(
    replicas: tuple[Identity, Identity],
) -> None:
    a, b = replicas
    policy = _policy(_entry(a), _entry(b))
    at_a, at_b = _federation(policy, a), _federation(policy, b)
    from_a = _derive(at_a, a).delegation
    from_b = _derive(at_b, b).delegation
    for federation in (at_a, at_b):
        verifier = _verifier(federation)
        for chain in (from_a, from_b):
            verified = verifier.verify_chain(chain)
            assert verified.delegation.root.issuer == GUARD_ID
            assert verified.delegation.root.on_behalf_of == "user:corp.alice"
    # The same authority either way: same people, scope, evidence (bar the link's own id).
    assert from_a.root.scope == from_b.root.scope == (Rule("time/*"),)
    assert from_a.root.meta == from_b.root.meta
    assert from_a.root.kid == a.kid
    assert from_b.root.kid == b.kid


def test_without_guard_keys_each_process_trusts_only_its_own_key(
    replicas: tuple[Identity, Identity],
) -> None:
    """Nothing changes without ``guard_keys``: the other process's chain is refused."""
    a, b = replicas
    policy = {"federation": [PROVIDER]}
    at_a, at_b = _federation(policy, a), _federation(policy, b)
    from_a = _derive(at_a, a).delegation
    _verifier(at_a).verify_chain(from_a)
    assert _refused(_verifier(at_b), from_a).reason == Reason.BAD_SIGNATURE
    [root] = at_b.bounded_roots()
    assert [k.principal.kid for k in root.keys] == [b.kid]


def test_two_guards_on_one_store_one_exchange_one_revocation(
    tmp_path: Path, replicas: tuple[Identity, Identity]
) -> None:
    """Two guards (two keys) on one SQLite file: a chain from A runs once through B, and
    revoking the person at A stops it at B."""
    a, b = replicas
    policy = _policy(_entry(a), _entry(b))
    clock = ManualClock(START)
    guard_a = Guard(policy, home=tmp_path, clock=clock, guard_identity=a)
    guard_b = Guard(policy, home=tmp_path, clock=clock, guard_identity=b)
    try:
        derived = _derive(Federation.from_policy(guard_a.policy, guard_key=a.principal), a)
        tool = RecordingTool("12:00")
        token = derived.delegation.mint_call_token(derived.holder, "time/now", {}, clock=clock)
        assert guard_b.call(derived.delegation, "time/now", {}, tool, call_token=token) == "12:00"
        with pytest.raises(DeniedError) as replayed:  # the call token is spent for both
            guard_a.call(derived.delegation, "time/now", {}, tool, call_token=token)
        assert replayed.value.reason == Reason.CALL_TOKEN_REPLAYED
        assert len(tool.calls) == 1
        guard_a.revoke("principal", "user:corp.alice", reason="left the company")
        with pytest.raises(DeniedError) as info:
            guard_b.call(derived.delegation, "time/now", {}, tool, holder=derived.holder)
        assert info.value.reason == Reason.REVOKED
        assert len(tool.calls) == 1
    finally:
        guard_a.close()
        guard_b.close()


# -- 2. attacks ---------------------------------------------------------------------------


def test_a_derived_root_signed_by_a_key_not_in_the_set_is_refused(
    replicas: tuple[Identity, Identity],
) -> None:
    a, b = replicas
    stranger = Identity.generate(GUARD_ID)
    policy = _policy(_entry(a), _entry(b))
    # A process whose key is not listed cannot derive (nobody would take it) ...
    unlisted = _federation(policy, stranger)
    with pytest.raises(ConfigError, match="is not one of them"):
        _derive(unlisted, stranger)
    with pytest.raises(ConfigError, match="is not one of them"):
        unlisted.check_signer(stranger, now=START)
    # ... and a chain it signed anyway (its own view of the policy) is refused by both.
    forged = _derive(_federation({"federation": [PROVIDER]}, stranger), stranger).delegation
    for own in (a, b):
        refused = _refused(_verifier(_federation(policy, own)), forged)
        assert refused.reason == Reason.BAD_SIGNATURE
        assert refused.link == 0


def test_a_retired_key_is_refused_after_its_retirement(
    replicas: tuple[Identity, Identity],
) -> None:
    """As a trusted root's key: windowed by the link's iat, and void from retired_at on."""
    old, new = replicas
    retired = START + 100
    policy = _policy(_entry(old, retired_at=_at(retired)), _entry(new, not_before=_at(START)))
    federation = _federation(policy, new)
    before = _derive(_federation(policy, old), old).delegation
    _verifier(federation, START + 50).verify_chain(before)
    late = _refused(_verifier(federation, retired + 1), before)
    assert late.reason == Reason.UNTRUSTED_ROOT
    assert "retired" in late.explanation
    # The retired key cannot derive any more; a chain it signed after retirement anyway
    # (written with a time after retired_at) is outside its window.
    with pytest.raises(ConfigError, match="not valid now"):
        _derive(_federation(policy, old), old, now=retired + 1)
    with pytest.raises(ConfigError, match="not valid now"):
        _federation(policy, old).check_signer(old, now=retired)
    signed_late = _derive(_federation({"federation": [PROVIDER]}, old), old, now=retired + 1)
    refused = _refused(_verifier(federation, retired + 2), signed_late.delegation)
    assert refused.reason == Reason.UNTRUSTED_ROOT
    assert "not valid when this link claims" in refused.explanation
    # The new key's chains keep verifying, and before its not_before it signs nothing.
    _verifier(federation, retired + 2).verify_chain(
        _derive(federation, new, now=retired + 1).delegation
    )
    early = _derive(_federation({"federation": [PROVIDER]}, new), new, now=START - 10)
    refused = _refused(_verifier(federation, START - 5), early.delegation)
    assert refused.reason == Reason.UNTRUSTED_ROOT


def _forge(signer: Identity, template: Grant, **changes: Any) -> Delegation:
    fields: dict[str, Any] = {
        "scope": list(template.scope),
        "issued_at": template.issued_at,
        "not_before": template.not_before,
        "expires_at": template.expires_at,
        "max_depth": template.max_depth,
        "purpose": template.purpose,
        "on_behalf_of": template.on_behalf_of,
        "meta": template.meta,
    }
    fields.update(changes)
    subject = changes.pop("subject", template.subject_key)
    fields.pop("subject", None)
    return Delegation([Grant.sign(signer, subject, **fields)])


def test_a_listed_key_does_not_widen_what_the_evidence_allows(
    replicas: tuple[Identity, Identity],
) -> None:
    """Signed by a listed key of another replica, but claiming more than the rules give."""
    a, b = replicas
    policy = _policy(_entry(a), _entry(b))
    at_b = _verifier(_federation(policy, b))
    real = _derive(_federation(policy, a), a).delegation.root
    # Faithful re-signing verifies (the forge helper itself is sound) ...
    at_b.verify_chain(_forge(a, real))
    evidence = dict(real.meta[EVIDENCE_KEY]) if real.meta else {}
    cases: dict[str, dict[str, Any]] = {
        "wider scope": {"scope": [Rule("time/*"), Rule("admin/*")]},
        "everything": {"scope": [Rule("*/*")]},
        "outlives the token": {"expires_at": evidence["exp"] + 60},
        "delegable": {"max_depth": 2},
        "other person": {"on_behalf_of": "user:corp.bob"},
        "other client": {"subject": Principal("agent:corp.other", a.principal.public_key)},
        "no evidence": {"meta": None},
        "evidence of another issuer": {
            "meta": {EVIDENCE_KEY: {**evidence, "iss": "https://evil.example.com"}}
        },
        "malformed evidence": {"meta": {EVIDENCE_KEY: {**evidence, "claims": ["admins"]}}},
    }
    for name, change in cases.items():
        refused = _refused(at_b, _forge(a, real, **change))
        assert refused.reason == Reason.UNTRUSTED_ROOT, name
        assert "federation key" in refused.explanation, name


def test_a_trusted_root_key_used_as_a_federation_key_is_refused(
    replicas: tuple[Identity, Identity],
) -> None:
    a, b = replicas
    org = Identity.generate("org:acme")
    root = {"id": "org:acme", "public_key": org.principal.public_jwk()}
    # The org's key listed as a guard key, which vouches for federated chains.
    with pytest.raises(ConfigError, match="also a key of the trusted root org:acme"):
        _federation(_policy(_entry(a), _entry(org), trusted_roots=[root]), a)
    # Or as a provider's own federation key, under another id.
    named = {**PROVIDER, "keys": [{"id": "service:fed", "public_key": org.principal.public_jwk()}]}
    with pytest.raises(ConfigError, match="also a key of the trusted root org:acme"):
        Federation.from_policy(
            load_policy({"trusted_roots": [root], "federation": [named]}), guard_key=a.principal
        )
    # The org root's id as the federation key's: refused as before.
    with pytest.raises(PolicyError, match="also a trusted root"):
        load_policy({"trusted_roots": [root], "federation": [{**named, "keys": [root]}]})
    # A derived-looking root signed with the org's key in the guard's name: not a guard key.
    policy = _policy(_entry(a), _entry(b), trusted_roots=[root])
    federation = _federation(policy, b)
    real = _derive(_federation(policy, a), a).delegation.root
    forged = _forge(Identity(Principal(GUARD_ID, org.principal.public_key), org.private_key), real)
    verifier = _verifier(federation, roots=load_policy(policy).root_keys())
    assert _refused(verifier, forged).reason == Reason.BAD_SIGNATURE
    # The org key still vouches for what it grants itself (it is trusted, unbounded).
    grant = Delegation.issue(org, a.principal, ["time/*"], ttl="1h", clock=ManualClock(START))
    verifier.verify_chain(grant)


def test_a_guard_refuses_to_start_on_an_ambiguous_policy(
    tmp_path: Path, replicas: tuple[Identity, Identity]
) -> None:
    a, _ = replicas
    org = Identity.generate("org:acme")
    root = {"id": "org:acme", "public_key": org.principal.public_jwk()}
    with pytest.raises(ConfigError, match="also a key of the trusted root org:acme"):
        Guard(_policy(_entry(a), _entry(org), trusted_roots=[root]), home=tmp_path)


def test_a_key_listed_as_both_is_refused(replicas: tuple[Identity, Identity]) -> None:
    a, b = replicas
    # A guard key that is also a provider's named federation key (two ids, one key).
    other = {
        **PROVIDER,
        "issuer": "https://other.example.com",
        "alias": "other",
        "keys": [{"id": "service:fed", "public_key": a.principal.public_jwk()}],
    }
    policy = {"guard_keys": [_entry(a), _entry(b)], "federation": [PROVIDER, other]}
    with pytest.raises(ConfigError, match=f"key {a.kid} is listed both for"):
        _federation(policy, a)
    # Two providers naming one federation key id with different keys (or windows).
    first = {**PROVIDER, "keys": [{"id": "service:fed", "public_key": a.principal.public_jwk()}]}
    second = {**other, "keys": [{"id": "service:fed", "public_key": b.principal.public_jwk()}]}
    with pytest.raises(ConfigError, match="with other keys or windows"):
        _federation({"federation": [first, second]}, a)
    windowed = {**second, "keys": [{**first["keys"][0], "retired_at": _at(START + 9)}]}
    with pytest.raises(ConfigError, match="with other keys or windows"):
        _federation({"federation": [first, windowed]}, a)
    # The same key twice in one provider's keys.
    twice = {**PROVIDER, "keys": [first["keys"][0], {**first["keys"][0], "note": "again"}]}
    with pytest.raises(ConfigError, match="listed twice"):
        _federation({"federation": [twice]}, a)
    # And the verifier itself refuses one key as both a trusted and a bounded root's.
    federation = _federation({"federation": [PROVIDER]}, a)
    with pytest.raises(ValueError, match="is a key of both"):
        Verifier(
            [Principal("org:acme", a.principal.public_key)],
            revocations=MemoryStore(),
            bounded_roots=federation.bounded_roots(),
        )
    stray = TrustedKey(Principal("org:acme", b.principal.public_key))
    with pytest.raises(ValueError, match="every key of the federation key"):
        FederationRoot(a.principal, [], [stray])

    class Stray:
        """A bounded root whose key list names another principal."""

        principal = a.principal
        keys = (stray,)

        def check_link(self, grant: Grant) -> None:
            """Accept anything (never reached)."""

    with pytest.raises(ValueError, match="names another principal"):
        Verifier([], revocations=MemoryStore(), bounded_roots=[Stray()])


# -- a provider's own keys ----------------------------------------------------------------


def test_a_provider_may_name_several_keys_of_one_id(tmp_path: Path) -> None:
    first, second = Identity.generate("service:fed"), Identity.generate("service:fed")
    (tmp_path / "second.pub").write_text(json.dumps({"jwk": second.principal.public_jwk()}))
    keys: list[dict[str, Any]] = [
        {"id": "service:fed", "public_key": first.principal.public_jwk(), "note": "replica a"},
        {
            "id": "service:fed",
            "key_file": "second.pub",
            "not_before": _at(START - 100),
            "retired_at": _at(START + 100),
        },
    ]
    (tmp_path / "agentguard.yaml").write_text(
        yaml.safe_dump({"federation": [{**PROVIDER, "keys": keys}]})
    )
    policy = load_policy(tmp_path / "agentguard.yaml")
    guard_key = Identity.generate(GUARD_ID)
    federation = Federation.from_policy(policy, guard_key=guard_key.principal)
    provider = federation.provider_for(ISSUER)
    assert provider is not None
    assert provider.signer == "service:fed"
    verifier = _verifier(federation, START + 10)
    chains = [_derive(federation, key).delegation for key in (first, second)]
    for chain in chains:
        verifier.verify_chain(chain)
    # The guard's own key vouches for nothing of this provider's.
    with pytest.raises(ConfigError, match="is not one of them"):
        _derive(federation, guard_key)
    federation.check_signer(guard_key, now=START)  # it signs for no provider: nothing to say
    # The second key is retired in its own window, like any rotated key.
    assert _refused(_verifier(federation, START + 101), chains[1]).reason == Reason.UNTRUSTED_ROOT
    _verifier(federation, START + 101).verify_chain(chains[0])
    # A per-chain budget counts the person and client, whichever key derived the link.
    signers = {ISSUER: "service:fed"}
    assert chain_key(chains[0].root, signers) == chain_key(chains[1].root, signers)
    assert chain_key(chains[0].root, signers).startswith("chain/federated/")
    inline = [{**keys[0]}, {**keys[1], "public_key": second.principal.public_jwk()}]
    inline[1].pop("key_file")
    budgeted = load_policy({"federation": [{**PROVIDER, "keys": inline}], "budgets": [_BUDGET]})
    [one], [two] = (budgeted.budget_charges("time/now", {}, chain) for chain in chains)
    assert one.key == two.key
    assert one.key.endswith(chain_key(chains[0].root, signers))
    (tmp_path / "second.pub").unlink()
    with pytest.raises(ConfigError, match=r"federation\[0\]\.keys\[1\]: key file"):
        Federation.from_policy(
            load_policy(tmp_path / "agentguard.yaml"), guard_key=guard_key.principal
        )


_BUDGET = {"tools": ["time/*"], "per": "chain", "window": "1h", "calls": 5}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("service:fed", "list"),
        ({"id": "service:fed"}, "list"),
        ([], "at least one key"),
        ([{"id": "service:fed"}], "exactly one of public_key or key_file"),
        ([{"id": "not an id", "key_file": "x"}], "id"),
        ([{"id": "service:a", "key_file": "a"}, {"id": "service:b", "key_file": "b"}], "one"),
        ([{"id": "service:a", "key_file": f"k{i}"} for i in range(17)], "at most 16"),
        ([{"id": "service:a", "key_file": "a", "retired_at": "yesterday"}], "datetime"),
        ([{"id": "service:a", "key_file": "a", "extra": 1}], "extra"),
        ([None], "keys"),
        ([[]], "keys"),
    ],
)
def test_hostile_keys_are_refused(keys: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        load_policy({"federation": [{**PROVIDER, "keys": keys}]})


def test_key_and_keys_together_are_ambiguous() -> None:
    one = {"id": "service:fed", "key_file": "a"}
    with pytest.raises(PolicyError, match="key or keys, not both"):
        load_policy({"federation": [{**PROVIDER, "key": one, "keys": [one]}]})


def test_policy_validate_refuses_ambiguous_federation_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replicas: tuple[Identity, Identity]
) -> None:
    a, b = replicas
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    cli = CLI(tmp_path)
    org = Identity.generate("org:acme")
    root = {"id": "org:acme", "public_key": org.principal.public_jwk()}
    (tmp_path / "both.yaml").write_text(
        yaml.safe_dump(_policy(_entry(a), _entry(org), trusted_roots=[root]))
    )
    result = cli("policy", "validate", "both.yaml")
    assert result.exit_code != 0
    assert "also a key of the trusted root org:acme" in result.stderr
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(_policy(_entry(a), _entry(b))))
    cli.ok("policy", "validate", "ok.yaml")


def test_the_schema_names_keys() -> None:
    from agentguard.policy import policy_schema

    schema = json.dumps(policy_schema())
    assert "Several keys of one id vouching for derived chains" in schema


def test_the_readme_keys_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("**Federated chains on every replica.**") :]
    block = section[section.index("```yaml") + len("```yaml") : section.index("```\n\n")]
    [provider] = yaml.safe_load(block)["federation"]
    (tmp_path / "keys").mkdir()
    made = []
    for entry in provider["keys"]:
        key = Identity.generate(entry["id"])
        (tmp_path / entry["key_file"]).write_text(json.dumps({"jwk": key.principal.public_jwk()}))
        made.append(key.kid)
    rest = {k: v for k, v in PROVIDER.items() if k not in ("issuer",)}
    (tmp_path / "agentguard.yaml").write_text(
        yaml.safe_dump({"federation": [{**provider, **rest}]})
    )
    policy = load_policy(tmp_path / "agentguard.yaml")
    keys = policy.federation_keys()["service:federation"]
    assert [k.principal.kid for k in keys] == made
    assert keys[0].retired_at is None
    assert keys[1].retired_at == datetime(2027, 7, 1, tzinfo=UTC).timestamp()


def test_federation_keys_without_the_process_key(tmp_path: Path) -> None:
    """Without its own key a process leaves the guard's providers out; a wrong id is refused;
    an unusable key file is named."""
    policy = load_policy({"federation": [PROVIDER]})
    assert policy.federation_keys() == {}
    with pytest.raises(ConfigError, match="but the policy's guard_id is service:agentguard"):
        policy.federation_keys(Identity.generate("service:other").principal)
    own = Identity.generate(GUARD_ID)
    assert [k.principal.kid for k in policy.federation_keys(own.principal)[GUARD_ID]] == [own.kid]
    (tmp_path / "bad.pub").write_text("{}")
    named = {**PROVIDER, "keys": [{"id": "service:fed", "key_file": str(tmp_path / "bad.pub")}]}
    with pytest.raises(ConfigError, match=r"federation\[0\]\.keys\[0\]: cannot load key"):
        load_policy({"federation": [named]}).federation_keys()
