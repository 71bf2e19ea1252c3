"""Budgets on delegation rules: strict parsing, exact charging along the chain, attacks.

Every guard here runs on a :class:`~agentguard.testing.World` clock; windows are
fixed and aligned to the epoch, so the tests move the clock to a window's end
to see a budget reset.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentguard import _jws, tracing
from agentguard.budgets import (
    MAX_WINDOW,
    Budget,
    BudgetExhausted,
    BudgetUnmeasurable,
    amount_of,
    window_bounds,
)
from agentguard.decision import Reason
from agentguard.delegation import Delegation
from agentguard.errors import ApprovalPending, DeniedError, TokenFormatError
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import RecordingTool, World, audit_records
from agentguard.tokens import TYP_GRANT, Grant, Rule
from tests import test_tracing

REFUND = "billing/refund"
DAILY: dict[str, Any] = {"window": "1d", "calls": 10, "sum": {"amount": 500}}


def refunds(world: World, budget: dict[str, Any] | None = DAILY, **rule: Any) -> Delegation:
    """``org -> alice -> bot`` allowing refunds; the root's rule carries ``budget``."""
    root = Delegation.issue(
        world.org,
        world.alice,
        [{"tool": REFUND, "budget": budget, **rule}],
        ttl="1d",
        max_depth=3,
        clock=world.clock,
    )
    return root.attenuate(world.alice, world.bot, [REFUND], clock=world.clock)


def spend(guard: Guard, delegation: Delegation, holder: Identity, amount: Any) -> str:
    """One refund call: ``"ran"`` or the refusal's reason."""
    try:
        guard.call(delegation, REFUND, {"amount": amount}, RecordingTool(), holder=holder)
    except DeniedError as exc:
        return str(exc.reason)
    return "ran"


def last_decision(guard: Guard) -> dict[str, Any]:
    return next(r for r in reversed(audit_records(guard)) if r["type"] == "decision")


# -- parsing: the friendly form, the signed form, hostile values ---------------------------


def test_a_budget_is_parsed_signed_and_read_back_exactly() -> None:
    rule = Rule(REFUND, budget={"window": "1d", "calls": 10, "sum": {"amount": "12.50"}})
    assert rule.budget == Budget(86400, 10, (("amount", Decimal("12.5")),))
    assert rule.to_claim() == {
        "tool": REFUND,
        "budget": {"window": 86400, "calls": 10, "sum": {"amount": "12.5"}},
    }
    assert Rule.from_claim(rule.to_claim()) == rule
    assert "[budget 10 calls, amount <= 12.5 per 1d]" in rule.describe()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"window": 3600, "calls": 1}, Budget(3600, 1)),
        ({"window": "2h", "sum": {"amount": 500}}, Budget(7200, None, (("amount", Decimal(500)),))),
        ({"window": "1w", "sum": {"x": 0.1}}, Budget(604800, None, (("x", Decimal("0.1")),))),
        (
            {"window": "1d", "sum": {"x": Decimal("1E+3")}},
            Budget(86400, None, (("x", Decimal(1000)),)),
        ),
        ({"window": "366d", "calls": 10**9}, Budget(MAX_WINDOW, 10**9)),
    ],
)
def test_friendly_forms_that_are_accepted(spec: dict[str, Any], expected: Budget) -> None:
    budget = Budget.parse(spec)
    assert budget == expected
    assert Budget.from_claim(budget.to_claim()) == budget


