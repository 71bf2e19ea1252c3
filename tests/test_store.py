"""Tests for agentguard.store: revocations, replay nonces, the inventory and the audit chain.

Every behaviour is checked on :class:`MemoryStore`, :class:`SQLiteStore` and
:class:`~agentguard.store.postgres.PostgresStore` (a throwaway cluster);
the cross-process guarantees are checked on a real SQLite file shared by two
real Python processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from agentguard.errors import StoreError
from agentguard.store import SCHEMA_VERSION, GrantRecord, MemoryStore, SQLiteStore
from agentguard.store.base import GENESIS_HASH, AuditEntry, Checkpoint, entry_hash
from agentguard.store.postgres import PostgresStore

NOW = 1_800_000_000.0
#: ``make hardening`` (AGENTGUARD_HARDENING=1) races 50 rounds of fresh files, ``make test`` 20.
HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"
OPEN_ROUNDS = 50 if HARDENING else 20
ROOT = Path(__file__).resolve().parents[1]
AnyStore = MemoryStore | SQLiteStore | PostgresStore


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnyStore]:
    """Each store implementation in turn (PostgreSQL: a fresh database of the test cluster)."""
    store: AnyStore
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "sqlite":
        store = SQLiteStore(tmp_path / "s.db")
    else:
        from agentguard.store.postgres import PostgresStore

        store = PostgresStore(request.getfixturevalue("pg_url"))
    yield store
    store.close()


def verify_audit_chain(entries: Sequence[AuditEntry]) -> None:
    """Assert the entries form one unbroken hash chain starting at the genesis hash."""
    prev = GENESIS_HASH
    for position, entry in enumerate(entries, start=1):
        assert entry.seq == position
        assert entry.prev == prev, f"entry {entry.seq} does not follow {entry.seq - 1}"
        assert entry.hash == entry_hash(entry.prev, entry.body), f"entry {entry.seq} altered"
        assert json.loads(entry.body)["seq"] == entry.seq
        prev = entry.hash


# --- revocations ---------------------------------------------------------------------------


def test_revocation_is_idempotent(state: AnyStore) -> None:
    state.revoke("link", "L1", reason="first", at=NOW)
    state.revoke("link", "L1", reason="second", at=NOW + 10)
    revocations = state.revocations()
    assert len(revocations) == 1
    assert (revocations[0].reason, revocations[0].revoked_at) == ("first", NOW)


def test_find_revoked_matches_kind_and_value(state: AnyStore) -> None:
    assert state.find_revoked(["L1"], ["K1"], ["agent:bot"]) is None
    state.revoke("link", "L1", reason="r", at=NOW)
    state.revoke("key", "K1", reason="r", at=NOW + 1)
    state.revoke("principal", "agent:bot", reason="r", at=NOW + 2)
    assert state.find_revoked([], [], []) is None
    hits = [
        state.find_revoked(["L0", "L1"], [], []),
        state.find_revoked([], ["K1"], []),
        state.find_revoked(["x"], ["y"], ["agent:bot"]),
    ]
    assert [(h.kind, h.value) if h else None for h in hits] == [
        ("link", "L1"),
        ("key", "K1"),
        ("principal", "agent:bot"),
    ]
    # A value revoked as one kind does not match another kind.
    assert state.find_revoked(["K1", "agent:bot"], ["L1"], ["L1", "K1"]) is None
    assert [r.value for r in state.revocations()] == ["L1", "K1", "agent:bot"]


# --- replay nonces ---------------------------------------------------------------------------


def test_nonce_is_consumed_once(state: AnyStore) -> None:
    assert state.consume("agent:bot/n1", NOW + 30, now=NOW)
    assert not state.consume("agent:bot/n1", NOW + 30, now=NOW)
    assert not state.consume("agent:bot/n1", NOW + 9999, now=NOW + 1)
    assert state.consume("agent:bot/n2", NOW + 30, now=NOW)
    assert state.nonce_count() == 2


def test_expired_nonces_are_purged_but_live_ones_stay(state: AnyStore) -> None:
    """Enough later consumes trigger a purge in both stores; the live nonce survives it.

    PostgreSQL purges by the server's clock instead: tests/test_store_postgres.py.
    """
    if isinstance(state, PostgresStore):
        pytest.skip("PostgreSQL purges by the database server's clock, not the caller's")
    assert state.consume("old", NOW + 10, now=NOW)
    assert state.consume("live", NOW + 10_000, now=NOW)
    later = NOW + 100
    for index in range(600):
        assert state.consume(f"filler-{index}", later + 60, now=later)
    assert state.nonce_count() == 601  # "old" is gone, "live" and the fillers remain
    assert not state.consume("live", NOW + 10_000, now=later)
    assert not state.consume("filler-0", later + 60, now=later)


# --- inventory -----------------------------------------------------------------------------


def _record(link_id: str, *, subject: str = "agent:bot", parent: str | None = None) -> GrantRecord:
    return GrantRecord(
        link_id=link_id,
        parent=parent,
        issuer="org:acme",
        subject=subject,
        issued_at=int(NOW),
        not_before=int(NOW),
        expires_at=int(NOW) + 3600,
        purpose="triage",
        on_behalf_of="user:alice",
        rules=("tickets/*",),
        chain="a.b.c",
    )


def test_grant_inventory_tracks_use_and_revocation(state: AnyStore) -> None:
    state.record_grant(_record("L1"))
    state.record_grant(_record("L1", subject="agent:other"))  # idempotent by link id
    state.record_grant(_record("L2", subject="agent:sub", parent="L1"))
    records = {r.link_id: r for r in state.grant_records()}
    assert set(records) == {"L1", "L2"}
    assert records["L1"].subject == "agent:bot"
    assert records["L1"].last_used is None
    assert records["L1"].status(NOW) == "active"
    state.audit_append({"event": "decided"}, link_ids=["L1"], at=NOW + 5)
    state.audit_append({"event": "decided"}, link_ids=["L1"], at=NOW + 2)
    state.revoke("principal", "agent:sub", reason="r", at=NOW)
    records = {r.link_id: r for r in state.grant_records()}
    assert records["L1"].last_used == NOW + 5
    assert records["L2"].revoked
    assert records["L2"].status(NOW) == "revoked"
    assert records["L1"].status(NOW + 3600) == "expired"
    assert records["L1"].as_dict(NOW)["status"] == "active"


# --- audit chain ---------------------------------------------------------------------------


def test_audit_append_chains_hashes(state: AnyStore) -> None:
    entries = [state.audit_append({"n": n, "outcome": "allow"}, at=NOW) for n in range(5)]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev == GENESIS_HASH
    for before, after in pairwise(entries):
        assert after.prev == before.hash
    for entry in entries:
        assert entry.hash == entry_hash(entry.prev, entry.body)
    assert state.audit_entries() == entries
    verify_audit_chain(state.audit_entries())
    assert state.audit_entries(after=2, limit=2) == entries[2:4]
    assert state.audit_tail(2) == entries[3:]
    assert state.audit_tail(0) == []


def test_audit_bodies_are_canonical_json(state: AnyStore) -> None:
    entry = state.audit_append({"b": 1, "a": "é", "nested": {"z": 1, "y": [2, 1]}}, at=NOW)
    assert entry.body == '{"a":"é","b":1,"nested":{"y":[2,1],"z":1},"seq":1}'


def test_checkpoints_are_stored_in_order(state: AnyStore) -> None:
    first = state.audit_append({"n": 1}, at=NOW)
    state.add_checkpoint(Checkpoint(first.seq, first.hash, NOW, "tok1"))
    second = state.audit_append({"n": 2}, at=NOW)
    state.add_checkpoint(Checkpoint(second.seq, second.hash, NOW + 1, "tok2"))
    assert [c.seq for c in state.checkpoints()] == [1, 2]
    assert state.checkpoints()[1].head == second.hash


def test_an_altered_sqlite_audit_row_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    for n in range(3):
        store.audit_append({"n": n}, at=NOW)
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE audit SET body = replace(body, '\"n\":1', '\"n\":7') WHERE seq = 2")
    raw.close()
    with pytest.raises(AssertionError, match="entry 2 altered"):
        verify_audit_chain(store.audit_entries())
    store.close()


# --- schema ----------------------------------------------------------------------------------


def test_schema_version_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    raw = sqlite3.connect(path)
    row = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert row == (str(SCHEMA_VERSION),)
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw.close()
    again = SQLiteStore(path)  # reopening the same version is fine
    assert again.schema_version() == SCHEMA_VERSION
    again.close()


def test_a_newer_schema_is_refused_naming_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SQLiteStore(path).close()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(StoreError) as info:
        SQLiteStore(path)
    message = str(info.value)
    assert "999" in message
    assert f"version {SCHEMA_VERSION}" in message
    assert "upgrade agentguard" in message


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.consume("k", NOW + 1, now=NOW)


# --- two processes, one SQLite file ------------------------------------------------------------

# Each child opens the store, says "ready", waits for "go" on stdin (a barrier
# without sleeps), then runs the workload and prints its result as JSON.
_CHILD = """
import json, sys
from agentguard.store.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
name, count = sys.argv[2], int(sys.argv[3])
if sys.argv[4] == "nonces":
    result = [k for k in range(count) if store.consume(f"agent:bot/{k}", 2e9, now=1.8e9)]
