"""Actor tokens for token exchange (RFC 8693): made by the agent, checked by the proxy."""

from __future__ import annotations

import pytest

from agentguard.decision import Reason
from agentguard.federation import (
    ACTOR_TTL,
    FederationError,
    actor_token,
    verify_actor_token,
)
from agentguard.keys import Identity
from agentguard.testing import START

ENDPOINT = "https://mcp.example.com/agentguard/token-exchange"


def test_an_actor_token_proves_its_key_within_its_window() -> None:
    key = Identity.generate("agent:laptop")
    token = actor_token(key, ENDPOINT, now=START, ttl=ACTOR_TTL)
    public = verify_actor_token(token, ENDPOINT, now=START + ACTOR_TTL - 1)
    assert public.public_bytes_raw() == key.principal.public_key.public_bytes_raw()
    for now, reason in (
        (START - 31, Reason.LINK_EXPIRED),  # before iat, past the leeway
        (START + ACTOR_TTL + 30, Reason.LINK_EXPIRED),
    ):
        with pytest.raises(FederationError) as info:
            verify_actor_token(token, ENDPOINT, now=now)
        assert info.value.reason == reason
    with pytest.raises(FederationError) as info:
        verify_actor_token(token, ENDPOINT + "/", now=START)
    assert info.value.reason == Reason.UNTRUSTED_ROOT


@pytest.mark.parametrize("ttl", [0, ACTOR_TTL + 1, -5])
def test_an_actor_token_lives_at_most_five_minutes(ttl: int) -> None:
    with pytest.raises(ValueError, match="1 to 300 seconds"):
        actor_token(Identity.generate("agent:laptop"), ENDPOINT, now=START, ttl=ttl)


@pytest.mark.parametrize("token", [None, 7, "", "a.b.c", "x" * 100_000, ["a"]])
def test_what_is_not_an_actor_token_is_malformed(token: object) -> None:
    with pytest.raises(FederationError) as info:
        verify_actor_token(token, ENDPOINT, now=START)
    assert info.value.reason == Reason.MALFORMED_TOKEN
