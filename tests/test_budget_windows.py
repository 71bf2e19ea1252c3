"""Budgets and time: a call is charged to the window it runs in, not the one it was asked in.

A call that waits for an approval can be answered after its budget's window ended.
Charging it to the window it was asked in would charge a window the store has
already purged (a call in the new window deletes the old rows), so it would fit
whatever had been spent (security review, session 26, F2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentguard.approval import ApprovalBook, ApprovalRequest, CallbackChannel
from agentguard.budgets import Budget, charge_of, window_bounds
from agentguard.clock import ManualClock
from agentguard.decision import Reason
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import START, RecordingTool, World, audit_records

REFUND = "billing/refund"
MINUTE = 60
#: Ten seconds before a minute's window ends.
ASKED = window_bounds(START, MINUTE)[1] - 10.0
#: How long the approver takes: the answer comes in the next window.
THINKING = 20.0


def slow_approver(world: World) -> CallbackChannel:
    """Approves every request after ``THINKING`` seconds on the world's clock."""

    def answer(request: ApprovalRequest, book: ApprovalBook) -> None:
        world.clock.advance(THINKING)
        book.approve(request.id, world.carol)

    return CallbackChannel(answer, name="carol")


def one_a_minute(world: World) -> Delegation:
    """``org -> alice -> bot``: refunds, one a minute; refunds above 50 need approval."""
    root = Delegation.issue(
        world.org,
        world.alice,
        [{"tool": REFUND, "budget": {"window": MINUTE, "calls": 1}}],
        ttl="1d",
        max_depth=3,
        clock=world.clock,
    )
    return root.attenuate(world.alice, world.bot, [REFUND], clock=world.clock)


def spend(guard: Guard, delegation: Delegation, holder: Identity, amount: int) -> str:
    try:
        guard.call(delegation, REFUND, {"amount": amount}, RecordingTool(), holder=holder)
    except DeniedError as exc:
        return str(exc.reason)
    return "ran"


def decisions(guard: Guard) -> list[dict[str, Any]]:
    return [r for r in audit_records(guard) if r["type"] == "decision"]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")


def test_an_approval_answered_in_the_next_window_is_charged_to_that_window(store: Any) -> None:
    """Asked at :50, approved at :10 of the next minute: that minute's one call is spent.

    Before the fix the approved call was charged to the minute it was asked in,
    so a plain call right after it ran too (two calls in one minute), and the
    plain call's charge purged the old minute for any later approval.
    """
    world = World(clock=ManualClock(ASKED))
    guard = world.guard(
        store=store,
        approver=slow_approver(world),
        step_up=[{"tools": [REFUND], "where": {"amount": {">": 50}}}],
    )
    delegation = one_a_minute(world)
    assert spend(guard, delegation, world.bot, 100) == "ran"
    assert world.clock.now() == ASKED + THINKING
    approved = decisions(guard)[-1]
    assert approved["reason"] == Reason.APPROVED
    now_window = window_bounds(world.clock.now(), MINUTE)
    assert approved["budget"][0]["window_start"] == now_window[0]
    assert approved["budget"][0]["calls"] == {"used": 1, "limit": 1}
    assert spend(guard, delegation, world.bot, 1) == Reason.BUDGET_EXHAUSTED
    refused = decisions(guard)[-1]
    assert refused["budget"][0]["resets_at"] == now_window[1]


def test_approvals_that_cross_a_boundary_together_are_charged_once(store: Any) -> None:
    """The reviewer's race without threads: two approvals cross the same boundary.

    The first is answered in the new minute and spends it; a plain call there is
    refused, and so is a second approval answered in that minute.
    """
    world = World(clock=ManualClock(ASKED))
    guard = world.guard(
        store=store,
        approver=slow_approver(world),
        step_up=[{"tools": [REFUND], "where": {"amount": {">": 50}}}],
    )
    delegation = one_a_minute(world)
    assert spend(guard, delegation, world.bot, 100) == "ran"
    world.clock.set(ASKED)  # a second call asked at :50 too, answered at :10
    assert spend(guard, delegation, world.bot, 200) == Reason.BUDGET_EXHAUSTED
    world.clock.set(ASKED + THINKING)
    assert spend(guard, delegation, world.bot, 1) == Reason.BUDGET_EXHAUSTED
    assert [d["reason"] for d in decisions(guard)] == [
        Reason.APPROVED,
        Reason.BUDGET_EXHAUSTED,
        Reason.BUDGET_EXHAUSTED,
    ]


def test_a_refusal_after_a_slow_approval_names_the_current_window(store: Any) -> None:
    """The window's state in the record and the reset time are those of the answer's time."""
    world = World(clock=ManualClock(ASKED))
    plain = world.guard(store=store)
    delegation = one_a_minute(world)
    world.clock.set(ASKED + THINKING)
    assert spend(plain, delegation, world.bot, 1) == "ran"  # spends the new minute
    world.clock.set(ASKED)
    slow = world.guard(
        store=store,
        approver=slow_approver(world),
        step_up=[{"tools": [REFUND], "where": {"amount": {">": 50}}}],
    )
    with pytest.raises(DeniedError) as caught:
        slow.call(delegation, REFUND, {"amount": 100}, RecordingTool(), holder=world.bot)
    assert caught.value.reason == Reason.BUDGET_EXHAUSTED
    now_window = window_bounds(ASKED + THINKING, MINUTE)
    assert getattr(caught.value, "resets_at", None) == now_window[1]
    refused = decisions(slow)[-1]
    assert refused["budget"][0]["window_start"] == now_window[0]
    assert refused["budget"][0]["calls"]["used"] == 1


def test_postgres_charges_by_its_own_clock_whatever_time_it_is_given(pg_url: str) -> None:
    """A charge passed a time in a long-gone window is charged to the server's current one."""
    import time

    from agentguard.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    try:
        charge = charge_of("test/stale", "stale", Budget(3600, 1), {})
        before = time.time()
        (state,) = store.budget_charge([charge], 0.0)  # 1970
        after = time.time()
        assert state.start in {window_bounds(before, 3600)[0], window_bounds(after, 3600)[0]}
        with pytest.raises(DeniedError) as caught:
            store.budget_charge([charge], 0.0)
        assert caught.value.reason == Reason.BUDGET_EXHAUSTED
    finally:
        store.close()


def test_in_shadow_mode_a_call_over_the_budget_runs_uncharged(world: World) -> None:
    """Shadow mode: the refusal is recorded and the call runs, but the count holds only
    the calls the budget let through (and the next window starts from zero)."""
    guard = world.guard(shadow=True)
    delegation = one_a_minute(world)
    tools = [RecordingTool() for _ in range(3)]
    for tool in tools:
        guard.call(delegation, REFUND, {"amount": 1}, tool, holder=world.bot)
    assert all(tool.ran for tool in tools)
    records = decisions(guard)
    assert [(r["outcome"], r["reason"]) for r in records] == [
        ("allow", Reason.ALLOWED),
        ("deny", Reason.BUDGET_EXHAUSTED),
        ("deny", Reason.BUDGET_EXHAUSTED),
    ]
    assert [r.get("shadow", False) for r in records] == [False, True, True]
    assert [r["budget"][0]["calls"]["used"] for r in records] == [1, 1, 1]
    world.clock.advance(MINUTE)
    assert spend(guard, delegation, world.bot, 1) == "ran"
    assert decisions(guard)[-1]["budget"][0]["calls"] == {"used": 1, "limit": 1}
