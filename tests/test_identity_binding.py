"""An identity's private key must be the one its public key (kid) names: else no identity."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard.errors import IdentityError
from agentguard.keys import Identity, Keyring, Principal
from agentguard.store.memory import MemoryStore
from agentguard.testing import RecordingTool, World
from agentguard.verify import Verifier


def test_identity_with_another_private_key_cannot_be_constructed() -> None:
    """``Identity(bot.principal, <another key>)`` is refused before it can sign anything."""
    world = World()
    other = Ed25519PrivateKey.generate()
    with pytest.raises(IdentityError, match="does not match the public key"):
        Identity(world.bot.principal, other)
    with pytest.raises(IdentityError, match="does not match the public key"):
        dataclasses.replace(world.bot, private_key=world.alice.private_key)


def test_guard_call_never_sees_a_mismatched_holder() -> None:
    """The reproduction: a holder that could sign unverifiable call tokens cannot be built."""
    world = World()
    guard = world.guard()
    tool = RecordingTool()
    with pytest.raises(IdentityError):
        guard.call(
            world.delegation,
            "tickets/read",
            {"id": 1},
            tool,
            holder=Identity(world.bot.principal, Ed25519PrivateKey.generate()),
        )
    assert tool.calls == []
    # The genuine holder still works, and the call token in its audit record verifies.
    guard.call(world.delegation, "tickets/read", {"id": 1}, tool, holder=world.bot)
    assert len(tool.calls) == 1
    decided = [r for r in guard.audit.tail(10) if r.get("call_token")]
    assert len(decided) == 1
    replica = Verifier([world.org.principal], revocations=MemoryStore(), clock=world.clock)
    chain = replica.verify_chain(world.delegation)
    replica.verify_call_token(chain, decided[0]["call_token"], tool="tickets/read", args={"id": 1})


def test_private_jwk_whose_kid_names_another_key_is_refused() -> None:
    """A private JWK's ``kid``, when present, must be the thumbprint of its key."""
    world = World()
    jwk = {**world.bot.private_jwk(), "kid": world.alice.kid}
    with pytest.raises(IdentityError, match="kid"):
        Identity.from_private_jwk("agent:bot", jwk)


def test_key_file_whose_kid_names_another_key_is_refused(tmp_path: Path) -> None:
    """Loading a key file is refused when its ``kid`` does not match the key it holds."""
    keyring = Keyring(tmp_path / "keys")
    bot = keyring.create("agent:bot")
    other = Identity.generate("agent:other")
    path = keyring.private_path("agent:bot")
    doc = json.loads(path.read_text())
    doc["jwk"]["kid"] = other.kid
    path.write_text(json.dumps(doc))
    with pytest.raises(IdentityError, match="kid"):
        keyring.identity(bot.id)


def test_keyring_refuses_a_private_key_disagreeing_with_its_public_file(tmp_path: Path) -> None:
    """A ``.key`` and a ``.pub`` for one id that hold different keys: the identity is refused."""
    keyring = Keyring(tmp_path / "keys")
    keyring.create("agent:bot")
    impostor = Identity.generate("agent:bot")
    path = keyring.private_path("agent:bot")
    path.unlink()
    impostor.save(path)
    with pytest.raises(IdentityError, match=r"agent_bot\.pub"):
        keyring.identity("agent:bot")


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
@settings(max_examples=50, deadline=None)
def test_an_identity_exists_only_for_matching_halves(seed_a: bytes, seed_b: bytes) -> None:
    """For any two Ed25519 keys, an identity pairs a public key only with its own private key."""
    key_a = Ed25519PrivateKey.from_private_bytes(seed_a)
    key_b = Ed25519PrivateKey.from_private_bytes(seed_b)
    principal = Principal("agent:bot", key_a.public_key())
    assert Identity(principal, key_a).kid == principal.kid
    if seed_a != seed_b:
        with pytest.raises(IdentityError):
            Identity(principal, key_b)
