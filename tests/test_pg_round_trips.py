"""Round trips an allowed call costs on PostgreSQL (issue 15: they were about 27).

The store's connections go through :class:`tests.pg_support.TurnCounter`, a relay
that counts the turns of the conversation (the client speaking again after the
server answered). A single statement is one turn (autocommit, no BEGIN and
COMMIT of its own); an audit append is two (BEGIN and the tip's lock in one
pipeline, the writes and COMMIT in the next); a pooled connection used within
the last second is not checked again first.
"""

from __future__ import annotations

import time
from pathlib import Path

from agentguard.guard import Guard
from agentguard.store.postgres import PostgresStore
from agentguard.testing import START, RecordingTool, World
from tests.pg_support import TurnCounter

#: What the relay saw per allowed call in development runs: 7 to 7.2 (an allowed
#: call: the call token's nonce 1, the revocation check 1, the decision record 2,
#: the completion record 2, the side file's check that its head is in the chain 1).
MOST_PER_CALL = 9


def test_an_allowed_call_costs_few_round_trips(pg_url: str, tmp_path: Path) -> None:
    relay = TurnCounter(pg_url)
    world = World()
    guard = Guard(
        world.policy(), home=tmp_path / "home", store=PostgresStore(relay.url), clock=world.clock
    )
    tool = RecordingTool()
    for n in range(5):  # connections opened
        guard.call(world.delegation, "tickets/read", {"id": n}, tool, holder=world.bot)
    before = relay.turns
    calls = 20
    for n in range(calls):
        guard.call(world.delegation, "tickets/read", {"id": n}, tool, holder=world.bot)
    per_call = (relay.turns - before) / calls
    assert per_call <= MOST_PER_CALL, per_call
    assert guard.audit.verify() is None
    guard.close()
    relay.close()


def test_each_store_operation_costs_its_round_trips(pg_url: str) -> None:
    relay = TurnCounter(pg_url)
    store = PostgresStore(relay.url)
    used = [0]

    def turns(operation: object) -> int:
        assert callable(operation)
        for _ in range(4):  # every pooled connection (the pool grew to two) used just now
            operation()
        before = relay.turns
        operation()
        return relay.turns - before

    def spend() -> None:
        used[0] += 1
        assert store.consume(f"nonce-{used[0]}", START + 600, now=START)

    assert turns(spend) == 1
    assert turns(lambda: store.find_revoked(["l"], ["k"], ["p"])) == 1
    assert turns(lambda: store.audit_entries(after=0, limit=1)) == 1
    append = turns(
        lambda: store.audit_append({"type": "x"}, link_ids=["l1", "l2"], at=START, anchor=_head)
    )
    assert append <= 3  # 2, or 3 when the server answers the writes before COMMIT is sent
    # After a second unused, the connection is checked (one round trip more).
    time.sleep(1.1)
    before = relay.turns
    spend()
    assert relay.turns - before == 2
    store.close()
    relay.close()


def _head(seq: int, digest: str) -> str:
    return f"head-{seq}-{digest[:8]}"