@pytest.mark.parametrize(
    "spec",
    [
        None,
        "1d",
        [],
        {"calls": 10},  # no window
        {"window": "1d"},  # neither calls nor sum
        {"window": "0s", "calls": 1},
        {"window": 0, "calls": 1},
        {"window": -60, "calls": 1},
        {"window": 1.5, "calls": 1},
        {"window": "367d", "calls": 1},
        {"window": 10**100, "calls": 1},
        {"window": float("inf"), "calls": 1},
        {"window": float("nan"), "calls": 1},
        {"window": True, "calls": 1},
        {"window": "1 day", "calls": 1},
        {"window": "1d", "calls": 0},
        {"window": "1d", "calls": -1},
        {"window": "1d", "calls": 1.0},
        {"window": "1d", "calls": "10"},
        {"window": "1d", "calls": True},
        {"window": "1d", "calls": 10**9 + 1},
        {"window": "1d", "calls": 10**30},
        {"window": "1d", "sum": {"amount": 0}},
        {"window": "1d", "sum": {"amount": -5}},
        {"window": "1d", "sum": {"amount": "-5"}},
        {"window": "1d", "sum": {"amount": "NaN"}},
        {"window": "1d", "sum": {"amount": "nan"}},
        {"window": "1d", "sum": {"amount": "inf"}},
        {"window": "1d", "sum": {"amount": "-Infinity"}},
        {"window": "1d", "sum": {"amount": float("nan")}},
        {"window": "1d", "sum": {"amount": float("inf")}},
        {"window": "1d", "sum": {"amount": Decimal("sNaN")}},
        {"window": "1d", "sum": {"amount": "1e400"}},
        {"window": "1d", "sum": {"amount": 10**19}},
        {"window": "1d", "sum": {"amount": "1e-30"}},
        {"window": "1d", "sum": {"amount": "five hundred"}},
        {"window": "1d", "sum": {"amount": "0x10"}},
        {"window": "1d", "sum": {"amount": "1" * 41}},
        {"window": "1d", "sum": {"amount": True}},
        {"window": "1d", "sum": {"amount": None}},
        {"window": "1d", "sum": {"amount": [5]}},
        {"window": "1d", "sum": {}},  # an empty sum and no calls
        {"window": "1d", "sum": [("amount", 5)]},
        {"window": "1d", "sum": {"": 5}},
        {"window": "1d", "sum": {".amount": 5}},
        {"window": "1d", "sum": {"a b": 5}},
        {"window": "1d", "sum": {"x" * 65: 5}},
        {"window": "1d", "sum": {f"a{i}": 5 for i in range(9)}},
        {"window": "1d", "calls": 5, "per": "holder"},  # unknown key
        {"window": "1d", "calls": 5, "Calls": 5},
    ],
)
def test_hostile_budgets_are_refused(spec: Any) -> None:
    with pytest.raises(ValueError, match="budget"):
        Budget.parse(spec)
    with pytest.raises(ValueError, match="budget"):
        Rule(REFUND, budget=spec if spec is not None else "x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "claim",
    [
        {"window": "1d", "calls": 1},  # the signed form holds seconds
        {"window": 86400.0, "calls": 1},
        {"window": 86400, "calls": 1, "sum": {"amount": 500}},  # a number, not a string
        {"window": 86400, "sum": {"amount": "5e2"}},
        {"window": 86400, "sum": {"amount": "+500"}},
        {"window": 86400, "sum": {"amount": "0500"}},
        {"window": 86400, "sum": {"amount": "500.0"}},  # one spelling per value
        {"window": 86400, "sum": {"amount": "-1"}},
        {"window": 86400, "sum": {"amount": "0"}},
        {"window": 86400, "sum": {"amount": "NaN"}},
        {"window": 86400, "sum": {"amount": " 5"}},
        {"window": 86400, "sum": {}},
        {"window": 86400, "calls": None},
        {"window": 86400, "calls": 1, "extra": 1},
        {"window": 0, "calls": 1},
        [86400, 1],
    ],
)
def test_malformed_signed_budgets_are_refused(claim: Any) -> None:
    with pytest.raises(ValueError, match="budget"):
        Budget.from_claim(claim)
    with pytest.raises(TokenFormatError):
        Rule.from_claim({"tool": REFUND, "budget": claim})


