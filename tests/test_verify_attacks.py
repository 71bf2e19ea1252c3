"""The attack suite: every way to forge, bend or replay a delegation or a call token.

Each test builds the attack by hand (raw JWS, direct ``Grant.sign`` calls that
skip :meth:`Delegation.attenuate`'s checks) and asserts the exact
:class:`DeniedError` class and ``reason`` the verifier answers with.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agentguard.clock import ManualClock
from agentguard.delegation import MAX_DELEGATION_BYTES, Delegation
from agentguard.errors import DeniedError, TokenFormatError
from agentguard.keys import Identity, b64url_decode, b64url_encode
from agentguard.store.memory import MemoryStore
from agentguard.tokens import (
    FORMAT_VERSION,
    TYP_APPROVAL,
    TYP_CALL,
    TYP_GRANT,
    Grant,
    Rule,
    args_digest,
    mint_call_token,
)
from agentguard.verify import VerifiedChain, Verifier

# Ed25519 group order: S and S + L are the same scalar, a classic malleability probe.
ED25519_L = 2**252 + 27742317777372353535851937790883648493
# Any long base64url run in a message would be a token, a segment or a signature.
_LONG_B64 = re.compile(r"[A-Za-z0-9_-]{40,}")


# --- helpers -----------------------------------------------------------------------------


def denial(call: Callable[[], object], cls: type[DeniedError], reason: str) -> DeniedError:
    """Run ``call``; it must raise exactly ``cls`` with ``reason`` and leak no token text."""
    with pytest.raises(DeniedError) as info:
        call()
    error = info.value
    assert type(error) is cls, f"{type(error).__name__}: {error}"
    assert error.reason == reason, str(error)
    for text in (str(error), error.explanation, error.short):
        assert _LONG_B64.search(text) is None, text
    assert error.short == f"denied by agentguard ({reason})"
    return error


def b64json(value: object) -> str:
    return b64url_encode(json.dumps(value, separators=(",", ":")).encode())


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Header, claims and the raw signature segment of a compact JWS."""
    header, payload, signature = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload)), signature


def hand_signed(header: dict[str, Any], claims: dict[str, Any], signer: Identity) -> str:
    """A compact JWS signed with ``signer``'s Ed25519 key, whatever the header says."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    return f"{signing_input}.{b64url_encode(signer.sign(signing_input.encode('ascii')))}"


def joined(tokens: Sequence[str]) -> str:
    return "~".join(tokens)


def links(chain: Delegation) -> list[str]:
    return [grant.token for grant in chain]


def replaced(chain: Delegation, index: int, token: str) -> str:
    tokens = links(chain)
    tokens[index] = token
    return joined(tokens)


def child_of(
    parent: Grant,
    signer: Identity,
    subject: Identity,
    scope: Sequence[Rule],
    *,
    not_before: int | None = None,
    expires_at: int | None = None,
    issued_at: int | None = None,
    max_depth: int | None = None,
) -> Grant:
    """A child grant signed directly, skipping every issuance check of Delegation.attenuate."""
    return Grant.sign(
        signer,
        subject.principal,
        scope=scope,
        issued_at=parent.issued_at if issued_at is None else issued_at,
        not_before=parent.not_before if not_before is None else not_before,
        expires_at=parent.expires_at if expires_at is None else expires_at,
        max_depth=parent.max_depth - 1 if max_depth is None else max_depth,
        parent=parent.link_id,
    )


def with_leaf(chain: Delegation, grant: Grant) -> Delegation:
    """``chain`` with its leaf replaced by ``grant``."""
    return Delegation([*chain.grants[:-1], grant])


def sibling_chain(
    clock: ManualClock, org: Identity, team: Identity, alice: Identity, bot: Identity, sub: Identity
) -> Delegation:
    """A second chain through the same principals and keys, with different scopes."""
    root = Delegation.issue(
        org, team, ["*/*"], ttl="30d", max_depth=4, purpose="other", clock=clock
    )
    chain = root.attenuate(team, alice, ["tickets/*", "admin/*"], ttl="7d", clock=clock)
    chain = chain.attenuate(alice, bot, ["admin/*"], ttl="1d", clock=clock)
    return chain.attenuate(bot, sub, ["admin/*"], ttl="1h", clock=clock)


# --- the genuine article -------------------------------------------------------------------


def test_the_genuine_chain_verifies_and_authorizes(
    chain: Delegation, verifier: Verifier, sub: Identity, clock: ManualClock
) -> None:
    verified = verifier.verify_chain(chain.serialize())
    assert verified.path == chain.path
    assert verified.holder.kid == sub.kid
    match = verifier.authorize(verified, "tickets/read", {"id": 1})
    assert match.rules == (0, 0, 0, 0)
    assert not match.needs_approval
    refund = verifier.authorize(verified, "billing/refund", {"amount": 100})
    assert refund.approval_rules == ((1, 1),)
    token = chain.mint_call_token(sub, "tickets/read", {"id": 1}, clock=clock)
    call = verifier.verify_call_token(verified, token, tool="tickets/read", args={"id": 1})
    assert call.args_digest == args_digest({"id": 1})


def test_only_the_verifier_makes_verified_chains(chain: Delegation) -> None:
    with pytest.raises(TypeError):
        VerifiedChain(chain, 0.0)


# --- algorithm attacks -------------------------------------------------------------------


def test_alg_none_without_signature_is_malformed(chain: Delegation, verifier: Verifier) -> None:
    header, claims, _ = segments(chain.root.token)
    forged = f"{b64json({**header, 'alg': 'none'})}.{b64json(claims)}."
    error = denial(lambda: verifier.verify_chain(forged), TokenFormatError, "malformed_token")
    assert error.link == 0


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", None, "EdDSA ", "eddsa", "Ed25519"])
def test_alg_other_than_eddsa_is_refused(
    chain: Delegation, verifier: Verifier, alg: str | None
) -> None:
    header, claims, signature = segments(chain.root.token)
    claims["scope"] = [{"tool": "*/*"}]
    forged = f"{b64json({**header, 'alg': alg})}.{b64json(claims)}.{signature}"
    denial(lambda: verifier.verify_chain(forged), TokenFormatError, "bad_algorithm")


def test_alg_header_missing_is_refused(chain: Delegation, verifier: Verifier) -> None:
    header, claims, signature = segments(chain.root.token)
    del header["alg"]
    forged = f"{b64json(header)}.{b64json(claims)}.{signature}"
    denial(lambda: verifier.verify_chain(forged), TokenFormatError, "bad_algorithm")


def _hmac_secrets(org: Identity) -> list[bytes]:
    public = org.principal.public_key
    return [
        public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        org.principal.public_jwk()["x"].encode(),
        json.dumps(org.principal.public_jwk()).encode(),
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    ]


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_public_key_is_refused(
    chain: Delegation, verifier: Verifier, org: Identity, team: Identity, alg: str
) -> None:
    """Key confusion: the public key (known to everyone) used as an HMAC secret."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    _, claims, _ = segments(chain.root.token)
    claims["scope"] = [{"tool": "*/*"}]
    header = {"alg": alg, "typ": TYP_GRANT, "kid": org.kid}
    for secret in _hmac_secrets(org):
        signing_input = f"{b64json(header)}.{b64json(claims)}"
        mac = hmac.new(secret, signing_input.encode(), digest).digest()
        forged = f"{signing_input}.{b64url_encode(mac)}"
        denial(partial(verifier.verify_chain, forged), TokenFormatError, "bad_algorithm")


