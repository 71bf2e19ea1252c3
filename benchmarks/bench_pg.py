"""Guarded calls on a shared PostgreSQL database: 1, 2 and 3 guard processes vs one on SQLite.

Starts a throwaway PostgreSQL cluster from the installed server binaries (as the
tests do, see ``tests/pg_support.py``) and measures, in one run:

* throughput (calls per second, all processes together, from the moment they
  all start to the last one's end) and p50/p99 latency of ``Guard.call`` of an
  allowed call (external call token spent, revocations checked, decision and
  completion records appended with the signed head) with 1, 2 and 3 guard
  processes on one PostgreSQL database, against one process on a SQLite file
  (durability ``normal``, the default);
* database work per allowed call: transactions committed (the server's own
  count, ``pg_stat_database.xact_commit``), statements sent (counted by the
  store) and round trips: the store's connections go through a relay that
  counts how often the client sends again after the server answered (each such
  turn waits for the network once; pipelined statements travel in one);
* revocation propagation: one process calls in a loop while another revokes the
  caller's principal; the time from ``revoke`` returning to the caller's first
  refusal, and whether any call that started after ``revoke`` returned ran.

Without PostgreSQL (binaries or the ``postgres`` extra) it prints why and stops.

Run: ``.venv/bin/python benchmarks/bench_pg.py [--calls N]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agentguard.testing import START

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests.pg_support starts the throwaway cluster
    sys.path.insert(0, str(ROOT))


def _guard(target: str, files: dict[str, Any], store: Any = None) -> Any:
    from agentguard.clock import ManualClock
    from agentguard.guard import Guard
    from agentguard.store.postgres import PostgresStore
    from agentguard.store.sqlite import SQLiteStore

    if store is None:
        store = PostgresStore(target) if target.startswith("postgresql://") else SQLiteStore(target)
    home = Path(files["home"]) / f"home-{secrets.token_hex(4)}"
    # The test world's grants are valid at its START: a fixed clock keeps them valid.
    return Guard(Path(files["policy"]), home=home, store=store, clock=ManualClock(START))


def _caller(target: str, files: dict[str, Any], calls: int, barrier: Any, out: Any) -> None:
    """One guard process: ``calls`` allowed calls after the barrier; reports latencies."""
    try:
        from agentguard.delegation import Delegation
        from agentguard.keys import Identity

        guard = _guard(target, files)
        delegation = Delegation.parse(files["delegation"])
        bot = Identity.from_private_jwk("agent:bot", files["bot"])
        for _ in range(20):  # warm-up: imports, caches, pooled connections
            guard.call(delegation, "tickets/read", {"id": 1}, _tool, holder=bot)
        barrier.wait(timeout=120)
        started = time.monotonic()
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter()
            guard.call(delegation, "tickets/read", {"id": 1}, _tool, holder=bot)
            samples.append(time.perf_counter() - t0)
        out.put((started, time.monotonic(), samples))
        guard.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops on it
        out.put(repr(exc))


def _tool(**_: Any) -> str:
    return "ok"


def _run(target: str, files: dict[str, Any], processes: int, calls: int) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_caller, args=(target, files, calls, barrier, out))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    failed = [r for r in results if isinstance(r, str)]
    if failed:
        raise SystemExit(f"a guard process failed: {failed[0]}")
    samples = sorted(s for r in results for s in r[2])
    wall = max(r[1] for r in results) - min(r[0] for r in results)
    return {
        "per_s": len(samples) / wall,
        "p50_ms": statistics.median(samples) * 1000,
        "p99_ms": samples[int(len(samples) * 0.99) - 1] * 1000,
    }


def _database_work(url: str, files: dict[str, Any], calls: int) -> tuple[float, float, float]:
    """Transactions (server count, store count) and statements (store count) per call."""
    import psycopg

    from agentguard.delegation import Delegation
    from agentguard.keys import Identity
    from agentguard.store.postgres import PostgresStore

    class Counting(PostgresStore):
        statements = 0
        transactions = 0

        def _run(self, action: str, fn: Any, *mode: Any) -> Any:
            def counted(db: Any) -> Any:
                self.transactions += 1
                return fn(_CountingConnection(db, self))

            return super()._run(action, counted, *mode)

    store = Counting(url)
    guard = _guard(url, files, store)
    delegation = Delegation.parse(files["delegation"])
    bot = Identity.from_private_jwk("agent:bot", files["bot"])
    for _ in range(5):
        guard.call(delegation, "tickets/read", {"id": 1}, _tool, holder=bot)

    def commits() -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        return int(row[0]) if row else 0

    guard.close()  # a backend publishes its statistics when its connection closes
    time.sleep(1.0)
    before = commits()
    store = Counting(url)
    guard = _guard(url, files, store)
    for _ in range(calls):
        guard.call(delegation, "tickets/read", {"id": 1}, _tool, holder=bot)
    guard.close()
    store.close()
    time.sleep(1.0)
    # Opening the store checks its schema (a few transactions of its own, counted by the
    # server but not by the store): the server's count is read as an upper bound.
    server = commits() - before - 1
    return server / calls, store.transactions / calls, store.statements / calls


def _round_trips(url: str, files: dict[str, Any], calls: int) -> float:
    """Round trips per allowed call, counted by a relay (``tests.pg_support.TurnCounter``)."""
    from agentguard.delegation import Delegation
    from agentguard.keys import Identity
    from tests.pg_support import TurnCounter

    relay = TurnCounter(url)
    guard = _guard(relay.url, files)
    delegation = Delegation.parse(files["delegation"])
    bot = Identity.from_private_jwk("agent:bot", files["bot"])
    for _ in range(10):  # connections made, statements prepared
        guard.call(delegation, "tickets/read", {"id": 1}, _tool, holder=bot)
    before = relay.turns
    for _ in range(calls):
        guard.call(delegation, "tickets/read", {"id": 1}, _tool, holder=bot)
    turns = relay.turns - before
    guard.close()
    relay.close()
    return turns / calls


class _CountingConnection:
    """A connection that counts the statements sent through it."""

    def __init__(self, db: Any, owner: Any) -> None:
        self._db = db
        self._owner = owner

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self._owner.statements += 1
        return self._db.execute(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _looping_caller(url: str, files: dict[str, Any], ready: Any, out: Any) -> None:
    """Call until refused; report (start, end, outcome) of every call."""
    from agentguard.delegation import Delegation
    from agentguard.errors import DeniedError
    from agentguard.keys import Identity

    guard = _guard(url, files)
    delegation = Delegation.parse(files["delegation"])
    bot = Identity.from_private_jwk("agent:bot", files["bot"])
    guard.call(delegation, "tickets/read", {"id": 1}, _tool, holder=bot)
    ready.set()
    calls = []
    while True:
        started = time.monotonic()
        try:
            guard.call(delegation, "tickets/read", {"id": 1}, _tool, holder=bot)
        except DeniedError as exc:
            calls.append((started, time.monotonic(), str(exc.reason)))
            break
        calls.append((started, time.monotonic(), "allow"))
    out.put(calls)
    guard.close()


def _propagation(url: str, files: dict[str, Any]) -> tuple[float, int]:
    """Milliseconds from revoke returning to the first refusal elsewhere; calls that
    started after revoke returned and still ran (must be 0)."""
    context = multiprocessing.get_context("spawn")
    ready, out = context.Event(), context.Queue()
    caller = context.Process(target=_looping_caller, args=(url, files, ready, out))
    caller.start()
    ready.wait(timeout=120)
    time.sleep(0.3)  # let it call a few times
    guard = _guard(url, files)
    guard.revoke("principal", "agent:bot", reason="benchmark")
    returned = time.monotonic()
    calls = out.get(timeout=120)
    caller.join(timeout=60)
    guard.close()
    refused_at = next(end for _, end, outcome in calls if outcome != "allow")
    late = sum(1 for start, _, outcome in calls if start >= returned and outcome == "allow")
    return (refused_at - returned) * 1000, late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per process")
    opts = parser.parse_args()
    try:
        import psycopg  # noqa: F401 - only checks that the postgres extra is installed

        from tests import pg_support

        cluster = pg_support.start_cluster()
    except (ImportError, RuntimeError) as exc:
        print(f"PostgreSQL guard processes: not measured ({exc})")
        return
    try:
        from agentguard.testing import World

        with tempfile.TemporaryDirectory() as tmp:
            world = World()
            files = {
                "policy": str(world.write_policy(Path(tmp) / "agentguard.yaml")),
                "home": tmp,
                "delegation": world.delegation.serialize(),
                "bot": world.bot.private_jwk(),
            }
            rows = {"SQLite, 1 process": _run(str(Path(tmp) / "state.db"), files, 1, opts.calls)}
            for processes in (1, 2, 3):
                url = cluster.create_database(f"bench_{processes}")
                rows[f"PostgreSQL, {processes} process{'es' if processes > 1 else ''}"] = _run(
                    url, files, processes, opts.calls
                )
            server, transactions, statements = _database_work(
                cluster.create_database("bench_work"), files, 100
            )
            trips = _round_trips(cluster.create_database("bench_trips"), files, 100)
            propagation, late = _propagation(cluster.create_database("bench_revoke"), files)
    finally:
        pg_support.remove_cluster(cluster)
    print(f"guarded calls on a shared database: {os.cpu_count()} cores, {opts.calls} per process")
    print(
        f"{'store, guard processes':32} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs SQLite':>10}"
    )
    sqlite = rows["SQLite, 1 process"]["per_s"]
    for name, row in rows.items():
        print(
            f"{name:32} {row['per_s']:9.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
            f"{row['per_s'] / sqlite:9.2f}x"
        )
    print(
        f"PostgreSQL per allowed call: {transactions:.2f} transactions ({server:.2f} by the "
        f"server's count), {statements:.1f} statements, {trips:.1f} round trips"
    )
    print(
        f"revocation propagation: first refusal in another process {propagation:.1f} ms after "
        f"revoke returned; calls started after it that ran: {late}"
    )


if __name__ == "__main__":
    main()
