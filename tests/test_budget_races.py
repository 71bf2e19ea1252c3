"""Budgets under concurrency: real processes racing at the limit share one budget exactly.

Three contender processes, each a different sub-agent under one budgeted parent
link, each with several threads, all released together through a stdin barrier
(each prints ``ready`` and waits for ``go``). They share a SQLite home, or one
PostgreSQL database. Exactly the budget's calls run, whatever the interleaving;
the counter and the audit log agree. Nothing sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentguard.budgets import window_bounds
from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.guard import Guard
from agentguard.store.postgres import DATABASE_URL_ENV, PostgresStore
from agentguard.testing import World, audit_records

PROCESSES = 3
THREADS = 4
LIMIT_CALLS = 5
AMOUNT = 2
LIMIT_SUM = LIMIT_CALLS * AMOUNT  # both limits are reached by the same call
REFUND = "billing/refund"

CONTENDER = """
import json, sys, threading
from pathlib import Path
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.errors import DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity

home, policy, chain, key, threads, amount = sys.argv[1:7]
guard = Guard(policy=Path(policy), home=Path(home))
delegation = Delegation.parse(Path(chain).read_text())
holder = Identity.load(Path(key))
outcomes = []
barrier = threading.Barrier(int(threads))

def attempt():
    barrier.wait(timeout=30)
    try:
        guard.call(delegation, "billing/refund", {"amount": int(amount)}, lambda **kw: None,
                   holder=holder)
        outcomes.append("ran")
    except DeniedError as exc:
        outcomes.append(str(exc.reason))

print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
workers = [threading.Thread(target=attempt) for _ in range(int(threads))]
for w in workers:
    w.start()
for w in workers:
    w.join()
guard.close()
print(json.dumps(outcomes), flush=True)
"""


def _window(now: float) -> int:
    """A window length whose current window has at least ten minutes left.

    Fixed windows reset at their end; a race that straddled a reset would
    rightly let more calls run. Day-, 25- and 26-hour windows end at different
    times, so one of them is always far from its end.
    """
    for window in (86400, 90000, 93600):
        _, end = window_bounds(now, window)
        if end - now > 600:
            return window
    raise AssertionError("unreachable: the three windows never end together")


def _race(tmp_path: Path, env: dict[str, str]) -> tuple[list[str], Guard]:
    world = World(clock=ManualClock(time.time()))
    window = _window(time.time())
    policy = world.write_policy(tmp_path / "agentguard.yaml")
    home = tmp_path / "home"
    parent = Delegation.issue(
        world.org,
        world.bot,
        [
            {
                "tool": REFUND,
                "budget": {"window": window, "calls": LIMIT_CALLS, "sum": {"amount": LIMIT_SUM}},
            }
        ],
        ttl="1h",
        max_depth=1,
        clock=world.clock,
    )
    # The guard's key and the store exist before the contenders start.
    Guard(policy=policy, home=home).close()
    procs: list[subprocess.Popen[str]] = []
    try:
        for n in range(PROCESSES):
            sub = world.identity(f"agent:sub{n}")
            child = parent.attenuate(world.bot, sub, [REFUND], clock=world.clock)
            chain, key = tmp_path / f"chain{n}.txt", tmp_path / f"sub{n}.key"
            chain.write_text(child.serialize())
            sub.save(key)
            argv = [str(p) for p in (home, policy, chain, key, THREADS, AMOUNT)]
            proc = subprocess.Popen(
                [sys.executable, "-c", CONTENDER, *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line == "ready", proc.communicate(timeout=30)[1]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes: list[str] = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outcomes += json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return outcomes, Guard(policy=policy, home=home)


def _check(outcomes: list[str], guard: Guard) -> None:
    assert len(outcomes) == PROCESSES * THREADS
    assert outcomes.count("ran") == LIMIT_CALLS
    assert set(outcomes) == {"ran", "budget_exhausted"}
    decisions = [r for r in audit_records(guard) if r["type"] == "decision"]
    allowed = [r for r in decisions if r["outcome"] == "allow"]
    assert len(allowed) == LIMIT_CALLS
    # Each allowed record saw a different count: 1..LIMIT, each exactly once.
    counts = sorted(r["budget"][0]["calls"]["used"] for r in allowed)
    assert counts == list(range(1, LIMIT_CALLS + 1))
    sums = sorted(int(r["budget"][0]["sum"]["amount"]["used"]) for r in allowed)
    assert sums == list(range(AMOUNT, LIMIT_SUM + 1, AMOUNT))
    assert all(r["reason"] == "budget_exhausted" for r in decisions if r["outcome"] == "deny")


def test_processes_racing_on_sqlite_spend_exactly_the_budget(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
    outcomes, guard = _race(tmp_path, env)
    try:
        _check(outcomes, guard)
    finally:
        guard.close()


def test_processes_racing_on_postgres_spend_exactly_the_budget(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, pg_url)
    outcomes, guard = _race(tmp_path, {**os.environ, DATABASE_URL_ENV: pg_url})
    try:
        assert isinstance(guard.store, PostgresStore)
        _check(outcomes, guard)
    finally:
        guard.close()


def test_db_upgrade_migrates_a_version_2_database_to_budgets(pg_url: str, tmp_path: Path) -> None:
    """A database at schema 2 (no budget table) is brought to 3 by ``agentguard db upgrade``."""
    import psycopg

    from tests.test_store_postgres_cli import agentguard

    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE ag_budget_usage")
        conn.execute("UPDATE ag_meta SET value = '2' WHERE key = 'schema_version'")
    done = agentguard(tmp_path, "db", "upgrade", "--json", url=pg_url)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert (report["from_version"], report["version"]) == (2, 3)
    world = World()
    store = PostgresStore(pg_url, create=False)
    try:
        guard = world.guard(store=store)
        root = Delegation.issue(
            world.org,
            world.bot,
            [{"tool": REFUND, "budget": {"window": "1h", "calls": 1}}],
            ttl="1h",
            clock=world.clock,
        )
        guard.call(root, REFUND, {}, lambda **_: None, holder=world.bot)
        with pytest.raises(DeniedError) as caught:
            guard.call(root, REFUND, {}, lambda **_: None, holder=world.bot)
        assert caught.value.reason == "budget_exhausted"
    finally:
        store.close()


def test_db_migrate_carries_the_budget_counters(pg_url: str, tmp_path: Path) -> None:
    """Moving a guard's SQLite state to PostgreSQL mid-window does not hand out a new budget."""
    from tests.test_db_migrate import _run

    world = World(clock=ManualClock(time.time()))
    window = _window(time.time())
    policy = world.write_policy(tmp_path / "agentguard.yaml")
    root = Delegation.issue(
        world.org,
        world.bot,
        [{"tool": REFUND, "budget": {"window": window, "calls": 3}}],
        ttl="1h",
        clock=world.clock,
    )
    home = tmp_path / "old"
    guard = Guard(policy, home=home)
    for _ in range(2):
        guard.call(root, REFUND, {}, lambda **_: None, holder=world.bot)
    guard.close()
    moved = _run(tmp_path, pg_url, "--from", str(home / "state.db"), "--json")
    assert moved.exit_code == 0, moved.stderr
    assert json.loads(moved.stdout)["copied"]["budget_usage"] == 1
    store = PostgresStore(pg_url)
    try:
        guard = Guard(policy, home=home, store=store)
        guard.call(root, REFUND, {}, lambda **_: None, holder=world.bot)
        with pytest.raises(DeniedError) as caught:
            guard.call(root, REFUND, {}, lambda **_: None, holder=world.bot)
        assert caught.value.reason == "budget_exhausted"
    finally:
        store.close()
