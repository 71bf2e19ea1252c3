"""The async entry points keep store I/O off the event loop.

A real SQLite store is locked by another connection (as a long transaction in
another process would); the guard's call waits on it in a worker thread while
unrelated async callers on the same loop finish. Bounded with
``anyio.fail_after``, not a timing threshold.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentguard import Delegation, Guard, Identity
from agentguard.store.memory import MemoryStore


def _policy(org: Identity) -> dict[str, Any]:
    return {"trusted_roots": [{"id": org.id, "public_key": org.principal.public_jwk()}]}


@pytest.mark.anyio
async def test_a_locked_store_does_not_stall_unrelated_async_callers(tmp_path: Path) -> None:
    org, bot = Identity.generate("org:acme"), Identity.generate("agent:bot")
    grant = Delegation.issue(org, bot, ["tickets/*"], ttl="1h")
    locked = Guard(_policy(org), home=tmp_path / "locked")
    free = Guard(_policy(org), store=MemoryStore())
    locker = sqlite3.connect(tmp_path / "locked" / "state.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    finished: list[str] = []

    async def blocked_call() -> None:
        await locked.acall(grant, "tickets/read", {"id": 1}, lambda id: f"read {id}", holder=bot)
        finished.append("blocked call")

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(blocked_call)
            with anyio.fail_after(20):
                for n in range(25):
                    result = await free.acall(
                        grant, "tickets/read", {"id": n}, lambda id: f"read {id}", holder=bot
                    )
                    assert result == f"read {n}"
                    await anyio.sleep(0.02)
                # Many unrelated calls completed while the locked store still holds it back.
                assert finished == []
            locker.execute("ROLLBACK")
    finally:
        locker.close()
        locked.close()
        free.close()
    assert finished == ["blocked call"]
    assert free.audit.verify() is None


@pytest.mark.anyio
async def test_a_cancelled_async_call_still_records_its_completion(tmp_path: Path) -> None:
    """Cancelled while the tool runs: the completion record says so (it used to be lost)."""
    import json

    org, bot = Identity.generate("org:acme"), Identity.generate("agent:bot")
    grant = Delegation.issue(org, bot, ["tickets/*"], ttl="1h")
    guard = Guard(_policy(org), home=tmp_path)

    async def slow(id: int) -> str:
        await anyio.sleep(10)
        return "late"

    try:
        with anyio.move_on_after(0.2):
            await guard.acall(grant, "tickets/read", {"id": 1}, slow, holder=bot)
        records = [json.loads(e.body) for e in guard.store.audit_tail(10)]
    finally:
        guard.close()
    completion = next(r for r in records if r["type"] == "completion")
    assert completion["status"] == "error"
    assert "Cancelled" in completion["error_type"]


@pytest.mark.anyio
async def test_a_natively_cancelled_decision_is_finished_and_says_the_tool_never_ran(
    tmp_path: Path,
) -> None:
    """``Task.cancel()`` while a pipeline step runs in its worker thread.

    The step spends the call token and writes ``allow``; the cancelled caller
    will never run the tool. The guard waits for the step, writes a
    ``not_run`` completion, and only then lets the cancellation go on (it used
    to abandon the thread: an ``allow`` with no completion, "not known to have run").
    """
    import asyncio
    import json

    org, bot = Identity.generate("org:acme"), Identity.generate("agent:bot")
    grant = Delegation.issue(org, bot, ["tickets/*"], ttl="1h")
    guard = Guard(_policy(org), home=tmp_path)
    ran: list[int] = []
    locker = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # the step blocks on its first write
    try:
        task = asyncio.ensure_future(
            guard.acall(grant, "tickets/read", {"id": 1}, ran.append, holder=bot)
        )
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.sleep(0.1)
        locker.execute("ROLLBACK")
        with anyio.fail_after(20), pytest.raises(asyncio.CancelledError):
            await task
        records = [json.loads(e.body) for e in guard.store.audit_tail(10)]
    finally:
        locker.close()
        guard.close()
    assert ran == []
    decision = next(r for r in records if r["type"] == "decision")
    completion = next(r for r in records if r["type"] == "completion")
    assert decision["outcome"] == "allow"
    assert completion["decision_id"] == decision["decision_id"]
    assert completion["status"] == "not_run"
    assert completion["error_type"] == "CancelledError"


@pytest.mark.anyio
async def test_a_cancelled_call_waits_for_its_step_before_it_returns(tmp_path: Path) -> None:
    """The cancelled caller gets control back only after the step it started is done:
    nothing of that call is still being written behind its back."""
    import asyncio

    org, bot = Identity.generate("org:acme"), Identity.generate("agent:bot")
    grant = Delegation.issue(org, bot, ["tickets/*"], ttl="1h")
    guard = Guard(_policy(org), home=tmp_path)
    locker = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        task = asyncio.ensure_future(guard.acheck(grant, "tickets/read", {"id": 1}, holder=bot))
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.sleep(0.3)
        assert not task.done()  # still finishing its step, behind the lock
        locker.execute("ROLLBACK")
        with anyio.fail_after(20), pytest.raises(asyncio.CancelledError):
            await task
        kinds = [e.body for e in guard.store.audit_tail(10)]
    finally:
        locker.close()
        guard.close()
    assert len(kinds) == 1  # the dry run's record, and no completion for a dry run


@pytest.mark.anyio
async def test_a_call_cancelled_by_its_scope_while_deciding_never_runs_the_tool(
    tmp_path: Path,
) -> None:
    """An anyio deadline passes while the decision waits on a locked store: the
    step finishes (shielded), but the tool does not run and the log says so."""
    import json

    org, bot = Identity.generate("org:acme"), Identity.generate("agent:bot")
    grant = Delegation.issue(org, bot, ["tickets/*"], ttl="1h")
    guard = Guard(_policy(org), home=tmp_path)
    ran: list[int] = []
    locker = sqlite3.connect(tmp_path / "state.db", isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")

    async def release_later() -> None:
        await anyio.sleep(0.6)
        locker.execute("ROLLBACK")

    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(release_later)
                with anyio.move_on_after(0.2) as scope:
                    await guard.acall(grant, "tickets/read", {"id": 1}, ran.append, holder=bot)
        records = [json.loads(e.body) for e in guard.store.audit_tail(10)]
    finally:
        locker.close()
        guard.close()
    assert scope.cancelled_caught
    assert ran == []
    decision = next(r for r in records if r["type"] == "decision")
    completion = next(r for r in records if r["type"] == "completion")
    assert decision["outcome"] == "allow"
    assert completion["status"] == "not_run"
