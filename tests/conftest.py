"""The one fixture home of our tests, built on :mod:`agentguard.testing`.

``world`` is an :class:`agentguard.testing.World`: ``org:acme``, ``user:alice``,
``agent:bot`` holding ``world.delegation`` (``org:acme -> user:alice -> agent:bot``)
and the approver ``user:carol``, on a manual clock at :data:`agentguard.testing.START`.
``guard`` is ``world.guard()``: in memory, trusting ``org:acme``.

The identity fixtures (``org``, ``alice``, ``bot``, ...) are the world's. ``chain``
is a longer delegation for the verifier's tests,
``org:acme -> team:ir -> user:alice -> agent:bot -> agent:sub``, issued at the
clock's start time:

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

Its root allows four further delegations, so the leaf may still delegate once.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.memory import MemoryStore
from agentguard.testing import World
from agentguard.verify import Verifier
from tests import pg_support


@pytest.fixture
def world() -> World:
    """Identities, ``world.delegation`` and a manual clock (see the module docstring)."""
    return World()


@pytest.fixture
def guard(world: World) -> Guard:
    """An in-memory guard trusting the world's root, with ``user:carol`` approving."""
    return world.guard()


@pytest.fixture
def clock(world: World) -> ManualClock:
    """The world's clock: it only moves when the test says so."""
    return world.clock


@pytest.fixture
def org(world: World) -> Identity:
    """The organisation: the trusted root."""
    return world.org


@pytest.fixture
def team(world: World) -> Identity:
    return world.identity("team:ir")


@pytest.fixture
def alice(world: World) -> Identity:
    return world.alice


@pytest.fixture
def bot(world: World) -> Identity:
    return world.bot


@pytest.fixture
def sub(world: World) -> Identity:
    """A sub-agent of ``agent:bot``."""
    return world.identity("agent:sub")


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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pg_support.Cluster]:
    """A throwaway PostgreSQL cluster for the session (see :mod:`tests.pg_support`).

    Without the server binaries or psycopg the tests that use it skip loudly on a
    developer machine and fail in CI (``CI=true``), where they must never skip.
    """
    try:
        import psycopg  # noqa: F401 - only checks that the postgres extra is installed

        cluster = pg_support.start_cluster()
    except (ImportError, pg_support.PostgresMissing) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL tests cannot run in CI: {exc}")
        pytest.skip(f"PostgreSQL NOT TESTED: {exc}")
    try:
        yield cluster
    finally:
        pg_support.remove_cluster(cluster)


@pytest.fixture
def pg_url(pg_cluster: pg_support.Cluster) -> str:
    """The URL of a fresh, empty database in the session's cluster (password included)."""
    return pg_cluster.create_database(f"t_{secrets.token_hex(6)}")
