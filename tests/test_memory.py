"""Memory stays flat over many guarded calls: bounded caches, replay-nonce eviction.

The clock advances with every call so call tokens expire and their nonces are
evicted. The in-memory audit log grows by design (it *is* the record), so the
store used here keeps only the head of the hash chain: everything else the
guard holds is measured. 10k calls in ``make test``, 100k under
``AGENTGUARD_HARDENING=1``.
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from agentguard import _jws
from agentguard.budgets import Charge
from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.base import GENESIS_HASH, AuditEntry, Checkpoint, HeadSigner, entry_hash
from agentguard.store.memory import MemoryStore
from agentguard.testing import World
from agentguard.verify import Verifier

HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"
CALLS = 100_000 if HARDENING else 10_000
STEP = 0.05  # seconds of clock time per call: a 30 s call token outlives 600 calls


class HeadOnlyAuditStore(MemoryStore):
    """A memory store whose audit log keeps only its newest entry (the chain head)
    and only its newest signed checkpoint: both grow by design in a real store."""

    def __init__(self) -> None:
        super().__init__()
        self.appended = 0

    def audit_append(
        self,
        record: dict[str, Any],
        *,
        link_ids: Sequence[str] = (),
        at: float,
        anchor: HeadSigner | None = None,  # an in-memory log is never anchored
        burn: tuple[str, float] | None = None,
        checkpoint: Callable[[int, str], str | None] | None = None,
        charge: tuple[Sequence[Charge], float] | None = None,
    ) -> AuditEntry:
        if charge is not None:
            raise AssertionError("the memory soak's chain carries no budget")
        with self._lock:
            if burn is not None and not self._burn(*burn):
                raise AssertionError("approval receipt replayed in a memory soak")
            prev = self._audit[-1].hash if self._audit else GENESIS_HASH
            self.appended += 1
            body = _jws.canonical_json({**record, "seq": self.appended}).decode("utf-8")
            entry = AuditEntry(self.appended, body, prev, entry_hash(prev, body))
            self._audit = [entry]
            token = checkpoint(entry.seq, entry.hash) if checkpoint is not None else None
            if token is not None:
                self._checkpoints = [Checkpoint(entry.seq, entry.hash, at, token)]
            for link in link_ids:
                self._usage[link] = max(at, self._usage.get(link, 0.0))
            return entry

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        with self._lock:
            self._checkpoints = [checkpoint]


def _calls(guard: Guard, world: World, text: str, start: int, count: int) -> None:
    clock = world.clock
    assert isinstance(clock, ManualClock)
    for i in range(start, start + count):
        guard.call(text, "tickets/read", {"ticket": i}, _noop, holder=world.bot)
        clock.advance(STEP)


def _noop(**kwargs: Any) -> None:
    return None


def _blocks() -> int:
    gc.collect()
    return sys.getallocatedblocks()


@pytest.mark.slow
def test_memory_is_flat_over_many_guarded_calls() -> None:
    """CALLS guarded calls after a warm-up leave the heap where it was (within noise)."""
    world = World()
    world.delegation = world.chain(world.bot, root_ttl="7d", leaf_ttl="1d")
    store = HeadOnlyAuditStore()
    guard = world.guard(store=store)
    text = world.delegation.serialize()
    # Warm-up: caches fill, the nonce set reaches its steady size (~ttl / STEP).
    _calls(guard, world, text, 0, 2_000)
    before = _blocks()
    _calls(guard, world, text, 2_000, CALLS)
    growth = _blocks() - before
    assert store.appended == 2 * (CALLS + 2_000)
    # ~700 live nonces at any time; their churn is the only expected variation.
    assert growth < 3_000, f"{growth} memory blocks more after {CALLS} calls"
    live = store.nonce_count()
    assert live <= (30 + 5 + 10) / STEP + 10, f"{live} nonces kept; expired ones are not evicted"
    # The same with tracemalloc for a shorter stretch, reporting where growth happens.
    tracemalloc.start()
    try:
        _calls(guard, world, text, 2_000 + CALLS, 300)
        gc.collect()
        first = tracemalloc.take_snapshot()
        _calls(guard, world, text, 2_300 + CALLS, 700)
        gc.collect()
        second = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    stats = second.compare_to(first, "lineno")
    grown = sum(s.size_diff for s in stats)
    assert grown < 256 * 1024, "\n".join(str(s) for s in stats[:10])


def test_link_cache_is_bounded() -> None:
    """The verifier remembers at most ``cache_size`` link signatures, however many it sees."""
    world = World()
    store = MemoryStore()
    verifier = Verifier(
        [world.org.principal], revocations=store, replay=store, clock=world.clock, cache_size=16
    )
    holder = Identity.generate("agent:many")
    for _ in range(60):
        delegation = Delegation.issue(world.org, holder, ["tickets/*"], ttl="1h", clock=world.clock)
        verifier.verify_chain(delegation.serialize())
        assert len(verifier._cache) <= 16
    assert len(verifier._cache) == 16


def test_expired_nonces_are_evicted_by_later_calls() -> None:
    """Nonces of expired call tokens leave the replay store as the clock moves on."""
    world = World()
    store = MemoryStore()
    guard = world.guard(store=store)
    text = world.delegation.serialize()
    _calls(guard, world, text, 0, 50)
    assert store.nonce_count() == 50
    clock = world.clock
    assert isinstance(clock, ManualClock)
    clock.advance(3_600 - 60)  # past every token's expiry, inside the leaf's window
    _calls(guard, world, text, 50, 1)
    assert store.nonce_count() == 1