else:
    result = [store.audit_append({"writer": name, "n": k}, at=1.8e9).seq for k in range(count)]
store.close()
print(json.dumps(result), flush=True)
"""


def _run_two(path: Path, workload: str, count: int) -> list[list[int]]:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), name, str(count), workload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for name in ("a", "b")
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline().strip()
            if line != "ready":
                child.kill()
                _, err = child.communicate(timeout=30)
                pytest.fail(f"a child died opening the store: {line!r}\n{err}")
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            results.append(json.loads(out))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()


def test_two_processes_consume_each_nonce_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    first, second = _run_two(path, "nonces", 200)
    assert not set(first) & set(second)
    assert sorted(first + second) == list(range(200))
    store = SQLiteStore(path)
    assert store.nonce_count() == 200
    store.close()


def test_two_processes_append_one_unbroken_audit_chain(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    first, second = _run_two(path, "audit", 200)
    assert sorted(first + second) == list(range(1, 401))
    store = SQLiteStore(path)
    entries = store.audit_entries()
    store.close()
    assert len(entries) == 400
    verify_audit_chain(entries)
    writers = [json.loads(e.body)["writer"] for e in entries]
    assert writers.count("a") == writers.count("b") == 200


# --- many processes opening one fresh file at once ----------------------------------------------


def _open_rounds(directory: str, rounds: int, barrier: Any, errors: Any) -> None:
    """Child: for each round, wait for every sibling, then open the round's fresh file."""
    for n in range(rounds):
        barrier.wait(timeout=60)
        try:
            store = SQLiteStore(Path(directory) / f"round-{n}.db")
            store.audit_append({"round": n}, at=NOW)
            store.close()
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent
            errors.put(f"round {n}: {type(exc).__name__}: {exc}")


