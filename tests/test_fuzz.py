"""Fuzzing every parser that meets untrusted input (hypothesis).

Delegation strings, call tokens, approval receipts, predicates and policy files
are mutated from real ones (bit flips, segment swaps, truncation, random ``~``
joins, random base64url of random JSON) or signed with real keys over random
claims. The only acceptable outcomes are a valid result or a clean
:class:`~agentguard.errors.AgentGuardError` (denial, format, predicate, config
or identity error): no other exception and no hang (a per-example deadline).
``AGENTGUARD_HARDENING=1`` raises the example counts tenfold and more.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from agentguard import _jws
from agentguard.approval import QueueChannel
from agentguard.delegation import Delegation
from agentguard.errors import AgentGuardError, ApprovalPending, DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.policy import load_policy
from agentguard.predicates import Truth, compile_predicate, evaluate, validate_predicate
from agentguard.store.base import ApprovalRow
from agentguard.store.memory import MemoryStore
from agentguard.testing import World
from agentguard.tokens import TYP_APPROVAL, TYP_CALL, TYP_GRANT, CallClaims
from agentguard.verify import Verifier

HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"
FUZZ = settings(
    max_examples=5000 if HARDENING else 200,
    deadline=timedelta(seconds=1),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
_T = TypeVar("_T")

TOOL = "tickets/read"
ARGS: dict[str, Any] = {"ticket": 7}


def clean(fn: Callable[[], _T]) -> _T | None:
    """Run ``fn``; a clean AgentGuardError is fine, anything else fails the example."""
    try:
        return fn()
    except AgentGuardError:
        return None


def attempt(fn: Callable[[], _T]) -> tuple[_T | None, DeniedError | None]:
    """Run ``fn``: its result, or the refusal it raised (any other exception escapes)."""
    try:
        return fn(), None
    except DeniedError as refusal:
        return None, refusal


# -- fixtures built once per module: a real world with real tokens ----------------------------


class Corpus:
    """Real tokens to mutate, and the guard/verifier that must withstand them."""

    def __init__(self) -> None:
        self.world: World = World()
        world = self.world
        self.guard: Guard = world.guard(
            approver=QueueChannel(), approval_mode="raise", approval={"channel": "queue"}
        )
        self.delegation = world.delegation
        self.text = world.delegation.serialize()
        self.links = self.text.split("~")
        self.call_token = world.delegation.mint_call_token(world.bot, TOOL, ARGS, clock=world.clock)
        with pytest.raises(ApprovalPending) as info:
            self.guard.call(
                world.delegation, "admin/reset", {"x": 1}, lambda **kw: None, holder=world.bot
            )
        self.receipt = self.guard.approvals.approve(info.value.request_id, world.carol)
        row = self.guard.store.approval_get(info.value.request_id)
        assert row is not None
        self.row: ApprovalRow = row
        self.tokens = [*self.links, self.call_token, self.receipt]
        # Shared by the call-token targets: replays of the one real token are clean denials.
        self.call_verifier = self.verifier()
        self.chain = self.call_verifier.verify_chain(self.text)

    def verifier(self) -> Verifier:
        """A fresh verifier (fresh replay store, no cached links)."""
        store = MemoryStore()
        return Verifier(
            [self.world.org.principal], revocations=store, replay=store, clock=self.world.clock
        )


_CORPUS: Corpus | None = None


def corpus() -> Corpus:
    global _CORPUS  # built once: key generation and signing are slow
    if _CORPUS is None:
        _CORPUS = Corpus()
    return _CORPUS


# -- strategies ---------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@st.composite
def random_jws(draw: st.DrawFn) -> str:
    """Three base64url segments of random JSON (sometimes a plausible header)."""
    typ = draw(st.sampled_from([TYP_GRANT, TYP_CALL, TYP_APPROVAL, "JWT"]))
    header: Any = draw(
        st.sampled_from([{"alg": "EdDSA", "typ": typ, "kid": "k"}, {"alg": "none", "typ": typ}])
        | json_values
    )
    payload = draw(json_values)
    sig = draw(st.binary(max_size=80))
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(sig)])


@st.composite
def mutated(draw: st.DrawFn, base: list[str]) -> str:
    """A real token or delegation string, damaged in one or a few ways."""
    text = draw(st.sampled_from(base))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "swap", "truncate", "join", "splice", "random"]))
        if op == "flip" and text:
            i = draw(st.integers(0, len(text) - 1))
            bit = draw(st.integers(0, 7))
            text = text[:i] + chr(ord(text[i]) ^ (1 << bit)) + text[i + 1 :]
        elif op == "swap":
            sep = draw(st.sampled_from([".", "~"]))
            parts = text.split(sep)
            if len(parts) > 1:
                i, j = draw(st.integers(0, len(parts) - 1)), draw(st.integers(0, len(parts) - 1))
                parts[i], parts[j] = parts[j], parts[i]
            text = sep.join(parts)
        elif op == "truncate" and text:
            text = text[: draw(st.integers(0, len(text) - 1))]
        elif op == "join":
            pieces = draw(st.lists(st.sampled_from(base) | random_jws(), min_size=1, max_size=9))
            text = "~".join(pieces)
        elif op == "splice":
            parts = text.split(".")
            other = draw(st.sampled_from(base)).split(".")
            i = draw(st.integers(0, 2))
            if len(parts) == 3 and len(other) >= 3:
                parts[i] = other[i]
            text = ".".join(parts)
        elif op == "random":
            text = draw(random_jws() | st.text(max_size=200))
    return text


GRANT_KEYS = [
    "ver", "iss", "sub", "cnf", "iat", "nbf", "exp", "jti", "scope", "max_depth", "prf",
    "purpose", "on_behalf_of", "meta",
]  # fmt: skip


@st.composite
def hostile_claims(draw: st.DrawFn, base: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Real claims with some members replaced by random JSON or removed."""
    claims = dict(base)
    for key in draw(st.lists(st.sampled_from(keys), max_size=4)):
        if draw(st.booleans()):
            claims[key] = draw(json_values)
        else:
            claims.pop(key, None)
    if draw(st.booleans()):
        claims["scope"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"tool": st.sampled_from(["tickets/*", "*/*", "a", "tickets/read"])},
                    optional={"where": json_values, "approval": json_values},
                ),
                max_size=3,
            )
        )
    return claims


