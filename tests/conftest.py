"""Shared fixtures: a manual clock, five identities, a 4-link delegation and a verifier.

The chain is ``org:acme -> team:ir -> user:alice -> agent:bot -> agent:sub``,
issued at the clock's start time:

====  ======================  ====================================================  =========
link  issuer -> subject       rules                                                 lifetime
====  ======================  ====================================================  =========
0     org:acme -> team:ir     ``tickets/*``, ``billing/refund`` amount <= 1000,     30 days
                              ``fs/read_*``
1     team:ir -> user:alice   ``tickets/*``, ``billing/refund`` amount <= 500       7 days
                              [approval]
2     user:alice -> agent:bot ``tickets/*``, ``billing/refund``                     1 day
3     agent:bot -> agent:sub  ``tickets/read``, ``tickets/comment``,                1 hour
                              ``billing/refund``
====  ======================  ====================================================  =========

The root allows four further delegations, so the leaf may still delegate once.
"""

from __future__ import annotations

import pytest

from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.keys import Identity
from agentguard.store.memory import MemoryStore
from agentguard.verify import Verifier

#: Where every test's clock starts (2027-01-15T08:00:00Z).
START = 1_800_000_000.0


@pytest.fixture
def clock() -> ManualClock:
    """A clock that only moves when the test says so."""
    return ManualClock(START)


@pytest.fixture
def org() -> Identity:
    """The organisation: the trusted root."""
    return Identity.generate("org:acme")


@pytest.fixture
def team() -> Identity:
    return Identity.generate("team:ir")


@pytest.fixture
def alice() -> Identity:
    return Identity.generate("user:alice")


@pytest.fixture
def bot() -> Identity:
    return Identity.generate("agent:bot")


@pytest.fixture
def sub() -> Identity:
    """A sub-agent of ``agent:bot``."""
    return Identity.generate("agent:sub")


@pytest.fixture
def chain(
    clock: ManualClock,
    org: Identity,
    team: Identity,
    alice: Identity,
    bot: Identity,
    sub: Identity,
) -> Delegation:
    """The 4-link delegation described in the module docstring; ``agent:sub`` holds it."""
    root = Delegation.issue(
        org,
        team,
        [
            "tickets/*",
            {"tool": "billing/refund", "where": {"amount": {"<=": 1000}}},
            "fs/read_*",
        ],
        ttl="30d",
        purpose="incident response",
        on_behalf_of="user:alice",
        max_depth=4,
        clock=clock,
    )
    to_alice = root.attenuate(
        team,
        alice,
        [
            "tickets/*",
            {"tool": "billing/refund", "where": {"amount": {"<=": 500}}, "approval": True},
        ],
        ttl="7d",
        clock=clock,
    )
    to_bot = to_alice.attenuate(alice, bot, ["tickets/*", "billing/refund"], ttl="1d", clock=clock)
    return to_bot.attenuate(
        bot, sub, ["tickets/read", "tickets/comment", "billing/refund"], ttl="1h", clock=clock
    )


@pytest.fixture
def store() -> MemoryStore:
    """An in-memory store for revocations and replay nonces."""
    return MemoryStore()


@pytest.fixture
def verifier(org: Identity, store: MemoryStore, clock: ManualClock) -> Verifier:
    """A verifier trusting ``org:acme``, backed by ``store`` and ``clock`` (5 s leeway)."""
    return Verifier([org.principal], revocations=store, replay=store, clock=clock, leeway=5)