def open_concurrently(directory: Path, processes: int, rounds: int) -> list[str]:
    """Open ``rounds`` fresh stores, each from ``processes`` processes at the same instant."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    errors = context.Queue()
    children = [
        context.Process(target=_open_rounds, args=(str(directory), rounds, barrier, errors))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    failures += [f"child exit code {c.exitcode}" for c in children if c.exitcode != 0]
    return failures


@pytest.mark.slow
def test_many_processes_open_one_fresh_store_at_once(tmp_path: Path) -> None:
    """8 processes open the same new file at the same instant, OPEN_ROUNDS times: none fails."""
    failures = open_concurrently(tmp_path, processes=8, rounds=OPEN_ROUNDS)
    assert failures == []
    for n in range(OPEN_ROUNDS):
        store = SQLiteStore(tmp_path / f"round-{n}.db")
        entries = store.audit_entries()
        store.close()
        assert len(entries) == 8
        verify_audit_chain(entries)


def test_tool_pins_keep_the_first_fingerprint(state: AnyStore) -> None:
    """Tool pins (the MCP proxy's rug-pull defence): the first fingerprint of an address
    stays; a later, different one is answered with the first; hostile names are data."""
    assert state.pin_tools({}) == {}
    first = {"crm/lookup": "f1", "crm/update": "u1"}
    assert state.pin_tools(first) == first
    assert state.pin_tools({"crm/lookup": "f2", "kb/search": "s1"}) == {
        "crm/lookup": "f1",
        "kb/search": "s1",
    }
    hostile = {"x'); DROP TABLE tool_pins; --": "h", "\u2603/\x01": "s", "a" * 5000: "long"}
    assert state.pin_tools(hostile) == hostile
    assert state.pin_tools({"crm/update": "u2"}) == {"crm/update": "u1"}
    # The operator accepts the new definition: the next pin is the current one.
    assert state.unpin_tools(["crm/update", "crm/update", "no/such"]) == 1
    assert state.pin_tools({"crm/update": "u2", "crm/lookup": "f3"}) == {
        "crm/update": "u2",
        "crm/lookup": "f1",
    }
    assert state.unpin_tools([]) == 0
