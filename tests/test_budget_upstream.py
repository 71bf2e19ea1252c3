"""An agentguard-aware upstream (``agentguard_mcp.verify``) enforces a chain's budgets only
with a budget store of its own; without one it refuses every call a budget applies to."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from agentguard_mcp.proxy import META_CALL, META_DELEGATION
from agentguard_mcp.verify import DelegationVerifier

from agentguard.budgets import Budget, BudgetExhausted, Charge
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.store.base import BudgetStore
from agentguard.store.memory import MemoryStore
from agentguard.store.postgres import PostgresStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import World

BUDGETED: list[str | dict[str, Any]] = [
    {"tool": "bank/pay", "budget": {"window": "1h", "calls": 2, "sum": {"amount": 10}}},
    "bank/read",
]


def budgeted(world: World) -> Delegation:
    root = Delegation.issue(world.org, world.alice, BUDGETED, ttl="1h", clock=world.clock)
    return root.attenuate(world.alice, world.bot, ["bank/pay", "bank/read"], clock=world.clock)


def params(world: World, delegation: Delegation, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    token = delegation.mint_call_token(world.bot, f"bank/{tool}", args, clock=world.clock)
    meta = {META_DELEGATION: delegation.serialize(), META_CALL: token}
    return {"name": tool, "arguments": args, "_meta": meta}


def verifier(world: World, budgets: BudgetStore | None) -> DelegationVerifier:
    return DelegationVerifier(
        "bank",
        trusted_roots=[world.org.principal],
        revocations=MemoryStore(),
        clock=world.clock,
        budgets=budgets,
    )


def outcome(check: DelegationVerifier, call: dict[str, Any]) -> str:
    try:
        check.check(call)
    except DeniedError as exc:
        return str(exc.reason)
    return "ran"


def test_without_a_budget_store_a_budgeted_call_is_refused(world: World) -> None:
    check = verifier(world, None)
    delegation = budgeted(world)
    with pytest.raises(DeniedError) as caught:
        check.check(params(world, delegation, "pay", {"amount": 1}))
    assert caught.value.reason == "store_error"
    assert "link 0 rule 0" in caught.value.explanation
    # Calls no budget applies to still pass, and chains without budgets too.
    assert outcome(check, params(world, delegation, "read", {})) == "ran"
    free = Delegation.issue(world.org, world.bot, ["bank/pay"], ttl="1h", clock=world.clock)
    assert outcome(check, params(world, free, "pay", {})) == "ran"


def test_with_a_budget_store_the_upstream_enforces_the_budget(world: World) -> None:
    check = verifier(world, MemoryStore())
    delegation = budgeted(world)
    calls = [params(world, delegation, "pay", {"amount": a}) for a in (4, 6, 0)]
    assert [outcome(check, c) for c in calls] == ["ran", "ran", "budget_exhausted"]


def test_the_upstream_refuses_an_unmeasurable_amount(world: World) -> None:
    check = verifier(world, MemoryStore())
    call = params(world, budgeted(world), "pay", {"amount": "4"})
    assert outcome(check, call) == "budget_unmeasurable"


def test_a_replayed_call_token_is_not_charged_upstream(world: World) -> None:
    check = verifier(world, MemoryStore())
    delegation = budgeted(world)
    call = params(world, delegation, "pay", {"amount": 1})
    assert outcome(check, call) == "ran"
    assert outcome(check, call) == "call_token_replayed"
    assert outcome(check, params(world, delegation, "pay", {"amount": 1})) == "ran"


def test_upstreams_sharing_a_sqlite_budget_store_count_together(
    world: World, tmp_path: Path
) -> None:
    first = verifier(world, SQLiteStore(tmp_path / "budgets.db"))
    second = verifier(world, SQLiteStore(tmp_path / "budgets.db"))
    delegation = budgeted(world)
    assert outcome(first, params(world, delegation, "pay", {"amount": 5})) == "ran"
    assert outcome(second, params(world, delegation, "pay", {"amount": 5})) == "ran"
    assert outcome(first, params(world, delegation, "pay", {"amount": 0})) == "budget_exhausted"


def _race(store: BudgetStore, now: float) -> list[str]:
    """Twelve threads charge a budget of five calls at once through ``budget_charge``."""
    charge = Charge("race/1", "race", Budget(3600, 5))
    barrier = threading.Barrier(12)
    outcomes: list[str] = []

    def attempt() -> None:
        barrier.wait(timeout=30)
        try:
            store.budget_charge([charge], now)
            outcomes.append("charged")
        except BudgetExhausted:
            outcomes.append("exhausted")

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_budget_charge_is_exact_under_threads_on_sqlite(world: World, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "budgets.db")
    try:
        outcomes = _race(store, world.clock.now())
    finally:
        store.close()
    assert sorted(outcomes) == ["charged"] * 5 + ["exhausted"] * 7


def test_budget_charge_is_exact_under_threads_on_postgres(world: World, pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        outcomes = _race(store, world.clock.now())
    finally:
        store.close()
    assert sorted(outcomes) == ["charged"] * 5 + ["exhausted"] * 7


def test_budget_charge_is_exact_under_threads_in_memory(world: World) -> None:
    assert sorted(_race(MemoryStore(), world.clock.now())) == ["charged"] * 5 + ["exhausted"] * 7