def test_a_forged_grant_with_a_bad_budget_does_not_parse(world: World) -> None:
    """A grant signed over a budget with a NaN limit is refused before any use."""
    good = refunds(world).root
    claims = _jws.peek(good.token, TYP_GRANT)[1]
    claims["scope"] = [{"tool": REFUND, "budget": {"window": 86400, "sum": {"amount": "NaN"}}}]
    with pytest.raises(TokenFormatError, match="budget"):
        Grant.parse(_jws.sign(claims, world.org, TYP_GRANT))


def test_grants_without_budgets_are_unchanged(world: World) -> None:
    """A rule without a budget signs no budget member, and old grants read as before."""
    grant = world.delegation.root
    claims = _jws.peek(grant.token, TYP_GRANT)[1]
    assert all("budget" not in rule for rule in claims["scope"])
    assert all(rule.budget is None for rule in Grant.parse(grant.token).scope)


def test_a_scope_mapping_carries_its_budget(world: World) -> None:
    delegation = refunds(world)
    assert delegation.root.scope[0].budget == Budget.parse(DAILY)
    assert delegation.leaf.scope[0].budget is None


def test_windows_are_fixed_and_aligned_to_the_epoch() -> None:
    assert window_bounds(86400 * 3 + 5, 86400) == (86400 * 3, 86400 * 4)
    assert window_bounds(86400 * 4, 86400) == (86400 * 4, 86400 * 5)
    assert window_bounds(3599.9, 3600) == (0, 3600)


@pytest.mark.parametrize(
    ("value", "amount"),
    [(5, Decimal(5)), (0, Decimal(0)), (0.1, Decimal("0.1")), (12.5, Decimal("12.5"))],
)
def test_amounts_are_exact_decimals(value: Any, amount: Decimal) -> None:
    assert amount_of({"amount": value}, "amount") == amount


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"amount": None},
        {"amount": "5"},
        {"amount": True},
        {"amount": [5]},
        {"amount": {"value": 5}},
        {"amount": -0.01},
        {"amount": -1},
        {"amount": math.nan},
        {"amount": math.inf},
        {"amount": 1e300},
        {"amount": 1e-30},
        {"amount": 10**19},
    ],
)
def test_unmeasurable_amounts_are_refused(args: dict[str, Any]) -> None:
    with pytest.raises(BudgetUnmeasurable) as caught:
        amount_of(args, "amount")
    assert caught.value.reason == Reason.BUDGET_UNMEASURABLE


# -- enforcement ------------------------------------------------------------------------------


def test_calls_and_sums_are_enforced_exactly(world: World) -> None:
    """Three refunds of 100, 200 and 200 fill a 500 budget; one more cent is refused."""
    guard = world.guard()
    delegation = refunds(world)
    assert [spend(guard, delegation, world.bot, a) for a in (100, 200, 200)] == ["ran"] * 3
    assert spend(guard, delegation, world.bot, 0.01) == Reason.BUDGET_EXHAUSTED
    assert spend(guard, delegation, world.bot, 0) == "ran"  # a zero amount still fits


def test_sums_are_decimal_not_binary(world: World) -> None:
    """0.1 + 0.2 fills a budget of 0.3 exactly (in binary floats it would overflow it)."""
    guard = world.guard()
    delegation = refunds(world, {"window": "1h", "sum": {"amount": "0.3"}})
    assert spend(guard, delegation, world.bot, 0.1) == "ran"
    assert spend(guard, delegation, world.bot, 0.2) == "ran"
    assert spend(guard, delegation, world.bot, 0.000001) == Reason.BUDGET_EXHAUSTED


def test_the_call_count_is_enforced(world: World) -> None:
    guard = world.guard()
    delegation = refunds(world, {"window": "1h", "calls": 2})
    outcomes = [spend(guard, delegation, world.bot, "anything") for _ in range(3)]
    assert outcomes == ["ran", "ran", Reason.BUDGET_EXHAUSTED]