def test_hmac_call_token_is_refused(
    chain: Delegation, verifier: Verifier, sub: Identity, clock: ManualClock
) -> None:
    verified = verifier.verify_chain(chain)
    token = chain.mint_call_token(sub, "tickets/read", {}, clock=clock)
    header, claims, _ = segments(token)
    secret = sub.principal.public_jwk()["x"].encode()
    signing_input = f"{b64json({**header, 'alg': 'HS256'})}.{b64json(claims)}"
    mac = hmac.new(secret, signing_input.encode(), "sha256").digest()
    forged = f"{signing_input}.{b64url_encode(mac)}"
    denial(
        lambda: verifier.verify_call_token(verified, forged, tool="tickets/read", args={}),
        TokenFormatError,
        "bad_algorithm",
    )


def test_critical_headers_are_refused(chain: Delegation, verifier: Verifier, org: Identity) -> None:
    header, claims, _ = segments(chain.root.token)
    forged = hand_signed({**header, "crit": ["exp"]}, claims, org)
    denial(lambda: verifier.verify_chain(forged), TokenFormatError, "malformed_token")


# --- wrong keys ----------------------------------------------------------------------------


def test_root_signed_by_an_impostor_key_is_refused(
    clock: ManualClock, verifier: Verifier, team: Identity
) -> None:
    impostor = Identity.generate("org:acme")
    forged = Delegation.issue(impostor, team, ["*/*"], ttl="1h", clock=clock)
    error = denial(lambda: verifier.verify_chain(forged), DeniedError, "bad_signature")
    assert error.link == 0


def test_impostor_key_with_the_real_kid_is_refused(
    chain: Delegation, verifier: Verifier, org: Identity
) -> None:
    """The ``kid`` header names the real root key, but another key signed."""
    header, claims, _ = segments(chain.root.token)
    assert header["kid"] == org.kid
    forged = hand_signed(header, {**claims, "scope": [{"tool": "*/*"}]}, Identity.generate("org:x"))
    denial(lambda: verifier.verify_chain(forged), DeniedError, "bad_signature")


def test_middle_link_signed_by_the_wrong_key_is_refused(
    chain: Delegation, verifier: Verifier, bot: Identity
) -> None:
    """Link 2 is alice's to sign; the bot re-signs it (same claims) with its own key."""
    header, claims, _ = segments(chain.grants[2].token)
    forged = hand_signed({**header, "kid": bot.kid}, claims, bot)
    error = denial(
        lambda: verifier.verify_chain(replaced(chain, 2, forged)), DeniedError, "bad_signature"
    )
    assert error.link == 2
    forged = hand_signed(header, claims, bot)
    error = denial(
        lambda: verifier.verify_chain(replaced(chain, 2, forged)), DeniedError, "bad_signature"
    )
    assert error.link == 2


def test_a_trusted_root_cannot_issue_in_another_roots_name(
    clock: ManualClock, org: Identity, team: Identity, store: MemoryStore
) -> None:
    beta = Identity.generate("org:beta")
    verifier = Verifier(
        [org.principal, beta.principal], revocations=store, replay=store, clock=clock
    )
    grant = Delegation.issue(org, team, ["*/*"], ttl="1h", clock=clock).root
    header, claims, _ = segments(grant.token)
    forged = hand_signed(header, {**claims, "iss": "org:beta"}, org)
    denial(lambda: verifier.verify_chain(forged), DeniedError, "bad_signature")


# --- tampering ----------------------------------------------------------------------------


_TAMPERINGS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("scope", lambda c: c.__setitem__("scope", [{"tool": "*/*"}])),
    ("exp", lambda c: c.__setitem__("exp", c["exp"] + 1)),
    ("nbf", lambda c: c.__setitem__("nbf", c["nbf"] - 1)),
    ("max_depth", lambda c: c.__setitem__("max_depth", c["max_depth"] + 5)),
    ("sub", lambda c: c.__setitem__("sub", "agent:mallory")),
    ("purpose", lambda c: c.__setitem__("purpose", "anything")),
    (
        "approval",
        lambda c: c["scope"][-1].__setitem__("approval", not c["scope"][-1].get("approval")),
    ),
    (
        "cnf",
        lambda c: c["cnf"].__setitem__("jwk", Identity.generate("user:m").principal.public_jwk()),
    ),
]


@pytest.mark.parametrize("index", [0, 1, 2, 3])
@pytest.mark.parametrize(("claim", "tamper"), _TAMPERINGS, ids=[name for name, _ in _TAMPERINGS])
def test_tampered_payload_keeps_no_signature(
    chain: Delegation,
    verifier: Verifier,
    index: int,
    claim: str,
    tamper: Callable[[dict[str, Any]], None],
) -> None:
    header, claims, signature = segments(chain.grants[index].token)
    tamper(claims)
    forged = f"{b64json(header)}.{b64json(claims)}.{signature}"
    error = denial(
        lambda: verifier.verify_chain(replaced(chain, index, forged)), DeniedError, "bad_signature"
    )
    assert error.link == index, claim


def test_tampered_header_keeps_no_signature(chain: Delegation, verifier: Verifier) -> None:
    header, claims, signature = segments(chain.grants[1].token)
    forged = f"{b64json({**header, 'x5u': 'https://evil.example/k'})}.{b64json(claims)}.{signature}"
    denial(lambda: verifier.verify_chain(replaced(chain, 1, forged)), DeniedError, "bad_signature")


