"""Approval wake-ups across processes on PostgreSQL (LISTEN/NOTIFY).

A caller waiting for an approval in one process is woken by the answer's
notification when the answer is committed by another process; it does not poll
the database. The waiter counts how its pauses ended (woken by a notification,
or ran out); no test asserts a duration.
"""

from __future__ import annotations

import multiprocessing
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.postgres import PostgresStore
from agentguard.testing import START, RecordingTool, World
from tests.pg_support import Cluster


class CountingStore(PostgresStore):
    """A real PostgresStore that counts the waiter's reads and how each pause ended."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reads = 0
        self.pauses: list[bool] = []

    def approval_get(self, request_id: str) -> Any:
        self.reads += 1
        return super().approval_get(request_id)

    def approval_wait(self, request_id: str, timeout: float) -> bool:
        woken = super().approval_wait(request_id, timeout)
        self.pauses.append(woken)
        return woken


def _waiter(url: str, files: dict[str, Any], mode: str, out: Any) -> None:
    """A guard process that blocks on a call needing approval, then reports what happened."""
    try:
        store = CountingStore(url)
        guard = Guard(
            Path(files["policy"]),
            home=Path(files["home"]) / f"home-{secrets.token_hex(4)}",
            store=store,
            clock=ManualClock(START),
            approval_mode="block",
        )
        delegation = Delegation.parse(files["delegation"])
        bot = Identity.from_private_jwk("agent:bot", files["bot"])
        tool = RecordingTool()
        args = {"target": "db1"}
        try:
            if mode == "async":
                anyio.run(lambda: guard.acall(delegation, "admin/reset", args, tool, holder=bot))
            else:
                guard.call(delegation, "admin/reset", args, tool, holder=bot)
        except DeniedError as exc:
            outcome = str(exc.reason)
        else:
            outcome = "ran" if tool.ran else "not run"
        out.put((outcome, store.reads, store.pauses, store.notifications))
        store.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
        out.put(f"waiter failed: {exc!r}")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_answer_from_another_process_wakes_the_waiting_caller(
    pg_url: str, tmp_path: Path, mode: str
) -> None:
    world = World()
    policy = world.write_policy(
        tmp_path / "agentguard.yaml", approval={"channel": "queue", "timeout": 120}
    )
    files = {
        "policy": str(policy),
        "home": str(tmp_path),
        "delegation": world.delegation.serialize(),
        "bot": world.bot.private_jwk(),
    }
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    waiter = context.Process(target=_waiter, args=(pg_url, files, mode, out))
    waiter.start()
    store = PostgresStore(pg_url)
    try:
        with anyio.from_thread.start_blocking_portal() as portal:
            request_id = portal.call(_pending_request, store)
        # Let the waiter settle into its wait (several polls' worth with the old loop).
        time.sleep(1.5)
        answerer = Guard(policy, home=tmp_path / "answerer", store=store, clock=ManualClock(START))
        answerer.approvals.approve(request_id, world.carol)
        report = out.get(timeout=60)
        assert not isinstance(report, str), report
        outcome, reads, pauses, notifications = report
        assert outcome == "ran"
        # Woken by the answer's notification, not by the end of a pause: one read to
        # find the request pending, one after the wake-up.
        assert pauses[-1] is True, pauses
        assert pauses.count(False) == 0, pauses
        assert reads <= 3, reads
        assert notifications >= 1
        waiter.join(timeout=60)
        assert waiter.exitcode == 0
    finally:
        store.close()
        if waiter.is_alive():
            waiter.kill()


async def _pending_request(store: PostgresStore) -> str:
    with anyio.fail_after(60):
        while True:
            rows = await anyio.to_thread.run_sync(store.approval_list, "pending")
            if rows:
                return rows[0].id
            await anyio.sleep(0.05)


def test_approval_wait_on_an_unknown_or_answered_request_returns_at_once(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        with anyio.from_thread.start_blocking_portal() as portal:
            # A long timeout that a correct store never waits out (fail_after bounds it).
            assert portal.call(_bounded, store.approval_wait, "no-such-request", 600.0)
            for hostile in ["", "x" * 10_000, "'; DROP TABLE ag_approvals; --", "\u2603\x01"]:
                assert portal.call(_bounded, store.approval_wait, hostile, 600.0)
        assert store.counts()["approvals"] == 0  # the table is still there
    finally:
        store.close()
    # A closed store cannot be woken: the wait is a plain pause, never an error.
    assert store.approval_wait("no-such-request", 0.05) is False


async def _bounded(fn: Any, *args: Any) -> Any:
    with anyio.fail_after(30):
        return await anyio.to_thread.run_sync(fn, *args)


def test_a_notification_wakes_only_waiters_of_that_request(pg_url: str) -> None:
    """Two waiters in this process, an answer to one request from another store (its own
    connection, as another process would): only that request's waiter wakes."""
    from agentguard.store.base import ApprovalRow

    waiting = PostgresStore(pg_url)
    answering = PostgresStore(pg_url)
    try:
        for rid in ("r1", "r2"):
            waiting.approval_insert(ApprovalRow(rid, START, START + 600, "pending", rid, {}))
        results: dict[str, bool] = {}

        def wait(rid: str, timeout: float) -> None:
            results[rid] = waiting.approval_wait(rid, timeout)

        first = threading.Thread(target=wait, args=("r1", 60.0))
        second = threading.Thread(target=wait, args=("r2", 2.0))
        first.start()
        second.start()
        with anyio.from_thread.start_blocking_portal() as portal:
            portal.call(_until, lambda: len(waiting._waiters) == 2)
        time.sleep(0.5)  # usually into their waits by now; either path must give True
        assert answering.approval_answer(
            "r1", status="approved", receipt="R", answered_at=START + 1, reusable_until=None
        )
        first.join(timeout=60)
        second.join(timeout=60)
        assert results == {"r1": True, "r2": False}
        # One notification, unless the answer landed before r1's waiter re-read the row.
        assert waiting.notifications <= 1
    finally:
        waiting.close()
        answering.close()


