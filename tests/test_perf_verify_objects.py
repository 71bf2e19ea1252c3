"""The verifier's per-call objects, built without the dataclass set-up, equal their class's own.

A warm call makes a ``VerifiedChain``, a ``ScopeMatch`` and a ``VerifiedCall``;
``agentguard.verify`` builds them without the frozen dataclass's per-field
``__setattr__``. Each must be the object the class itself would build: every
field set (a field added later and not written fails here), equal, hashed and
shown alike, still frozen, and a ``VerifiedChain`` still unforgeable outside.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agentguard import verify
from agentguard.delegation import Delegation
from agentguard.keys import Identity
from agentguard.store import MemoryStore
from agentguard.testing import World
from agentguard.tokens import CallClaims, mint_call
from agentguard.verify import ScopeMatch, VerifiedCall, VerifiedChain, Verifier

TOOL, ARGS = "billing/refund", {"amount": 5}


def _claims(world: World) -> CallClaims:
    return mint_call(
        world.bot,
        leaf_link_id=world.delegation.leaf.link_id,
        tool=TOOL,
        args=ARGS,
        now=world.clock.now(),
    )


def _pairs(world: World) -> list[tuple[Any, Any]]:
    claims = _claims(world)
    return [
        (
            verify._verified_chain(world.delegation, 12.5),
            VerifiedChain(world.delegation, 12.5, verify._SEAL),
        ),
        (
            verify._scope_match(TOOL, (0, 1), ((1, 0),), False),
            ScopeMatch(TOOL, (0, 1), ((1, 0),), False),
        ),
        (verify._verified_call(claims, "digest"), VerifiedCall(claims, "digest")),
    ]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_built_like_the_class_builds_it(which: int) -> None:
    built, usual = _pairs(World())[which]
    assert type(built) is type(usual)
    assert set(vars(built)) == {f.name for f in dataclasses.fields(usual)}
    assert built == usual
    assert hash(built) == hash(usual)
    assert repr(built) == repr(usual)
    name = dataclasses.fields(usual)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, name, None)


def test_a_verified_chain_is_still_made_only_by_the_verifier() -> None:
    world = World()
    with pytest.raises(TypeError):
        VerifiedChain(world.delegation, 1.0)
    with pytest.raises(TypeError):
        VerifiedChain(world.delegation, 1.0, object())


def test_replace_cannot_carry_a_chains_seal_to_another_delegation() -> None:
    """``dataclasses.replace`` on a verified chain makes no sealed chain around an
    unverified delegation (it copied a stored seal before)."""
    world = World()
    store = MemoryStore()
    verifier = Verifier([world.org.principal], revocations=store, replay=store, clock=world.clock)
    chain = verifier.verify_chain(world.delegation)
    stranger = Identity.generate("org:evil")
    forged = Delegation.issue(stranger, world.bot, ["*/*"], ttl="1h", clock=world.clock)
    with pytest.raises((TypeError, ValueError)):
        dataclasses.replace(chain, delegation=forged)
    assert "_seal" not in vars(chain)


def test_a_warm_call_gets_these_objects_with_their_values() -> None:
    world = World()
    store = MemoryStore()
    verifier = Verifier([world.org.principal], revocations=store, replay=store, clock=world.clock)
    first = verifier.verify_chain(world.delegation)
    world.clock.advance(3)
    warm = verifier.verify_chain(world.delegation)
    assert warm.delegation is first.delegation
    assert warm.verified_at == world.clock.now() != first.verified_at
    assert verifier.authorize(warm, TOOL, ARGS) == ScopeMatch(TOOL, (1, 1), (), False)
    claims = _claims(world)
    call = verifier.accept_minted(warm, claims, tool=TOOL, args=ARGS)
    assert call == VerifiedCall(claims, claims.args_digest)