def test_flipped_signature_bit_is_refused(chain: Delegation, verifier: Verifier) -> None:
    head, payload, signature = chain.grants[3].token.split(".")
    raw = bytearray(b64url_decode(signature))
    raw[10] ^= 0x01
    forged = f"{head}.{payload}.{b64url_encode(bytes(raw))}"
    denial(lambda: verifier.verify_chain(replaced(chain, 3, forged)), DeniedError, "bad_signature")


def test_signature_malleability_cannot_mint_a_second_link_id(
    chain: Delegation, verifier: Verifier, store: MemoryStore, clock: ManualClock
) -> None:
    """S + L is the same scalar; accepting it would give a revoked leaf a fresh link id."""
    store.revoke("link", chain.leaf.link_id, reason="test", at=clock.now())
    head, payload, signature = chain.leaf.token.split(".")
    raw = b64url_decode(signature)
    s = int.from_bytes(raw[32:], "little") + ED25519_L
    forged = f"{head}.{payload}.{b64url_encode(raw[:32] + s.to_bytes(32, 'little'))}"
    denial(lambda: verifier.verify_chain(replaced(chain, 3, forged)), DeniedError, "bad_signature")


def test_non_canonical_base64_cannot_mint_a_second_link_id(
    chain: Delegation, verifier: Verifier, store: MemoryStore, clock: ManualClock
) -> None:
    """64 signature bytes leave 4 spare bits in the last character; they must be zero."""
    store.revoke("link", chain.leaf.link_id, reason="test", at=clock.now())
    head, payload, signature = chain.leaf.token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    variant = signature[:-1] + alphabet[last | 0x01]
    assert variant != signature
    forged = f"{head}.{payload}.{variant}"
    denial(
        lambda: verifier.verify_chain(replaced(chain, 3, forged)),
        TokenFormatError,
        "malformed_token",
    )
    denial(lambda: verifier.verify_chain(chain), DeniedError, "revoked")


@pytest.mark.parametrize("index", [0, 3])
def test_stripped_signature_is_malformed(chain: Delegation, verifier: Verifier, index: int) -> None:
    head, payload, _ = chain.grants[index].token.split(".")
    for forged in (f"{head}.{payload}.", f"{head}.{payload}", f"{head}.{payload}.."):
        error = denial(
            partial(verifier.verify_chain, replaced(chain, index, forged)),
            TokenFormatError,
            "malformed_token",
        )
        assert error.link == index


# --- token type confusion -------------------------------------------------------------------


def test_a_grant_is_not_a_call_token(chain: Delegation, verifier: Verifier) -> None:
    verified = verifier.verify_chain(chain)
    denial(
        lambda: verifier.verify_call_token(
            verified, chain.leaf.token, tool="tickets/read", args={}
        ),
        TokenFormatError,
        "wrong_token_type",
    )


def test_a_call_token_is_not_a_grant(
    chain: Delegation, verifier: Verifier, sub: Identity, clock: ManualClock
) -> None:
    token = chain.mint_call_token(sub, "tickets/read", {}, clock=clock)
    error = denial(
        lambda: verifier.verify_chain(joined([*links(chain), token])),
        TokenFormatError,
        "wrong_token_type",
    )
    assert error.link == 4
    denial(lambda: verifier.verify_chain(token), TokenFormatError, "wrong_token_type")


def test_an_approval_typed_token_is_not_a_grant(
    chain: Delegation, verifier: Verifier, org: Identity
) -> None:
    """The same claims and a valid root signature, but the approval ``typ``."""
    header, claims, _ = segments(chain.root.token)
    forged = hand_signed({**header, "typ": TYP_APPROVAL}, claims, org)
    denial(
        lambda: verifier.verify_chain(replaced(chain, 0, forged)),
        TokenFormatError,
        "wrong_token_type",
    )


@pytest.mark.parametrize("typ", [None, "JWT", "agentguard-grant+JWT", "agentguard-call+jwt"])
def test_grants_with_another_typ_are_refused(
    chain: Delegation, verifier: Verifier, org: Identity, typ: str | None
) -> None:
    header, claims, _ = segments(chain.root.token)
    if typ is None:
        del header["typ"]
    else:
        header["typ"] = typ
    forged = hand_signed(header, claims, org)
    denial(lambda: verifier.verify_chain(forged), TokenFormatError, "wrong_token_type")


def test_a_call_typed_grant_is_not_a_call_token(
    chain: Delegation, verifier: Verifier, sub: Identity, clock: ManualClock
) -> None:
    """A call token re-signed by the holder with the grant ``typ`` is neither."""
    verified = verifier.verify_chain(chain)
    header, claims, _ = segments(chain.mint_call_token(sub, "tickets/read", {}, clock=clock))
    forged = hand_signed({**header, "typ": TYP_GRANT}, claims, sub)
    denial(
        lambda: verifier.verify_call_token(verified, forged, tool="tickets/read", args={}),
        TokenFormatError,
        "wrong_token_type",
    )


# --- chain structure ---------------------------------------------------------------------------


def test_swapped_links_are_refused(chain: Delegation, verifier: Verifier) -> None:
    tokens = links(chain)
    tokens[1], tokens[2] = tokens[2], tokens[1]
    error = denial(lambda: verifier.verify_chain(joined(tokens)), DeniedError, "bad_signature")
    assert error.link == 1


def test_reversed_chain_is_refused(chain: Delegation, verifier: Verifier) -> None:
    error = denial(
        lambda: verifier.verify_chain(joined(links(chain)[::-1])), DeniedError, "untrusted_root"
    )
    assert error.link == 0


def test_dropped_or_repeated_links_are_refused(chain: Delegation, verifier: Verifier) -> None:
    tokens = links(chain)
    denial(
        lambda: verifier.verify_chain(joined([tokens[0], *tokens[2:]])),
        DeniedError,
        "bad_signature",
    )
    denial(
        lambda: verifier.verify_chain(joined([*tokens[:2], *tokens[1:]])),
        DeniedError,
        "bad_signature",
    )


def test_dropping_a_self_delegation_is_caught_by_prf(
    clock: ManualClock, verifier: Verifier, org: Identity, team: Identity, bot: Identity
) -> None:
    """Same signer twice in a row: only the ``prf`` link notices the missing narrowing step."""
    root = Delegation.issue(org, team, ["*/*"], ttl="1h", clock=clock)
    narrowed = root.attenuate(team, team, ["tickets/read"], clock=clock)
    full = narrowed.attenuate(team, bot, ["tickets/*"], clock=clock)
    verifier.verify_chain(full)
    tokens = links(full)
    error = denial(
        lambda: verifier.verify_chain(joined([tokens[0], tokens[2]])), DeniedError, "broken_chain"
    )
    assert error.link == 1


