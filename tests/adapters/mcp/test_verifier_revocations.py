"""``DelegationVerifier`` (agentguard_mcp.verify) needs an explicit revocation source."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from agentguard_mcp.proxy import META_CALL, META_DELEGATION
from agentguard_mcp.verify import NO_REVOCATION_CHECK, DelegationVerifier

from agentguard.errors import DeniedError
from agentguard.store.memory import MemoryStore
from agentguard.testing import START, World
from agentguard.verify import RevocationCheckDisabledWarning


def _params(world: World) -> dict[str, Any]:
    args = {"id": "n1"}
    token = world.delegation.mint_call_token(world.bot, "tickets/read", args, clock=world.clock)
    meta = {META_DELEGATION: world.delegation.serialize(), META_CALL: token}
    return {"name": "read", "arguments": args, "_meta": meta}


def test_upstream_verifier_without_revocations_cannot_be_built(world: World) -> None:
    """The reproduction: built without ``revocations=`` it accepted revoked chains."""
    untyped: Any = DelegationVerifier
    with pytest.raises(TypeError, match="revocations"):
        untyped("tickets", trusted_roots=[world.org.principal], clock=world.clock)
    with pytest.raises(TypeError, match="NO_REVOCATION_CHECK"):
        untyped("tickets", trusted_roots=[world.org.principal], revocations=None)


def test_upstream_verifier_refuses_a_chain_revoked_in_its_store(world: World) -> None:
    """With the organisation's store, a revoked link is refused (reason ``revoked``)."""
    store = MemoryStore()
    verifier = DelegationVerifier(
        "tickets", trusted_roots=[world.org.principal], revocations=store, clock=world.clock
    )
    assert verifier.check(_params(world)).holder == "agent:bot"
    store.revoke("principal", "user:alice", reason="left", at=START)
    with pytest.raises(DeniedError) as info:
        verifier.check(_params(world))
    assert info.value.reason == "revoked"


def test_upstream_verifier_opt_out_is_warned_and_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """``revocations=NO_REVOCATION_CHECK`` works, with a warning and a log line."""
    with (
        caplog.at_level(logging.WARNING, logger="agentguard_mcp.verify"),
        pytest.warns(RevocationCheckDisabledWarning),
    ):
        verifier = DelegationVerifier(
            "tickets",
            trusted_roots=[world.org.principal],
            revocations=NO_REVOCATION_CHECK,
            clock=world.clock,
        )
    assert "does not check revocations" in caplog.text
    assert verifier.check(_params(world)).holder == "agent:bot"