def test_the_refusal_names_the_budget_and_when_its_window_resets(world: World) -> None:
    guard = world.guard()
    delegation = refunds(world, {"window": "1h", "calls": 1})
    spend(guard, delegation, world.bot, 1)
    _, end = window_bounds(world.clock.now(), 3600)
    with pytest.raises(BudgetExhausted) as caught:
        guard.call(delegation, REFUND, {"amount": 1}, RecordingTool(), holder=world.bot)
    assert (caught.value.budget, caught.value.resets_at) == ("link 0 rule 0", end)
    assert caught.value.link == 0
    assert caught.value.decision_id is not None
    record = last_decision(guard)
    assert record["reason"] == "budget_exhausted"
    assert record["budget"][0]["resets_at"] == end
    assert record["budget"][0]["calls"] == {"used": 1, "limit": 1}
    world.clock.set(end)  # a new window
    assert spend(guard, delegation, world.bot, 1) == "ran"


def test_the_audit_record_carries_the_budget_after_the_charge(world: World) -> None:
    guard = world.guard()
    delegation = refunds(world)
    spend(guard, delegation, world.bot, 120)
    (state,) = last_decision(guard)["budget"]
    assert state["budget"] == "link 0 rule 0"
    assert state["calls"] == {"used": 1, "limit": 10}
    assert state["sum"] == {"amount": {"used": "120", "limit": "500"}}


def test_an_unmeasurable_amount_is_refused_not_counted_as_zero(world: World) -> None:
    guard = world.guard()
    delegation = refunds(world)
    for bad in ("500", None, -1, True, [1]):
        assert spend(guard, delegation, world.bot, bad) == Reason.BUDGET_UNMEASURABLE
    tool = RecordingTool()
    with pytest.raises(DeniedError):
        guard.call(delegation, REFUND, {"reason": "no amount"}, tool, holder=world.bot)
    assert not tool.ran
    # Nothing was charged: the whole 500 is still there.
    assert spend(guard, delegation, world.bot, 500) == "ran"


def test_a_budget_rule_restricts_even_when_another_rule_admits_the_call(world: World) -> None:
    """A free rule next to a budgeted one does not escape the budget (restrictive rule)."""
    guard = world.guard()
    root = Delegation.issue(
        world.org,
        world.bot,
        [REFUND, {"tool": "billing/*", "budget": {"window": "1h", "calls": 1}}],
        ttl="1d",
        clock=world.clock,
    )
    assert spend(guard, root, world.bot, 1) == "ran"
    assert spend(guard, root, world.bot, 1) == Reason.BUDGET_EXHAUSTED


def test_a_budget_applies_unless_its_predicate_is_definitely_false(world: World) -> None:
    guard = world.guard()
    root = Delegation.issue(
        world.org,
        world.bot,
        [
            REFUND,
            {
                "tool": REFUND,
                "where": {"currency": "EUR"},
                "budget": {"window": "1h", "calls": 1},
            },
        ],
        ttl="1d",
        clock=world.clock,
    )
    tool = RecordingTool()
    for _ in range(3):  # definitely not EUR: not charged
        guard.call(root, REFUND, {"currency": "USD"}, tool, holder=world.bot)
    guard.call(root, REFUND, {"currency": "EUR"}, tool, holder=world.bot)
    # Unknown (no currency) counts against the budget: it is spent, so refused.
    with pytest.raises(BudgetExhausted):
        guard.call(root, REFUND, {}, tool, holder=world.bot)
    with pytest.raises(BudgetExhausted):
        guard.call(root, REFUND, {"currency": 7}, tool, holder=world.bot)
    assert len(tool.calls) == 4


def test_a_parent_budget_is_shared_by_all_its_descendants(world: World) -> None:
    """Ten sub-agents cannot each spend the parent's 500: together they spend 500."""
    guard = world.guard()
    parent = refunds(world, {"window": "1d", "sum": {"amount": 500}})
    spent = Decimal(0)
    for n in range(10):
        agent = world.identity(f"agent:sub{n}")
        child = parent.attenuate(
            world.bot,
            agent,
            [{"tool": REFUND, "budget": {"window": "1d", "sum": {"amount": 500}}}],
            clock=world.clock,
        )
        if spend(guard, child, agent, 80) == "ran":
            spent += 80
    assert spent == 480
    assert spend(guard, parent, world.bot, 21) == Reason.BUDGET_EXHAUSTED
    assert spend(guard, parent, world.bot, 20) == "ran"