def test_spliced_chains_are_refused(
    chain: Delegation,
    verifier: Verifier,
    clock: ManualClock,
    org: Identity,
    team: Identity,
    alice: Identity,
    bot: Identity,
    sub: Identity,
) -> None:
    """Links 2-3 of another chain through the same principals and keys."""
    other = sibling_chain(clock, org, team, alice, bot, sub)
    verifier.verify_chain(other)
    spliced = joined([*links(chain)[:2], *links(other)[2:]])
    error = denial(lambda: verifier.verify_chain(spliced), DeniedError, "broken_chain")
    assert error.link == 2
    spliced = joined([*links(other)[:3], *links(chain)[3:]])
    error = denial(lambda: verifier.verify_chain(spliced), DeniedError, "broken_chain")
    assert error.link == 3


def test_swapped_parent_is_refused(
    chain: Delegation, verifier: Verifier, clock: ManualClock, org: Identity, team: Identity
) -> None:
    """A wider sibling root (same issuer and subject) put under the original children."""
    wider = Delegation.issue(org, team, ["*/*"], ttl="30d", max_depth=4, clock=clock).root
    error = denial(
        lambda: verifier.verify_chain(replaced(chain, 0, wider.token)), DeniedError, "broken_chain"
    )
    assert error.link == 1


def test_issuer_must_be_the_parents_subject(
    chain: Delegation, verifier: Verifier, alice: Identity
) -> None:
    """Signed with the right key, but the ``iss`` claim names someone else."""
    header, claims, _ = segments(chain.grants[2].token)
    forged = hand_signed(header, {**claims, "iss": "user:bob"}, alice)
    error = denial(
        lambda: verifier.verify_chain(replaced(chain, 2, forged)), DeniedError, "broken_chain"
    )
    assert error.link == 2


def test_a_root_with_a_parent_is_refused(
    chain: Delegation, verifier: Verifier, org: Identity
) -> None:
    header, claims, _ = segments(chain.root.token)
    forged = hand_signed(header, {**claims, "prf": chain.grants[1].link_id}, org)
    error = denial(lambda: verifier.verify_chain(forged), DeniedError, "broken_chain")
    assert error.link == 0


def test_unknown_root_is_refused(
    clock: ManualClock, verifier: Verifier, team: Identity, bot: Identity
) -> None:
    evil = Identity.generate("org:evil")
    chain = Delegation.issue(evil, team, ["*/*"], ttl="1h", clock=clock).attenuate(
        team, bot, ["*/*"], clock=clock
    )
    error = denial(lambda: verifier.verify_chain(chain), DeniedError, "untrusted_root")
    assert error.link == 0
    nobody = Verifier([], revocations=MemoryStore(), clock=clock)
    denial(lambda: nobody.verify_chain(chain), DeniedError, "untrusted_root")


# --- widening children (signed directly, bypassing attenuate) -------------------------------


def test_child_with_later_expiry_is_refused(
    chain: Delegation, verifier: Verifier, bot: Identity, sub: Identity
) -> None:
    parent = chain.grants[2]
    wide = child_of(parent, bot, sub, [Rule("tickets/*")], expires_at=parent.expires_at + 3600)
    error = denial(
        lambda: verifier.verify_chain(with_leaf(chain, wide)), DeniedError, "widened_window"
    )
    assert error.link == 3


def test_child_with_earlier_start_is_refused(
    chain: Delegation, verifier: Verifier, bot: Identity, sub: Identity
) -> None:
    parent = chain.grants[2]
    wide = child_of(parent, bot, sub, [Rule("tickets/*")], not_before=parent.not_before - 60)
    error = denial(
        lambda: verifier.verify_chain(with_leaf(chain, wide)), DeniedError, "widened_window"
    )
    assert error.link == 3


@pytest.mark.parametrize("extra", [0, 1, 100])
def test_child_with_more_depth_is_refused(
    chain: Delegation, verifier: Verifier, bot: Identity, sub: Identity, extra: int
) -> None:
    parent = chain.grants[2]
    wide = child_of(parent, bot, sub, [Rule("tickets/*")], max_depth=parent.max_depth + extra)
    error = denial(
        lambda: verifier.verify_chain(with_leaf(chain, wide)), DeniedError, "depth_exceeded"
    )
    assert error.link == 3


def test_child_below_a_depth_zero_parent_is_refused(
    clock: ManualClock, verifier: Verifier, org: Identity, team: Identity, bot: Identity
) -> None:
    root = Delegation.issue(org, team, ["*/*"], ttl="1h", max_depth=0, clock=clock)
    child = child_of(root.root, team, bot, [Rule("tickets/*")], max_depth=0)
    error = denial(
        lambda: verifier.verify_chain(Delegation([root.root, child])),
        DeniedError,
        "depth_exceeded",
    )
    assert error.link == 1


def test_chain_longer_than_the_root_allows_is_refused(
    clock: ManualClock, verifier: Verifier, org: Identity, team: Identity, bot: Identity
) -> None:
    """Every child claims depth 0; the third link is one more than root max_depth 1 allows."""
    root = Delegation.issue(org, team, ["*/*"], ttl="1h", max_depth=1, clock=clock)
    first = root.attenuate(team, bot, ["*/*"], clock=clock)
    second = child_of(first.leaf, bot, team, [Rule("*/*")], max_depth=0)
    denial(
        lambda: verifier.verify_chain(Delegation([*first.grants, second])),
        DeniedError,
        "depth_exceeded",
    )


def test_child_with_wider_scope_verifies_but_cannot_use_it(
    chain: Delegation, verifier: Verifier, bot: Identity, sub: Identity
) -> None:
    """No subset proof at verification: the parent's rules still apply at authorize time."""
    wide = child_of(chain.grants[2], bot, sub, [Rule("*/*"), Rule("admin/*")])
    verified = verifier.verify_chain(with_leaf(chain, wide))
    error = denial(
        lambda: verifier.authorize(verified, "admin/delete_user", {}), DeniedError, "out_of_scope"
    )
    assert error.link == 0
    error = denial(
        lambda: verifier.authorize(verified, "fs/read_secrets", {}), DeniedError, "out_of_scope"
    )
    assert error.link == 1
    assert verifier.authorize(verified, "tickets/close", {}).rules == (0, 0, 0, 0)