# -- delegations and the verifier -------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_delegations_parse_cleanly(data: st.DataObject) -> None:
    """Delegation.parse on damaged strings: a Delegation or a clean error."""
    c = corpus()
    text = data.draw(mutated([c.text, *c.links]))
    parsed = clean(lambda: Delegation.parse(text))
    if parsed is not None:
        assert len(parsed) >= 1
        assert parsed.serialize() == text.strip()


@FUZZ
@given(data=st.data())
def test_mutated_delegations_verify_cleanly(data: st.DataObject) -> None:
    """verify_chain/authorize on damaged strings: never an unexpected exception."""
    c = corpus()
    text = data.draw(mutated([c.text, *c.links]))
    verifier = c.verifier()
    chain = clean(lambda: verifier.verify_chain(text))
    if chain is not None:
        # Only a byte-identical chain (or one of its valid prefixes) verifies.
        assert c.text.startswith(chain.delegation.serialize())
        clean(lambda: verifier.authorize(chain, TOOL, ARGS))


#: Claims no grant does without: a root missing one is a malformed token.
REQUIRED_GRANT_CLAIMS = frozenset(
    {"ver", "iss", "sub", "cnf", "iat", "nbf", "exp", "jti", "scope", "max_depth"}
)
#: The refusals a root grant signed by the trusted key over hostile claims may earn.
HOSTILE_ROOT_REFUSALS = frozenset(
    {
        "malformed_token",  # a claim is missing, mistyped or out of range
        "bad_version",  # 'ver' is not the supported format version
        "untrusted_root",  # 'iss' names someone other than the trusted root
        "broken_chain",  # the children's 'prf' no longer names this root
        "link_expired",
        "link_not_yet_valid",
        "oversized",
        "widened_window",
        "depth_exceeded",
    }
)
_LONG_B64 = re.compile(r"[A-Za-z0-9_-]{40,}")