def test_a_child_budget_wider_than_its_parent_gives_nothing_more(world: World) -> None:
    guard = world.guard()
    parent = refunds(world, {"window": "1d", "sum": {"amount": 100}})
    sub = world.identity("agent:sub")
    child = parent.attenuate(
        world.bot,
        sub,
        [{"tool": REFUND, "budget": {"window": "1d", "sum": {"amount": 1000}}}],
        clock=world.clock,
    )
    assert spend(guard, child, sub, 100) == "ran"
    assert spend(guard, child, sub, 1) == Reason.BUDGET_EXHAUSTED
    assert last_decision(guard)["link"] == 0  # the parent's budget refused it


def test_a_narrower_child_budget_binds_the_child_only(world: World) -> None:
    guard = world.guard()
    parent = refunds(world, {"window": "1d", "sum": {"amount": 500}})
    sub = world.identity("agent:sub")
    child = parent.attenuate(
        world.bot,
        sub,
        [{"tool": REFUND, "budget": {"window": "1h", "sum": {"amount": 50}}}],
        clock=world.clock,
    )
    assert spend(guard, child, sub, 50) == "ran"
    assert spend(guard, child, sub, 1) == Reason.BUDGET_EXHAUSTED
    assert last_decision(guard)["link"] == 2
    assert spend(guard, parent, world.bot, 450) == "ran"  # the parent's rest is the parent's


def test_a_dry_run_charges_nothing(world: World) -> None:
    guard = world.guard()
    delegation = refunds(world, {"window": "1h", "calls": 1})
    for _ in range(5):
        assert guard.check(delegation, REFUND, {"amount": 1}, holder=world.bot).allowed
    assert spend(guard, delegation, world.bot, 1) == "ran"
    decision = guard.check(delegation, REFUND, {"amount": 1}, holder=world.bot)
    assert (decision.outcome, decision.reason) == ("deny", "budget_exhausted")


def test_a_replayed_call_token_is_not_charged(world: World) -> None:
    guard = world.guard()
    delegation = refunds(world, {"window": "1h", "calls": 2})
    token = delegation.mint_call_token(world.bot, REFUND, {"amount": 1}, clock=world.clock)
    tool = RecordingTool()
    guard.call(delegation, REFUND, {"amount": 1}, tool, call_token=token)
    with pytest.raises(DeniedError) as caught:
        guard.call(delegation, REFUND, {"amount": 1}, tool, call_token=token)
    assert caught.value.reason == Reason.CALL_TOKEN_REPLAYED
    assert spend(guard, delegation, world.bot, 1) == "ran"  # the replay took nothing


def test_a_tool_that_fails_is_charged(world: World) -> None:
    """The charge is the decision's, made before the tool runs: a failure does not refund."""
    guard = world.guard()
    delegation = refunds(world, {"window": "1h", "calls": 1})

    def broken(**_: Any) -> None:
        raise RuntimeError("the payment provider is down")

    with pytest.raises(RuntimeError):
        guard.call(delegation, REFUND, {"amount": 1}, broken, holder=world.bot)
    assert spend(guard, delegation, world.bot, 1) == Reason.BUDGET_EXHAUSTED


# -- budgets and approvals -------------------------------------------------------------------


def test_an_exhausted_budget_is_refused_before_an_approval_is_filed(world: World) -> None:
    store = MemoryStore()
    guard = world.guard(store=store, approver=world.approver())
    delegation = refunds(world, {"window": "1h", "calls": 1}, approval=True)
    assert spend(guard, delegation, world.bot, 1) == "ran"
    filed = len(store.approval_list())
    assert spend(guard, delegation, world.bot, 1) == Reason.BUDGET_EXHAUSTED
    assert len(store.approval_list()) == filed  # nobody was asked