def test_child_dropping_a_predicate_is_still_bound_by_it(
    chain: Delegation, verifier: Verifier, bot: Identity, sub: Identity
) -> None:
    wide = child_of(chain.grants[2], bot, sub, [Rule("billing/refund")])
    verified = verifier.verify_chain(with_leaf(chain, wide))
    error = denial(
        lambda: verifier.authorize(verified, "billing/refund", {"amount": 900}),
        DeniedError,
        "predicate_failed",
    )
    assert (error.link, error.rule) == (1, 1)
    error = denial(
        lambda: verifier.authorize(verified, "billing/refund", {"amount": 5000}),
        DeniedError,
        "predicate_failed",
    )
    assert error.link == 0


def test_child_dropping_approval_still_needs_it(
    chain: Delegation, verifier: Verifier, bot: Identity, sub: Identity
) -> None:
    wide = child_of(chain.grants[2], bot, sub, [Rule("billing/refund"), Rule("*/*")])
    verified = verifier.verify_chain(with_leaf(chain, wide))
    match = verifier.authorize(verified, "billing/refund", {"amount": 10})
    assert match.needs_approval
    assert match.approval_rules == ((1, 1),)


# --- time ---------------------------------------------------------------------------------------


def test_expired_link_is_refused_after_the_leeway(
    chain: Delegation, verifier: Verifier, clock: ManualClock
) -> None:
    expiry = chain.leaf.expires_at
    clock.set(expiry + 4.999)
    verifier.verify_chain(chain)
    clock.set(expiry + 5)
    error = denial(lambda: verifier.verify_chain(chain), DeniedError, "link_expired")
    assert error.link == 3
    clock.set(chain.grants[2].expires_at + 60)
    error = denial(lambda: verifier.verify_chain(chain), DeniedError, "link_expired")
    assert error.link == 2


def test_not_yet_valid_link_is_refused_before_the_leeway(
    clock: ManualClock, verifier: Verifier, org: Identity, team: Identity, bot: Identity
) -> None:
    start = clock.now() + 600
    root = Delegation.issue(org, team, ["*/*"], ttl="1h", not_before=start, clock=clock)
    chain = root.attenuate(team, bot, ["tickets/*"], clock=clock)
    error = denial(lambda: verifier.verify_chain(chain), DeniedError, "link_not_yet_valid")
    assert error.link == 0
    clock.set(start - 5.001)
    denial(lambda: verifier.verify_chain(chain), DeniedError, "link_not_yet_valid")
    clock.set(start - 5)
    verifier.verify_chain(chain)


def test_link_issued_in_the_future_is_refused(
    chain: Delegation, verifier: Verifier, clock: ManualClock, bot: Identity, sub: Identity
) -> None:
    future = child_of(
        chain.grants[2], bot, sub, [Rule("tickets/*")], issued_at=int(clock.now()) + 60
    )
    error = denial(
        lambda: verifier.verify_chain(with_leaf(chain, future)), DeniedError, "link_not_yet_valid"
    )
    assert error.link == 3


def test_cached_links_are_still_checked_for_time(
    chain: Delegation, verifier: Verifier, clock: ManualClock
) -> None:
    verifier.verify_chain(chain)
    clock.advance(3600 + 5)
    denial(lambda: verifier.verify_chain(chain), DeniedError, "link_expired")


# --- revocation ---------------------------------------------------------------------------------


def test_revoked_ancestor_link_kills_every_descendant(
    chain: Delegation,
    verifier: Verifier,
    store: MemoryStore,
    clock: ManualClock,
    sub: Identity,
    bot: Identity,
) -> None:
    deeper = chain.attenuate(sub, bot, ["tickets/read"], clock=clock)
    verifier.verify_chain(deeper)  # cached
    store.revoke("link", chain.link_ids[1], reason="incident closed", at=clock.now())
    for delegation in (chain, deeper, Delegation(chain.grants[:3])):
        error = denial(partial(verifier.verify_chain, delegation), DeniedError, "revoked")
        assert error.link == 1
    verifier.verify_chain(Delegation(chain.grants[:1]))


def test_revoked_key_is_refused(
    chain: Delegation, verifier: Verifier, store: MemoryStore, clock: ManualClock, alice: Identity
) -> None:
    store.revoke("key", alice.kid, reason="laptop stolen", at=clock.now())
    error = denial(lambda: verifier.verify_chain(chain), DeniedError, "revoked")
    assert error.link == 1


def test_revoked_root_key_is_refused(
    chain: Delegation, verifier: Verifier, store: MemoryStore, clock: ManualClock, org: Identity
) -> None:
    store.revoke("key", org.kid, reason="rotated", at=clock.now())
    error = denial(lambda: verifier.verify_chain(chain), DeniedError, "revoked")
    assert error.link == 0


def test_revoked_principal_is_refused(
    chain: Delegation, verifier: Verifier, store: MemoryStore, clock: ManualClock
) -> None:
    store.revoke("principal", "agent:bot", reason="decommissioned", at=clock.now())
    error = denial(lambda: verifier.verify_chain(chain), DeniedError, "revoked")
    assert error.link == 2


def test_revocation_of_another_link_does_not_spill_over(
    chain: Delegation,
    verifier: Verifier,
    store: MemoryStore,
    clock: ManualClock,
    sub: Identity,
    bot: Identity,
) -> None:
    sibling = Delegation(chain.grants[:3]).attenuate(bot, sub, ["tickets/read"], clock=clock)
    store.revoke("link", chain.leaf.link_id, reason="test", at=clock.now())
    denial(lambda: verifier.verify_chain(chain), DeniedError, "revoked")
    verifier.verify_chain(sibling)


# --- call tokens -------------------------------------------------------------------------------


@pytest.fixture
def verified(chain: Delegation, verifier: Verifier) -> VerifiedChain:
    return verifier.verify_chain(chain)


def test_call_token_replay_is_refused(
    chain: Delegation,
    verifier: Verifier,
    verified: VerifiedChain,
    sub: Identity,
    clock: ManualClock,
) -> None:
    token = chain.mint_call_token(sub, "tickets/read", {"id": 1}, clock=clock)
    verifier.verify_call_token(verified, token, tool="tickets/read", args={"id": 1}, consume=False)
    verifier.verify_call_token(verified, token, tool="tickets/read", args={"id": 1})
    denial(
        lambda: verifier.verify_call_token(verified, token, tool="tickets/read", args={"id": 1}),
        DeniedError,
        "call_token_replayed",
    )
    denial(
        lambda: verifier.accept_minted(verified, token, tool="tickets/read", args={"id": 1}),
        DeniedError,
        "call_token_replayed",
    )


