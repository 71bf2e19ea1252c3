"""Signed tokens whose JSON repeats a key are refused: which value counts would be a guess.

Python's json keeps the last of two equal keys, other parsers the first; a token
signed with ``"scope"`` twice could mean one thing here and another downstream.
Each attack is signed with the right key, so only the duplicate can be the reason.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard import _jws
from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.errors import TokenFormatError
from agentguard.keys import Identity, b64url_encode
from agentguard.testing import START
from agentguard.tokens import TYP_GRANT, mint_call_token
from agentguard.verify import Verifier
from tests.test_verify_attacks import denial, segments


def _raw(text: str) -> str:
    return b64url_encode(text.encode("utf-8"))


def _signed(header_json: str, payload_json: str, signer: Identity) -> str:
    signing_input = f"{_raw(header_json)}.{_raw(payload_json)}"
    return f"{signing_input}.{b64url_encode(signer.sign(signing_input.encode('ascii')))}"


def _with_extra(obj: dict[str, Any], key: str, value: Any) -> str:
    """``obj`` as JSON with ``key`` written once more at the end (a duplicate)."""
    text = json.dumps(obj, separators=(",", ":"))
    return f"{text[:-1]},{json.dumps(key)}:{json.dumps(value)}}}"


def test_a_grant_with_a_second_wider_scope_is_refused(
    org: Identity, bot: Identity, clock: ManualClock, verifier: Verifier
) -> None:
    """``"scope"`` twice (the second ``*/*``), signed by the trusted root: malformed_token."""
    good = Delegation.issue(org, bot, ["tickets/read"], ttl="1h", clock=clock)
    header, claims, _ = segments(good.root.token)
    forged = _signed(json.dumps(header), _with_extra(claims, "scope", [{"tool": "*/*"}]), org)
    error = denial(lambda: verifier.verify_chain(forged), TokenFormatError, "malformed_token")
    assert "duplicate" in error.explanation


def test_a_duplicate_inside_a_rule_is_refused(
    org: Identity, bot: Identity, clock: ManualClock, verifier: Verifier
) -> None:
    """Nested objects count too: ``{"tool": "tickets/read", "tool": "*/*"}``."""
    good = Delegation.issue(org, bot, ["tickets/read"], ttl="1h", clock=clock)
    header, claims, _ = segments(good.root.token)
    claims["scope"] = ["RULE"]
    payload = json.dumps(claims, separators=(",", ":")).replace(
        '"RULE"', '{"tool":"tickets/read","tool":"*/*"}'
    )
    forged = _signed(json.dumps(header), payload, org)
    denial(lambda: verifier.verify_chain(forged), TokenFormatError, "malformed_token")


def test_a_duplicate_header_parameter_is_refused(
    org: Identity, bot: Identity, clock: ManualClock, verifier: Verifier
) -> None:
    """``"typ"`` twice in the protected header: malformed_token, whatever the second says."""
    good = Delegation.issue(org, bot, ["tickets/read"], ttl="1h", clock=clock)
    header, claims, _ = segments(good.root.token)
    forged = _signed(_with_extra(header, "typ", TYP_GRANT), json.dumps(claims), org)
    denial(lambda: verifier.verify_chain(forged), TokenFormatError, "malformed_token")


def test_a_call_token_with_a_duplicate_tool_claim_is_refused(
    chain: Delegation, sub: Identity, verifier: Verifier
) -> None:
    """A call token signed by the holder naming ``tool`` twice is refused before any binding."""
    verified = verifier.verify_chain(chain)
    token = mint_call_token(
        sub, leaf_link_id=chain.leaf.link_id, tool="tickets/read", args={}, now=START
    )
    header, claims, _ = segments(token)
    forged = _signed(json.dumps(header), _with_extra(claims, "tool", "tickets/read"), sub)
    denial(
        lambda: verifier.verify_call_token(verified, forged, tool="tickets/read", args={}),
        TokenFormatError,
        "malformed_token",
    )


@given(st.dictionaries(st.text(max_size=8), st.integers(), min_size=1, max_size=5), st.data())
@settings(max_examples=100, deadline=None)
def test_any_payload_repeating_a_key_is_refused(obj: dict[str, int], data: st.DataObject) -> None:
    """Whatever the object, repeating one of its keys makes the payload unparseable."""
    key = data.draw(st.sampled_from(sorted(obj)))
    payload = _with_extra(obj, key, 0)
    token = f"{_raw(json.dumps({'alg': 'EdDSA', 'typ': TYP_GRANT}))}.{_raw(payload)}.AAAA"
    with pytest.raises(TokenFormatError, match="duplicate"):
        _jws.peek(token, TYP_GRANT)
    plain = f"{token.rsplit('.', 2)[0]}.{_raw(json.dumps(obj))}.AAAA"
    assert _jws.peek(plain, TYP_GRANT)[1] == obj
