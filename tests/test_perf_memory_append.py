"""The in-memory store's audit append writes the chain every other store writes.

``MemoryStore.audit_append`` hashes the canonical bytes as encoded, builds its
``AuditEntry`` without the dataclass's per-field set-up and updates link usage
without a call per link. None of that may change a record's bytes, its hash,
the chain or what ``grants`` shows as last used: each test compares it with a
real SQLite file given the same records, and with the reference formulas.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agentguard.budgets import Budget, Charge
from agentguard.canonical import canonical_json
from agentguard.delegation import Delegation
from agentguard.store.base import GENESIS_HASH, AuditEntry, GrantRecord, entry_hash
from agentguard.store.memory import MemoryStore, _entry
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import RecordingTool, World

RECORDS: list[dict[str, Any]] = [
    {
        "type": "decision",
        "decision_id": "dec_1",
        "time": 1796530822.1017818,
        "outcome": "allow",
        "tool": "kb/search",
        "args": {"business_unit": "emea", "query": "vpn outage"},
        "path": ["org:acme", "agent:bot"],
    },
    {"type": "completion", "decision_id": "dec_1", "status": "success", "duration_ms": 0.007},
    # Text beyond ASCII, escapes, numbers RFC 8785 writes its own way, nesting.
    {
        "type": "decision",
        "args": {"city": "Zürich", "note": 'a "quoted"\n\ttab \u2028 😀', "n": 1.0, "big": 1e21},
        "nested": [[{"k": None, "b": True}], [], {}],
    },
    {"type": "decision", "args": {"amount": 0.1, "neg": -0.0, "tiny": 5e-324}},
]


def _same_entries(tmp_path: Path, records: list[dict[str, Any]], **options: Any) -> None:
    memory = MemoryStore()
    sqlite = SQLiteStore(tmp_path / "audit.db")
    try:
        for record in records:
            m = memory.audit_append(record, at=1000.0, **options)
            s = sqlite.audit_append(record, at=1000.0, **options)
            assert (m.seq, m.body, m.prev, m.hash) == (s.seq, s.body, s.prev, s.hash)
        entries = memory.audit_entries()
        assert entries == sqlite.audit_entries()
    finally:
        sqlite.close()
    prev = GENESIS_HASH
    for seq, (entry, record) in enumerate(zip(entries, records, strict=True), start=1):
        if "charge" not in options:  # a charge adds the budgets' state to the body
            body = canonical_json({**record, "seq": seq}).decode("utf-8")
            assert entry.body == body
        assert (entry.seq, entry.prev) == (seq, prev)
        assert entry.hash == entry_hash(prev, entry.body)
        prev = entry.hash


def test_the_same_bytes_and_hashes_as_a_sqlite_file(tmp_path: Path) -> None:
    _same_entries(tmp_path, RECORDS * 3)


def test_signed_heads_and_checkpoints_cover_the_same_hashes(tmp_path: Path) -> None:
    signed: list[tuple[int, str]] = []

    def anchor(seq: int, digest: str) -> str:
        signed.append((seq, digest))
        return f"head-{seq}"

    _same_entries(tmp_path, RECORDS, anchor=anchor, checkpoint=lambda seq, digest: None)
    memory_heads, sqlite_heads = signed[0::2], signed[1::2]
    assert memory_heads == sqlite_heads


def test_a_charged_record_is_written_alike(tmp_path: Path) -> None:
    """The budget state written into a record by the charge is part of the same bytes."""
    budget = Budget.parse({"window": "1d", "calls": 5, "sum": {"amount": 100}})
    charge = Charge(
        key="rule:x:0", label="link 0 rule 0", budget=budget, amounts=(("amount", Decimal("12.5")),)
    )
    _same_entries(tmp_path, RECORDS[:2], charge=([charge], 86_400.0 * 3 + 5))
    memory = MemoryStore()
    entry = memory.audit_append(RECORDS[0], at=1.0, charge=([charge], 86_400.0 * 3 + 5))
    assert '"budget":[{"budget":"link 0 rule 0","calls":{"limit":5,"used":1}' in entry.body


def test_the_entry_is_the_dataclass_built_the_usual_way() -> None:
    built, usual = _entry(3, "{}", "ab", "cd"), AuditEntry(3, "{}", "ab", "cd")
    assert built == usual
    assert hash(built) == hash(usual)
    assert repr(built) == repr(usual)
    assert dataclasses.astuple(built) == (3, "{}", "ab", "cd")
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.seq = 4  # type: ignore[misc]


def _grant(link_id: str) -> GrantRecord:
    return GrantRecord(link_id, None, "org:a", "agent:b", 1, 1, 10**10, None, None, (), "")


@pytest.mark.parametrize("order", [[5.0, 9.0, 7.0], [9.0, 5.0], [0.0, 3.5, 3.5, 1.0]])
def test_last_used_is_the_latest_use_whatever_the_order(tmp_path: Path, order: list[float]) -> None:
    memory, sqlite = MemoryStore(), SQLiteStore(tmp_path / "usage.db")
    try:
        for store in (memory, sqlite):
            for link in ("l1", "l2", "l3"):
                store.record_grant(_grant(link))
            for at in order:
                store.audit_append({"type": "decision"}, link_ids=("l1", "l2"), at=at)
            store.audit_append({"type": "completion"}, link_ids=(), at=max(order) + 1)
        shown = {r.link_id: r.last_used for r in memory.grant_records()}
        assert shown == {"l1": max(order), "l2": max(order), "l3": None}
        assert shown == {r.link_id: r.last_used for r in sqlite.grant_records()}
    finally:
        sqlite.close()


def test_a_guard_on_memory_writes_a_chain_that_verifies_and_catches_tampering() -> None:
    world = World()
    guard = world.guard()
    delegation = Delegation.issue(world.org, world.bot, ["kb/*"], ttl="1h", clock=world.clock)
    for n in range(5):
        guard.call(delegation, "kb/search", {"q": f"ö{n}"}, RecordingTool(), holder=world.bot)
    assert guard.audit.verify() is None
    store = guard.store
    assert isinstance(store, MemoryStore)
    (index,) = [i for i, e in enumerate(store._audit) if "ö2" in e.body]
    old = store._audit[index]
    store._audit[index] = _entry(old.seq, old.body.replace("ö2", "o2"), old.prev, old.hash)
    problem = guard.audit.verify()
    assert problem is not None
    assert problem.seq == old.seq