@FUZZ
@given(data=st.data())
def test_signed_hostile_grants_are_refused_precisely(data: st.DataObject) -> None:
    """A trusted issuer's key signing random claims: refused with a precise reason unless
    the claims still make a valid grant, and then the verified root is exactly what was signed.
    """
    c = corpus()
    _, claims = _jws.peek(c.delegation.root.token, TYP_GRANT)
    hostile = data.draw(hostile_claims(claims, GRANT_KEYS))
    try:
        token = _jws.sign(hostile, c.world.org, TYP_GRANT)
    except (TypeError, ValueError, OverflowError):
        assume(False)
        return
    with_children = data.draw(st.booleans())
    text = "~".join([token, *c.links[1:]]) if with_children else token
    verifier = c.verifier()
    chain, refusal = attempt(lambda: verifier.verify_chain(text))
    if refusal is not None:
        event(f"refused: {refusal.reason}")
        assert refusal.reason in HOSTILE_ROOT_REFUSALS, refusal.reason
        assert refusal.link == 0 or (with_children and refusal.reason == "broken_chain")
        if not hostile.keys() >= REQUIRED_GRANT_CLAIMS:
            assert refusal.reason in ("malformed_token", "bad_version"), refusal.reason
        for message in (str(refusal), refusal.explanation, refusal.short):
            assert _LONG_B64.search(message) is None, message
        return
    assert chain is not None
    event("accepted")
    # Accepted: every claim a grant needs is there, the issuer is the trusted root,
    # the window holds now, and the verified root is the very token signed.
    assert hostile.keys() >= REQUIRED_GRANT_CLAIMS
    assert hostile["iss"] == c.world.org.id
    now = c.world.clock.now()
    assert hostile["nbf"] <= now + verifier.leeway
    assert now - verifier.leeway < hostile["exp"]
    assert chain.delegation.root.token == token
    # With the children attached, only the untouched root keeps their 'prf' true.
    assert not with_children or hostile == claims
    tool = data.draw(st.sampled_from([TOOL, "a/b"]))
    args = data.draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
    _, denied = attempt(lambda: verifier.authorize(chain, tool, args))
    if denied is not None:
        assert denied.reason in ("out_of_scope", "predicate_failed", "invalid_arguments")


# -- call tokens ---------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_call_tokens_are_handled_cleanly(data: st.DataObject) -> None:
    """CallClaims.parse and verify_call_token on damaged call tokens."""
    c = corpus()
    token = data.draw(mutated([c.call_token, *c.tokens]))
    clean(lambda: CallClaims.parse(token))
    verifier, chain = c.call_verifier, c.chain
    result = clean(lambda: verifier.verify_call_token(chain, token, tool=TOOL, args=ARGS))
    if result is not None:
        assert token == c.call_token