def test_call_token_replay_is_refused_by_another_verifier_sharing_the_store(
    chain: Delegation,
    verifier: Verifier,
    org: Identity,
    store: MemoryStore,
    sub: Identity,
    clock: ManualClock,
) -> None:
    token = chain.mint_call_token(sub, "tickets/read", {}, clock=clock)
    verifier.verify_call_token(verifier.verify_chain(chain), token, tool="tickets/read", args={})
    replica = Verifier([org.principal], revocations=store, replay=store, clock=clock)
    denial(
        lambda: replica.verify_call_token(
            replica.verify_chain(chain), token, tool="tickets/read", args={}
        ),
        DeniedError,
        "call_token_replayed",
    )


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("tickets/read", {"id": 2}),
        ("tickets/read", {"id": 1, "extra": True}),
        ("tickets/read", {"id": "1"}),
        ("tickets/read", {}),
        ("tickets/comment", {"id": 1}),
    ],
)
def test_call_token_is_bound_to_its_tool_and_arguments(
    chain: Delegation,
    verifier: Verifier,
    verified: VerifiedChain,
    sub: Identity,
    clock: ManualClock,
    tool: str,
    args: dict[str, Any],
) -> None:
    token = chain.mint_call_token(sub, "tickets/read", {"id": 1}, clock=clock)
    denial(
        lambda: verifier.verify_call_token(verified, token, tool=tool, args=args),
        DeniedError,
        "call_token_mismatch",
    )
    # A refused mismatch does not burn the token.
    verifier.verify_call_token(verified, token, tool="tickets/read", args={"id": 1})


def test_call_token_is_bound_to_its_delegation(
    chain: Delegation,
    verifier: Verifier,
    verified: VerifiedChain,
    clock: ManualClock,
    org: Identity,
    team: Identity,
    alice: Identity,
    bot: Identity,
    sub: Identity,
) -> None:
    """Same holder, same key, but minted for a sibling chain."""
    other = sibling_chain(clock, org, team, alice, bot, sub)
    token = other.mint_call_token(sub, "tickets/read", {}, clock=clock)
    denial(
        lambda: verifier.verify_call_token(verified, token, tool="tickets/read", args={}),
        DeniedError,
        "call_token_mismatch",
    )
    parent_token = mint_call_token(
        sub, leaf_link_id=chain.grants[2].link_id, tool="tickets/read", args={}, now=clock.now()
    )
    denial(
        lambda: verifier.verify_call_token(verified, parent_token, tool="tickets/read", args={}),
        DeniedError,
        "call_token_mismatch",
    )


def test_call_token_is_bound_to_its_audience(
    chain: Delegation,
    verifier: Verifier,
    verified: VerifiedChain,
    sub: Identity,
    clock: ManualClock,
) -> None:
    token = chain.mint_call_token(sub, "tickets/read", {}, clock=clock)
    denial(
        lambda: verifier.verify_call_token(
            verified, token, tool="tickets/read", args={}, audience="tickets-replica"
        ),
        DeniedError,
        "call_token_mismatch",
    )
    elsewhere = mint_call_token(
        sub,
        leaf_link_id=chain.leaf.link_id,
        tool="tickets/read",
        args={},
        now=clock.now(),
        audience="billing",
    )
    denial(
        lambda: verifier.verify_call_token(verified, elsewhere, tool="tickets/read", args={}),
        DeniedError,
        "call_token_mismatch",
    )
    verifier.verify_call_token(
        verified, elsewhere, tool="tickets/read", args={}, audience="billing"
    )


def test_call_token_signed_by_a_non_holder_is_refused(
    chain: Delegation,
    verifier: Verifier,
    verified: VerifiedChain,
    bot: Identity,
    clock: ManualClock,
) -> None:
    """The parent (bot) signs a call token for its sub-agent's delegation."""
    token = mint_call_token(
        bot, leaf_link_id=chain.leaf.link_id, tool="tickets/read", args={}, now=clock.now()
    )
    denial(
        lambda: verifier.verify_call_token(verified, token, tool="tickets/read", args={}),
        DeniedError,
        "call_token_signer",
    )


def test_call_token_claiming_the_holder_but_signed_elsewhere_is_refused(
    chain: Delegation,
    verifier: Verifier,
    verified: VerifiedChain,
    sub: Identity,
    clock: ManualClock,
) -> None:
    header, claims, _ = segments(chain.mint_call_token(sub, "tickets/read", {}, clock=clock))
    forged = hand_signed(header, claims, Identity.generate("agent:sub"))
    denial(
        lambda: verifier.verify_call_token(verified, forged, tool="tickets/read", args={}),
        DeniedError,
        "bad_signature",
    )
    header, claims, signature = segments(
        chain.mint_call_token(sub, "tickets/read", {}, clock=clock)
    )
    claims["tool"] = "tickets/comment"
    tampered = f"{b64json(header)}.{b64json(claims)}.{signature}"
    denial(
        lambda: verifier.verify_call_token(verified, tampered, tool="tickets/comment", args={}),
        DeniedError,
        "bad_signature",
    )


def test_call_token_expires_after_the_leeway(
    chain: Delegation,
    verifier: Verifier,
    verified: VerifiedChain,
    sub: Identity,
    clock: ManualClock,
) -> None:
    token = chain.mint_call_token(sub, "tickets/read", {}, ttl=30, clock=clock)
    clock.advance(30 + 4.999)
    verifier.verify_call_token(verified, token, tool="tickets/read", args={}, consume=False)
    clock.advance(0.001)
    denial(
        lambda: verifier.verify_call_token(verified, token, tool="tickets/read", args={}),
        DeniedError,
        "call_token_expired",
    )


def _call_claims(chain: Delegation, now: float, **changes: Any) -> dict[str, Any]:
    claims = {
        "ver": FORMAT_VERSION,
        "iss": chain.holder,
        "aud": "tickets",
        "tool": "tickets/read",
        "args": args_digest({}),
        "prf": chain.leaf.link_id,
        "iat": int(now),
        "exp": int(now) + 30,
        "jti": "nonce-1",
    }
    claims.update(changes)
    return claims