async def _until(test: Any) -> None:
    with anyio.fail_after(30):
        while not test():
            await anyio.sleep(0.02)


def test_the_listener_survives_a_server_restart(pg_cluster: Cluster) -> None:
    """With the server gone a wait ends without raising (the caller reads and fails
    closed); once the server is back the listener reconnects and wakes waiters again."""
    from agentguard.store.base import ApprovalRow

    url = pg_cluster.create_database(f"t_{secrets.token_hex(6)}")
    waiting = PostgresStore(url, timeout=2)
    try:
        waiting.approval_insert(ApprovalRow("r1", START, START + 600, "pending", "d", {}))
        assert waiting.approval_wait("r1", 0.1) is False  # listening, not answered
        pg_cluster.stop()
        try:
            with anyio.from_thread.start_blocking_portal() as portal:
                assert portal.call(_bounded, waiting.approval_wait, "r1", 1.0) is False
        finally:
            pg_cluster.start()
        answering = PostgresStore(url)
        results: list[bool] = []
        thread = threading.Thread(target=lambda: results.append(waiting.approval_wait("r1", 60)))
        thread.start()
        with anyio.from_thread.start_blocking_portal() as portal:
            portal.call(_until, lambda: waiting._listen_ready.is_set() and waiting._waiters)
        assert answering.approval_answer(
            "r1", status="approved", receipt="R", answered_at=START + 1, reusable_until=None
        )
        thread.join(timeout=60)
        assert results == [True]
        answering.close()
    finally:
        waiting.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_waiter_in_this_process_is_woken_by_another_stores_answer(
    pg_url: str, tmp_path: Path, mode: str
) -> None:
    """The same wake-up with the waiting guard in this process (a thread) and the answer
    written through a second store, on its own connections as another replica's would be."""
    world = World()
    policy = world.write_policy(
        tmp_path / "agentguard.yaml", approval={"channel": "queue", "timeout": 120}
    )
    store = CountingStore(pg_url)
    answering = PostgresStore(pg_url)
    guard = Guard(
        policy,
        home=tmp_path / "waiter",
        store=store,
        clock=ManualClock(START),
        approval_mode="block",
    )
    tool = RecordingTool()
    outcome: list[str] = []

    def call() -> None:
        args = {"target": "db1"}
        try:
            if mode == "async":
                anyio.run(
                    lambda: guard.acall(
                        world.delegation, "admin/reset", args, tool, holder=world.bot
                    )
                )
            else:
                guard.call(world.delegation, "admin/reset", args, tool, holder=world.bot)
        except DeniedError as exc:
            outcome.append(str(exc.reason))
        else:
            outcome.append("ran" if tool.ran else "not run")

    waiter = threading.Thread(target=call)
    waiter.start()
    try:
        with anyio.from_thread.start_blocking_portal() as portal:
            request_id = portal.call(_pending_request, answering)
            portal.call(_until, lambda: bool(store._waiters))  # in its wait
        answerer = Guard(
            policy, home=tmp_path / "answerer", store=answering, clock=ManualClock(START)
        )
        answerer.approvals.approve(request_id, world.carol)
        waiter.join(timeout=60)
        assert outcome == ["ran"]
        assert store.pauses[-1] is True
        assert False not in store.pauses
    finally:
        waiter.join(timeout=60)
        guard.close()
        answering.close()