def test_a_rejected_call_is_not_charged(world: World) -> None:
    rejecting = world.guard(approver=world.approver(approve=False))
    delegation = refunds(world, {"window": "1h", "calls": 1}, approval=True)
    assert spend(rejecting, delegation, world.bot, 1) == Reason.APPROVAL_REJECTED
    approving = world.guard(store=rejecting.store, approver=world.approver())
    assert spend(approving, delegation, world.bot, 1) == "ran"


def test_a_pending_approval_charges_nothing(world: World) -> None:
    guard = world.guard(approval_mode="raise", approval={"channel": "queue"})
    delegation = refunds(world, {"window": "1h", "calls": 1}, approval=True)
    with pytest.raises(ApprovalPending):
        guard.call(delegation, REFUND, {"amount": 1}, RecordingTool(), holder=world.bot)
    with pytest.raises(ApprovalPending):
        guard.call(delegation, REFUND, {"amount": 2}, RecordingTool(), holder=world.bot)


def _editing(world: World, amount: Any) -> Any:
    from agentguard.approval import ApprovalBook, ApprovalRequest, CallbackChannel

    def answer(request: ApprovalRequest, book: ApprovalBook) -> None:
        book.approve(request.id, world.carol, edited_args={"amount": amount})

    return CallbackChannel(answer, name="carol")


def test_an_edit_is_charged_with_the_edited_amount(world: World) -> None:
    guard = world.guard(approver=_editing(world, 40))
    delegation = refunds(world, {"window": "1d", "sum": {"amount": 100}}, approval=True)
    tool = RecordingTool()
    guard.call(delegation, REFUND, {"amount": 90}, tool, holder=world.bot)
    assert tool.calls == [{"amount": 40}]
    assert last_decision(guard)["budget"][0]["sum"]["amount"]["used"] == "40"


def test_an_edit_over_the_budget_is_refused(world: World) -> None:
    guard = world.guard(approver=_editing(world, 101))
    delegation = refunds(world, {"window": "1d", "sum": {"amount": 100}}, approval=True)
    tool = RecordingTool()
    with pytest.raises(DeniedError) as caught:
        guard.call(delegation, REFUND, {"amount": 10}, tool, holder=world.bot)
    assert caught.value.reason == Reason.BUDGET_EXHAUSTED
    assert not tool.ran


def test_an_edit_to_a_string_amount_is_refused(world: World) -> None:
    guard = world.guard(approver=_editing(world, "10"))
    delegation = refunds(world, {"window": "1d", "sum": {"amount": 100}}, approval=True)
    with pytest.raises(DeniedError) as caught:
        guard.call(delegation, REFUND, {"amount": 10}, RecordingTool(), holder=world.bot)
    assert caught.value.reason == Reason.BUDGET_UNMEASURABLE


# -- stores --------------------------------------------------------------------------------------


def test_sqlite_keeps_the_budget_across_guards(world: World, tmp_path: Path) -> None:
    delegation = refunds(world, {"window": "1d", "calls": 2})
    first = world.guard(store=SQLiteStore(tmp_path / "state.db"))
    assert spend(first, delegation, world.bot, 1) == "ran"
    first.close()
    second = world.guard(store=SQLiteStore(tmp_path / "state.db"))
    assert spend(second, delegation, world.bot, 1) == "ran"
    assert spend(second, delegation, world.bot, 1) == Reason.BUDGET_EXHAUSTED
    second.close()


def test_a_damaged_counter_refuses_the_call(world: World, tmp_path: Path) -> None:
    import sqlite3

    delegation = refunds(world, {"window": "1d", "calls": 5})
    guard = world.guard(store=SQLiteStore(tmp_path / "state.db"))
    assert spend(guard, delegation, world.bot, 1) == "ran"
    raw = sqlite3.connect(tmp_path / "state.db")
    with raw:
        raw.execute("UPDATE budget_usage SET sums = 'not json'")
    raw.close()
    assert spend(guard, delegation, world.bot, 1) == Reason.STORE_ERROR
    guard.close()