@FUZZ
@given(data=st.data())
def test_signed_hostile_call_tokens_are_handled_cleanly(data: st.DataObject) -> None:
    """The holder's key signing random call-token claims: clean outcomes only."""
    c = corpus()
    _, claims = _jws.peek(c.call_token, TYP_CALL)
    keys = ["ver", "iss", "aud", "tool", "args", "prf", "iat", "exp", "jti"]
    hostile = data.draw(hostile_claims(claims, keys))
    hostile.pop("scope", None)
    try:
        token = _jws.sign(hostile, c.world.bot, TYP_CALL)
    except (TypeError, ValueError, OverflowError):
        assume(False)
        return
    verifier, chain = c.call_verifier, c.chain
    args = data.draw(st.just(ARGS) | st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    clean(lambda: verifier.verify_call_token(chain, token, tool=TOOL, args=args))


# -- approval receipts -----------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_receipts_are_refused_cleanly(data: st.DataObject) -> None:
    """verify_receipt with damaged receipt text in the stored row."""
    c = corpus()
    receipt = data.draw(mutated([c.receipt, *c.tokens]))
    row = replace(c.row, receipt=receipt)
    result = clean(lambda: c.guard.approvals.verify_receipt(row, expected_digest=c.row.call_digest))
    if result is not None:
        assert receipt == c.receipt


@FUZZ
@given(data=st.data())
def test_signed_hostile_receipts_are_handled_cleanly(data: st.DataObject) -> None:
    """Receipts signed by the approver or the guard over random claims: clean outcomes."""
    c = corpus()
    _, claims = _jws.peek(c.receipt, TYP_APPROVAL)
    keys = ["ver", "iss", "approver", "req", "call", "decision", "iat", "exp", "jti", "channel"]
    keys += ["assurance", "msg", "edited", "edited_args"]
    hostile = data.draw(hostile_claims(claims, keys))
    hostile.pop("scope", None)
    signer: Identity = data.draw(st.sampled_from([c.world.carol, c.guard.guard_identity]))
    try:
        token = _jws.sign(hostile, signer, TYP_APPROVAL)
    except (TypeError, ValueError, OverflowError):
        assume(False)
        return
    row = replace(c.row, receipt=token)
    clean(lambda: c.guard.approvals.verify_receipt(row, expected_digest=c.row.call_digest))


# -- predicates ---------------------------------------------------------------------------------

OPS = ["==", "!=", "<", "<=", ">", ">=", "like", "in", "within", "and", "or", "not", "all", "any"]
selectors = st.sampled_from(
    [".", ".a", ".a.b", ".items[0]", ".items[-1]", ".x[", "a", ""]
) | st.text(max_size=12)
predicate_like = st.recursive(
    json_values,
    lambda inner: st.lists(
        st.one_of(st.sampled_from(OPS), selectors, inner), min_size=1, max_size=4
    ),
    max_leaves=30,
)


@FUZZ
@given(spec=predicate_like, args=json_values)
def test_arbitrary_predicates_validate_and_evaluate_cleanly(spec: Any, args: Any) -> None:
    """validate_predicate/compile_predicate on arbitrary JSON; valid ones evaluate to a bool."""
    for parse in (validate_predicate, compile_predicate):
        checked = clean(lambda parse=parse: parse(spec))  # type: ignore[misc]
        if checked is not None:
            assert isinstance(evaluate(checked, args), Truth)
            assert validate_predicate(checked) == checked


# -- policy files -------------------------------------------------------------------------------

POLICY_KEYS = [
    "version", "trusted_roots", "approvers", "limits", "deny", "step_up", "approval",
    "storage", "redact", "shadow", "guard_id", "max_chain_length", "leeway", "tools", "where",
]  # fmt: skip
policy_docs = st.recursive(
    json_values | st.sampled_from(POLICY_KEYS),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(POLICY_KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=30,
)
yaml_noise = st.text(
    alphabet=st.sampled_from(list("abc:- \n\t[]{}&*!|>'\"#%@`,?0123456789.\\")), max_size=300
)


@FUZZ
@given(
    text=policy_docs.map(lambda d: yaml.safe_dump(d, sort_keys=False))
    | policy_docs.map(json.dumps)
    | yaml_noise
    | st.text(max_size=200)
)
def test_arbitrary_policy_files_load_cleanly(
    text: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """load_policy on random YAML/JSON text: a Policy or a ConfigError naming the file."""
    path: Path = tmp_path_factory.mktemp("policy") / "agentguard.yaml"
    try:
        path.write_text(text, encoding="utf-8")
    except UnicodeEncodeError:
        assume(False)
        return
    clean(lambda: load_policy(path))


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """A billion-laughs policy is refused by the predicate budget, not expanded."""
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    lines.append('deny: [{tools: ["a/b"], where: {x: {in: *h}}}]')
    path = tmp_path / "agentguard.yaml"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(AgentGuardError):
        load_policy(path)


@FUZZ
@given(data=st.binary(max_size=300) | st.just(b"version: 1\nlimits:\n  x: 1\xf7\n"))
def test_arbitrary_policy_bytes_load_cleanly(
    data: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Raw bytes (not necessarily UTF-8) as a policy file: a Policy or a ConfigError."""
    path: Path = tmp_path_factory.mktemp("policy") / "agentguard.yaml"
    path.write_bytes(data)
    clean(lambda: load_policy(path))