def test_long_lived_or_future_call_tokens_are_refused(
    chain: Delegation,
    verifier: Verifier,
    verified: VerifiedChain,
    sub: Identity,
    clock: ManualClock,
) -> None:
    header = {"alg": "EdDSA", "typ": TYP_CALL, "kid": sub.kid}
    now = clock.now()
    long_lived = hand_signed(header, _call_claims(chain, now, exp=int(now) + 86400), sub)
    denial(
        lambda: verifier.verify_call_token(verified, long_lived, tool="tickets/read", args={}),
        DeniedError,
        "call_token_lifetime",
    )
    future = hand_signed(
        header, _call_claims(chain, now, iat=int(now) + 60, exp=int(now) + 90), sub
    )
    denial(
        lambda: verifier.verify_call_token(verified, future, tool="tickets/read", args={}),
        DeniedError,
        "call_token_expired",
    )
    with pytest.raises(ValueError, match="ttl"):
        chain.mint_call_token(sub, "tickets/read", {}, ttl=301, clock=clock)


@pytest.mark.parametrize(
    "changes",
    [
        {"ver": 2},
        {"tool": "tickets/../admin"},
        {"tool": "tickets/*"},
        {"iss": "mallory"},
        {"jti": ""},
        {"exp": -1},
        {"exp": 1.5},
        {"args": None},
    ],
)
def test_malformed_call_claims_are_refused(
    chain: Delegation,
    verifier: Verifier,
    verified: VerifiedChain,
    sub: Identity,
    clock: ManualClock,
    changes: dict[str, Any],
) -> None:
    header = {"alg": "EdDSA", "typ": TYP_CALL, "kid": sub.kid}
    token = hand_signed(header, _call_claims(chain, clock.now(), **changes), sub)
    reason = "bad_version" if "ver" in changes else "malformed_token"
    denial(
        lambda: verifier.verify_call_token(verified, token, tool="tickets/read", args={}),
        TokenFormatError,
        reason,
    )


def test_non_json_arguments_are_refused(
    chain: Delegation,
    verifier: Verifier,
    verified: VerifiedChain,
    sub: Identity,
    clock: ManualClock,
) -> None:
    token = chain.mint_call_token(sub, "tickets/read", {}, clock=clock)
    denial(
        lambda: verifier.verify_call_token(
            verified, token, tool="tickets/read", args={"x": float("nan")}
        ),
        DeniedError,
        "invalid_arguments",
    )
    denial(lambda: verifier.authorize(verified, "tickets/../x", {}), DeniedError, "invalid_tool")


# --- size and shape ------------------------------------------------------------------------


def test_oversized_delegation_is_refused_before_parsing(
    chain: Delegation, verifier: Verifier
) -> None:
    text = chain.serialize()
    huge = joined([text] * (MAX_DELEGATION_BYTES // len(text) + 1))
    assert len(huge) > MAX_DELEGATION_BYTES
    denial(lambda: verifier.verify_chain(huge), TokenFormatError, "oversized")
    denial(lambda: verifier.verify_chain("x" * (16 * 1024 + 1)), TokenFormatError, "oversized")
    denial(lambda: Delegation.parse("x" * (16 * 1024 + 1)), TokenFormatError, "oversized")


def test_too_many_links_are_refused_before_parsing(verifier: Verifier) -> None:
    denial(lambda: verifier.verify_chain(joined(["x"] * 9)), TokenFormatError, "chain_too_long")
    denial(lambda: verifier.verify_chain(joined(["x"] * 65)), TokenFormatError, "chain_too_long")
    denial(lambda: Delegation.parse(joined(["x"] * 9)), TokenFormatError, "chain_too_long")


def test_a_genuine_chain_longer_than_the_cap_is_refused(
    chain: Delegation, clock: ManualClock, org: Identity, team: Identity, store: MemoryStore
) -> None:
    strict = Verifier([org.principal], revocations=store, replay=store, clock=clock, max_links=3)
    denial(lambda: strict.verify_chain(chain), DeniedError, "chain_too_long")
    root = Delegation.issue(org, team, ["*/*"], ttl="1h", max_depth=20, clock=clock)
    long = root
    for _ in range(8):
        long = long.attenuate(team, team, ["*/*"], clock=clock)
    lenient = Verifier([org.principal], revocations=store, clock=clock, max_links=9)
    lenient.verify_chain(long)
    default = Verifier([org.principal], revocations=store, clock=clock)
    denial(lambda: default.verify_chain(long), DeniedError, "chain_too_long")


def test_deeply_nested_json_is_refused(
    chain: Delegation, verifier: Verifier, org: Identity
) -> None:
    header, claims, _ = segments(chain.root.token)
    depth = 2500
    nested = "[" * depth + "]" * depth
    payload = b64url_encode(('{"meta":{"x":' + nested + "}}").encode())
    forged = f"{b64json(header)}.{payload}.{b64url_encode(b'0' * 64)}"
    assert len(forged) < 8192
    denial(lambda: verifier.verify_chain(forged), TokenFormatError, "malformed_token")
    deep_header = b64url_encode(('{"alg":"EdDSA","x":' + nested + "}").encode())
    forged = f"{deep_header}.{b64json(claims)}.{b64url_encode(b'0' * 64)}"
    denial(lambda: verifier.verify_chain(forged), TokenFormatError, "malformed_token")
    nested_where: Any = ["==", ".a", 1]
    for _ in range(40):
        nested_where = ["not", nested_where]
    deep_rule = {"tool": "tickets/*", "where": [nested_where]}
    signed_deep = hand_signed(header, {**claims, "scope": [deep_rule]}, org)
    denial(lambda: verifier.verify_chain(signed_deep), TokenFormatError, "malformed_token")


@pytest.mark.parametrize(
    "meta",
    ['{"x":NaN}', '{"x":Infinity}', '{"x":-Infinity}', '{"x":100000000000000000000}', "[1]"],
)
def test_non_canonical_json_in_a_grant_is_malformed(
    chain: Delegation, verifier: Verifier, org: Identity, meta: str
) -> None:
    """Values without an RFC 8785 form are refused as malformed, never as a crash."""
    header, claims, _ = segments(chain.root.token)
    body = json.dumps(claims, separators=(",", ":"))[:-1] + ',"meta":' + meta + "}"
    signing_input = f"{b64json(header)}.{b64url_encode(body.encode())}"
    forged = f"{signing_input}.{b64url_encode(org.sign(signing_input.encode()))}"
    denial(lambda: verifier.verify_chain(forged), TokenFormatError, "malformed_token")


def test_huge_strings_are_refused(chain: Delegation, verifier: Verifier, org: Identity) -> None:
    header, claims, _ = segments(chain.root.token)
    forged = hand_signed(header, {**claims, "purpose": "p" * 10000}, org)
    assert len(forged) < MAX_DELEGATION_BYTES
    denial(lambda: verifier.verify_chain(forged), TokenFormatError, "malformed_token")
    too_long_claim = hand_signed(header, {**claims, "purpose": "p" * 600}, org)
    denial(lambda: verifier.verify_chain(too_long_claim), TokenFormatError, "malformed_token")


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: "!" + t[1:], id="bad-base64-char"),
        pytest.param(lambda t: t.replace(".", "=.", 1), id="padding"),
        pytest.param(lambda t: t.replace(".", "..", 1), id="empty-segment"),
        pytest.param(lambda t: "." + t, id="leading-dot"),
        pytest.param(lambda t: t + ".x", id="four-segments"),
        pytest.param(lambda t: t.split(".")[0], id="one-segment"),
        pytest.param(lambda t: t[:-1] + "é", id="non-ascii"),
        pytest.param(lambda t: t[:20] + "\u200b" + t[20:], id="zero-width-space"),
        pytest.param(lambda t: t[:20] + " " + t[20:], id="inner-space"),
        pytest.param(lambda t: "e30." + t.split(".", 1)[1], id="empty-header-object"),
        pytest.param(lambda t: "W10." + t.split(".", 1)[1], id="header-is-an-array"),
        pytest.param(lambda t: t.split(".")[0] + ".bnVsbA." + t.split(".")[2], id="null-payload"),
        pytest.param(lambda t: t.split(".")[0] + ".gA." + t.split(".")[2], id="not-utf8"),
    ],
)
def test_malformed_links_are_refused(
    chain: Delegation, verifier: Verifier, mangle: Callable[[str], str]
) -> None:
    for index in (0, 2):
        text = replaced(chain, index, mangle(chain.grants[index].token))
        reason = "bad_algorithm" if "e30." in text else "malformed_token"
        error = denial(partial(verifier.verify_chain, text), TokenFormatError, reason)
        assert error.link == index


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda ts: "~".join([ts[0], "", *ts[1:]]), id="double-tilde"),
        pytest.param(lambda ts: "~".join(ts) + "~", id="trailing-tilde"),
        pytest.param(lambda ts: "~" + "~".join(ts), id="leading-tilde"),
        pytest.param(lambda ts: "~~", id="only-tildes"),
        pytest.param(lambda ts: "", id="empty"),
        pytest.param(lambda ts: "~".join(ts).replace("~", " ~ ", 1), id="spaces-around-tilde"),
    ],
)
def test_malformed_delegation_strings_are_refused(
    chain: Delegation, verifier: Verifier, shape: Callable[[list[str]], str]
) -> None:
    text = shape(links(chain))
    denial(lambda: verifier.verify_chain(text), TokenFormatError, "malformed_token")
    with pytest.raises(TokenFormatError):
        Delegation.parse(text)