def test_a_store_without_budgets_refuses_budgeted_chains(world: World) -> None:
    """A store that cannot keep budget counters fails closed on a budgeted chain."""

    class Forgetful(MemoryStore):
        budget_states = None  # type: ignore[assignment]

    guard = world.guard(store=Forgetful())
    assert spend(guard, refunds(world), world.bot, 1) == Reason.STORE_ERROR
    assert spend(guard, world.delegation, world.bot, 1) != Reason.STORE_ERROR


# -- spans -------------------------------------------------------------------------------------


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test (through the SDK provider tests/test_tracing.py installs)."""
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    test_tracing.ROUTER.processors.append(processor)
    yield memory
    test_tracing.ROUTER.processors.remove(processor)


def test_spans_carry_the_budget_state(world: World, exporter: InMemorySpanExporter) -> None:
    guard = world.guard()
    delegation = refunds(world, {"window": "1h", "calls": 1, "sum": {"amount": 10}})
    _, end = window_bounds(world.clock.now(), 3600)
    assert spend(guard, delegation, world.bot, 4) == "ran"
    assert spend(guard, delegation, world.bot, 4) == Reason.BUDGET_EXHAUSTED
    authorize = [
        s for s in exporter.get_finished_spans() if s.name.startswith("agentguard.authorize")
    ]
    allowed, refused = (dict(s.attributes or {}) for s in authorize)
    assert allowed[tracing.AGENTGUARD_BUDGET_NAMES] == ("link 0 rule 0",)
    assert allowed[tracing.AGENTGUARD_BUDGET_STATE] == (
        "link 0 rule 0: 0 calls left, amount 4 of 10",
    )
    assert allowed[tracing.AGENTGUARD_BUDGET_RESETS_AT] == end
    assert tracing.AGENTGUARD_BUDGET_EXHAUSTED not in allowed
    assert refused[tracing.AGENTGUARD_BUDGET_EXHAUSTED] == "link 0 rule 0"
    assert refused[tracing.AGENTGUARD_BUDGET_RESETS_AT] == end


def test_a_fixed_window_lets_twice_the_budget_run_across_its_boundary(world: World) -> None:
    """The documented price of fixed windows: a full budget at the end of one window
    and another full budget at the start of the next."""
    guard = world.guard()
    delegation = refunds(world, {"window": "1h", "sum": {"amount": 100}})
    _, end = window_bounds(world.clock.now(), 3600)
    world.clock.set(end - 1)
    assert spend(guard, delegation, world.bot, 100) == "ran"
    world.clock.set(end)
    assert spend(guard, delegation, world.bot, 100) == "ran"
    assert spend(guard, delegation, world.bot, 1) == Reason.BUDGET_EXHAUSTED


def test_a_rule_member_this_release_does_not_know_is_refused() -> None:
    """How a verifier of an earlier release treats ``budget``: strictly, as unknown."""
    with pytest.raises(TokenFormatError):
        Rule.from_claim({"tool": REFUND, "quota": {"window": 60, "calls": 1}})


def test_postgres_windows_follow_the_database_clock(world: World, pg_url: str) -> None:
    """The guard's clock says 2027; the server's says now: the window is the server's."""
    import time

    from agentguard.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    try:
        guard = world.guard(store=store)
        delegation = refunds(world, {"window": "1h", "calls": 5})
        before = time.time()
        assert spend(guard, delegation, world.bot, 1) == "ran"
        after = time.time()
        start = last_decision(guard)["budget"][0]["window_start"]
        assert start in {window_bounds(before, 3600)[0], window_bounds(after, 3600)[0]}
        assert start != window_bounds(world.clock.now(), 3600)[0]
    finally:
        store.close()


