"""A dry run (``Guard.check``, ``acheck``) mints and spends nothing single-use (issue 18, 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentguard.guard import Guard
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import RecordingTool, World, audit_records


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MemoryStore | SQLiteStore:
    if request.param == "memory":
        return MemoryStore()
    return SQLiteStore(tmp_path / "state.db")


def test_a_dry_run_with_a_holder_spends_no_nonce(world: World, store: MemoryStore) -> None:
    guard = world.guard(store=store)
    before = store.nonce_count()
    for _ in range(3):
        decision = guard.check(world.delegation, "tickets/read", {"id": 7}, holder=world.bot)
        assert decision.allowed, decision
    assert store.nonce_count() == before
    # Nothing was minted either: the records of the dry runs carry no call token.
    assert [r["call_token"] for r in audit_records(guard)] == [None, None, None]
    assert all(r["dry_run"] for r in audit_records(guard))
    # A real call still mints, spends and records its token: the count moves by one.
    guard.call(world.delegation, "tickets/read", {"id": 7}, RecordingTool(), holder=world.bot)
    assert store.nonce_count() == before + 1
    assert audit_records(guard)[-2]["call_token"]


@pytest.mark.anyio
async def test_an_async_dry_run_with_a_holder_spends_no_nonce(
    world: World, store: MemoryStore
) -> None:
    guard = world.guard(store=store)
    before = store.nonce_count()
    decision = await guard.acheck(world.delegation, "tickets/read", {"id": 7}, holder=world.bot)
    assert decision.allowed, decision
    assert store.nonce_count() == before
    (record,) = audit_records(guard)
    assert record["call_token"] is None


def test_a_dry_run_still_refuses_a_holder_that_is_not_the_holder(world: World) -> None:
    """Not minting in a dry run must not skip the holder check that minting relied on."""
    guard: Guard = world.guard()
    decision = guard.check(world.delegation, "tickets/read", {"id": 7}, holder=world.alice)
    assert (decision.outcome, decision.reason) == ("deny", "call_token_signer")


def test_a_dry_run_with_an_external_token_spends_no_nonce(world: World, store: MemoryStore) -> None:
    guard = world.guard(store=store)
    token = world.delegation.mint_call_token(world.bot, "tickets/read", {}, clock=world.clock)
    before = store.nonce_count()
    assert guard.check(world.delegation, "tickets/read", {}, call_token=token).allowed
    assert store.nonce_count() == before