def test_non_string_delegations_are_refused(verifier: Verifier) -> None:
    denial(lambda: verifier.verify_chain(b"a.b.c"), TokenFormatError, "malformed_token")  # type: ignore[arg-type]
    denial(lambda: verifier.verify_chain(None), TokenFormatError, "malformed_token")  # type: ignore[arg-type]


# --- what errors reveal ----------------------------------------------------------------------


def test_errors_never_contain_tokens_or_argument_values(
    chain: Delegation,
    verifier: Verifier,
    verified: VerifiedChain,
    sub: Identity,
    bot: Identity,
    clock: ManualClock,
    store: MemoryStore,
) -> None:
    canary = "CANARY-7f3a9c"
    secret_args = {"amount": 987654, "note": canary, "card": "4111111111111111"}
    token = chain.mint_call_token(sub, "billing/refund", secret_args, clock=clock)
    tampered = token[:-8] + ("A" * 8 if not token.endswith("A" * 8) else "B" * 8)
    attacks: list[Callable[[], object]] = [
        lambda: verifier.authorize(verified, "billing/refund", secret_args),
        lambda: verifier.authorize(verified, "admin/x", secret_args),
        lambda: verifier.verify_call_token(
            verified, token, tool="billing/refund", args={**secret_args, "amount": 1}
        ),
        lambda: verifier.verify_call_token(
            verified, tampered, tool="billing/refund", args=secret_args
        ),
        lambda: verifier.verify_call_token(
            verified, token + "x", tool="billing/refund", args=secret_args
        ),
        lambda: verifier.verify_call_token(
            verified, chain.leaf.token, tool="billing/refund", args=secret_args
        ),
        lambda: verifier.verify_call_token(
            verified, token, tool="billing/refund", args={"note": canary, "bad": float("inf")}
        ),
        lambda: verifier.verify_chain(chain.serialize()[:-5]),
        lambda: verifier.verify_chain(chain.serialize() + "~" + token),
        lambda: verifier.verify_chain(replaced(chain, 1, chain.grants[2].token)),
        lambda: verifier.verify_chain("~".join(links(chain)[1:])),
    ]
    secrets = [canary, "987654", "4111111111111111", token, *token.split("."), chain.serialize()]
    secrets += [part for grant in chain for part in grant.token.split(".")]
    for attack in attacks:
        with pytest.raises(DeniedError) as info:
            attack()
        error = info.value
        for text in (str(error), error.explanation, error.short, repr(error)):
            for secret in secrets:
                assert secret not in text, (error.reason, text)
    # What the operator sees still names the link; what the agent sees is the code alone.
    clock.advance(2 * 3600)
    with pytest.raises(DeniedError) as info:
        verifier.verify_chain(chain)
    assert "agent:bot -> agent:sub" in info.value.explanation
    assert info.value.short == "denied by agentguard (link_expired)"


class _SizedStore(MemoryStore):
    """A store that reports a size of zero, as a dict-like store would when it is empty."""

    def __len__(self) -> int:
        return 0


def test_a_falsy_revocation_store_is_still_consulted(
    chain: Delegation, org: Identity, clock: ManualClock
) -> None:
    store = _SizedStore()
    assert not store
    verifier = Verifier([org.principal], revocations=store, clock=clock)
    assert verifier.revocations is store
    store.revoke("link", chain.root.link_id, reason="test", at=clock.now())
    denial(lambda: verifier.verify_chain(chain), DeniedError, "revoked")
