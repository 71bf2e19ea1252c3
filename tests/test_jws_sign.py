"""The per-call signer writes PyJWT's bytes, and minted claims are the token's own."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard import _jws
from agentguard.clock import ManualClock
from agentguard.keys import Identity
from agentguard.tokens import TYP_APPROVAL, TYP_CALL, TYP_GRANT, CallClaims, mint_call

HOLDER = Identity.generate("agent:holder")


@pytest.mark.parametrize("typ", [TYP_CALL, TYP_GRANT, TYP_APPROVAL])
def test_sign_call_writes_what_pyjwt_writes(typ: str) -> None:
    """Same header, payload and (deterministic Ed25519) signature as PyJWT's encoder."""
    claims = {"ver": 1, "iss": HOLDER.id, "tool": "kb/search", "iat": 1, "exp": 2, "jti": "x"}
    assert _jws.sign_call(claims, HOLDER, typ) == _jws.sign(claims, HOLDER, typ)


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=12), st.booleans(), st.none()),
        max_size=6,
    )
)
@settings(max_examples=100, deadline=None)
def test_sign_call_matches_pyjwt_on_any_claims(claims: dict[str, Any]) -> None:
    """Non-ASCII text and any key order included: PyJWT's JSON, byte for byte."""
    if "iss" in claims and not isinstance(claims["iss"], str):
        with pytest.raises(TypeError):
            _jws.sign(claims, HOLDER, TYP_CALL)
        with pytest.raises(TypeError):
            _jws.sign_call(claims, HOLDER, TYP_CALL)
        return
    assert _jws.sign_call(claims, HOLDER, TYP_CALL) == _jws.sign(claims, HOLDER, TYP_CALL)


@pytest.mark.parametrize("iss", [0, None, True, ["agent:x"]])
def test_a_non_string_issuer_is_refused_by_both_encoders(iss: object) -> None:
    claims = {"ver": 1, "iss": iss, "tool": "kb/search", "iat": 1, "exp": 2, "jti": "x"}
    with pytest.raises(TypeError, match="Issuer"):
        _jws.sign_call(claims, HOLDER, TYP_CALL)
    with pytest.raises(TypeError, match="Issuer"):
        _jws.sign(claims, HOLDER, TYP_CALL)


def test_minted_claims_are_what_the_token_says() -> None:
    """``mint_call`` returns exactly the claims a verifier parses from its token."""
    clock = ManualClock(1_750_000_000.25)
    minted = mint_call(
        HOLDER,
        leaf_link_id="L" * 43,
        tool="kb/search",
        args={"query": "vpn"},
        now=clock.now(),
        ttl=30,
    )
    assert CallClaims.parse(minted.token) == minted
    assert _jws.verify(minted.token, HOLDER.principal, TYP_CALL)["aud"] == "kb"


def test_minted_claims_are_the_dataclasss_own() -> None:
    """``mint_call`` builds its CallClaims without the dataclass's __init__: same fields."""
    minted = mint_call(
        HOLDER, leaf_link_id="L" * 43, tool="kb/search", args={"q": 1}, now=1_750_000_000, ttl=30
    )
    parsed = CallClaims.parse(minted.token)
    assert type(minted) is CallClaims
    assert vars(minted) == vars(parsed)
    assert set(vars(minted)) == {f.name for f in dataclasses.fields(CallClaims)}
    assert not hasattr(CallClaims, "__post_init__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        minted.jti = "other"  # type: ignore[misc]