def test_the_readme_example_is_refused_at_its_daily_total(tmp_path: Path) -> None:
    """The README's budget example: 300 and 200 run, the next refund is refused."""
    import re
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "budget=" in b]
    script = tmp_path / "budget.py"
    script.write_text(block, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("budget_exhausted link 0 rule 0 ")
    assert int(out.stdout.split()[-1]) % 86400 == 0  # midnight UTC


def test_guard_attenuate_logs_a_child_budget_that_can_never_bind(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    guard = world.guard()
    parent = Delegation.issue(
        world.org,
        world.bot,
        [{"tool": "billing/*", "budget": {"window": "1d", "calls": 5}}],
        ttl="1h",
        clock=world.clock,
    )
    sub = world.identity("agent:sub")
    with caplog.at_level("WARNING", logger="agentguard"):
        guard.attenuate(
            parent, world.bot, sub, [{"tool": REFUND, "budget": {"window": "1h", "calls": 9}}]
        )
        guard.attenuate(
            parent, world.bot, sub, [{"tool": REFUND, "budget": {"window": "1h", "calls": 4}}]
        )
    notes = [r.getMessage() for r in caplog.records if "never take effect" in r.getMessage()]
    assert len(notes) == 1
    assert "calls (9 >= 5)" in notes[0]


def test_odd_inputs_at_the_edges_of_parsing() -> None:
    """A fractional timedelta window, a NaN Decimal amount, a window shown in seconds."""
    from datetime import timedelta

    with pytest.raises(ValueError, match="whole seconds"):
        Budget.parse({"window": timedelta(seconds=1.5), "calls": 1})
    assert Budget.parse({"window": timedelta(minutes=2), "calls": 1}).window == 120
    with pytest.raises(BudgetUnmeasurable, match="not finite"):
        amount_of({"amount": Decimal("NaN")}, "amount")
    assert Budget.parse({"window": 90, "calls": 1}).describe() == "1 call per 90s"


def test_a_child_budget_binds_unless_its_window_nests_in_the_parents() -> None:
    parent = Budget.parse({"window": "1d", "calls": 5, "sum": {"amount": 100}})
    same = Budget.parse({"window": "1h", "calls": 5, "sum": {"amount": 100}})
    assert same.never_binds_under(parent) == ["calls (5 >= 5)", "sum of amount (100 >= 100)"]
    # 7h windows do not nest in days: a 7h window can straddle two days.
    odd = Budget.parse({"window": "7h", "calls": 50})
    assert odd.never_binds_under(parent) == []


def test_usage_views_of_chains_without_budgets_are_empty(world: World) -> None:
    from agentguard.budgets import describe_usage, rule_usage

    store = MemoryStore()
    assert rule_usage(world.delegation.grants, store.budget_states, world.clock.now()) == {}
    view = {"sum": {"amount": {"used": "2.5", "limit": "10"}}, "resets_at": 86400}
    assert describe_usage(view) == "2.5/10 amount used (7.5 left), resets 1970-01-02T00:00:00Z"


@pytest.mark.parametrize(
    ("sums", "reason"),
    [
        ("[1]", Reason.STORE_ERROR),
        ('{"amount": "not a number"}', Reason.STORE_ERROR),
        ('{"amount": "0.' + "1" * 100 + '"}', Reason.BUDGET_EXHAUSTED),
    ],
)
def test_a_tampered_counter_never_lets_a_call_through(
    world: World, tmp_path: Path, sums: str, reason: Reason
) -> None:
    """Unreadable counters are store errors; counters beyond exact arithmetic refuse."""
    import sqlite3

    delegation = refunds(world, {"window": "1d", "sum": {"amount": 100}})
    guard = world.guard(store=SQLiteStore(tmp_path / "state.db"))
    assert spend(guard, delegation, world.bot, 1) == "ran"
    raw = sqlite3.connect(tmp_path / "state.db")
    with raw:
        raw.execute("UPDATE budget_usage SET sums = ?", (sums,))
    raw.close()
    assert spend(guard, delegation, world.bot, 1) == reason
    guard.close()
