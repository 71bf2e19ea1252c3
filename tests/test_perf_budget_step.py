"""Attacks on the budget step's shortcut: it may skip only calls no budget can apply to.

The scope check remembers, with its plan for a (delegation, tool) pair, whether
any rule of any link whose pattern selects the tool carries a budget
(``ScopeMatch.budgeted``); the budget step skips its walk over the rules when
that is false and the policy has no ``budgets:``. Every test here runs a chain
warm (the verifier's chain cache and scope plans serving it) and shows that
each budget that may apply is still charged.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentguard.budgets import charges_for
from agentguard.decision import Reason
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.testing import RecordingTool, World, audit_records

REFUND = "billing/refund"
READ = "billing/read"
TWO_CALLS: dict[str, Any] = {"window": "1h", "calls": 2}


@pytest.fixture
def world() -> World:
    return World()


def call(guard: Guard, delegation: Delegation | str, holder: Identity, tool: str = REFUND) -> str:
    """One call: ``"ran"`` or the refusal's reason."""
    try:
        guard.call(delegation, tool, {"amount": 1}, RecordingTool(), holder=holder)
    except DeniedError as exc:
        return str(exc.reason)
    return "ran"


def last_decision(guard: Guard) -> dict[str, Any]:
    return next(r for r in reversed(audit_records(guard)) if r["type"] == "decision")


def three_links(world: World, budgets: tuple[Any, Any, Any]) -> Delegation:
    """``org -> alice -> bot -> sub`` over billing; link ``i``'s refund rule has ``budgets[i]``."""
    sub = world.identity("agent:sub")
    scopes: list[list[Any]] = [
        [{"tool": REFUND, "budget": budget}, READ] if budget else [REFUND, READ]
        for budget in budgets
    ]
    d = Delegation.issue(world.org, world.alice, scopes[0], ttl="1d", clock=world.clock)
    d = d.attenuate(world.alice, world.bot, scopes[1], clock=world.clock)
    return d.attenuate(world.bot, sub, scopes[2], clock=world.clock)


@pytest.mark.parametrize("link", [0, 1, 2])
@pytest.mark.parametrize("serialized", [False, True])
def test_a_budgeted_chain_served_from_the_cache_is_still_charged(
    world: World, link: int, serialized: bool
) -> None:
    """A budget on any one link (the others free) binds every warm call."""
    guard = world.guard()
    budgets: list[Any] = [None, None, None]
    budgets[link] = TWO_CALLS
    delegation = three_links(world, (budgets[0], budgets[1], budgets[2]))
    sub = world.identity("agent:sub")
    presented: Delegation | str = delegation.serialize() if serialized else delegation
    assert call(guard, presented, sub) == "ran"
    # The chain is cached now: the verifier hands out the same verified chain.
    assert (
        guard.verifier.verify_chain(presented).delegation
        is guard.verifier.verify_chain(presented).delegation
    )
    assert call(guard, presented, sub) == "ran"
    assert last_decision(guard)["budget"][0]["calls"] == {"used": 2, "limit": 2}
    assert call(guard, presented, sub) == Reason.BUDGET_EXHAUSTED
    # A tool the budgeted rule does not select is not charged, and runs.
    assert call(guard, presented, sub, READ) == "ran"
    assert "budget" not in last_decision(guard)


def test_a_policy_budget_still_applies_to_an_unbudgeted_chain(world: World) -> None:
    guard = world.guard(budgets=[{"tools": [REFUND], "window": "1h", "calls": 2, "per": "global"}])
    delegation = three_links(world, (None, None, None))
    sub = world.identity("agent:sub")
    chain = guard.verifier.verify_chain(delegation)
    assert guard.verifier.authorize(chain, REFUND, {"amount": 1}).budgeted is False
    outcomes = [call(guard, delegation, sub) for _ in range(3)]
    assert outcomes == ["ran", "ran", Reason.BUDGET_EXHAUSTED]
    assert last_decision(guard)["budget"][0]["calls"] == {"used": 2, "limit": 2}


def test_a_budget_of_another_tool_does_not_count_and_of_this_tool_does(world: World) -> None:
    """``budgeted`` follows the tool: the plan for one tool says nothing of another's."""
    guard = world.guard()
    root = Delegation.issue(
        world.org,
        world.bot,
        [REFUND, {"tool": READ, "budget": {"window": "1h", "calls": 1}}],
        ttl="1d",
        clock=world.clock,
    )
    chain = guard.verifier.verify_chain(root)
    assert guard.verifier.authorize(chain, REFUND, {}).budgeted is False
    assert guard.verifier.authorize(chain, READ, {}).budgeted is True
    assert [call(guard, root, world.bot) for _ in range(3)] == ["ran"] * 3
    assert [call(guard, root, world.bot, READ) for _ in range(2)] == [
        "ran",
        Reason.BUDGET_EXHAUSTED,
    ]


def test_a_budget_whose_predicate_is_unknown_is_still_charged(world: World) -> None:
    """``budgeted`` ignores predicates: a budget applies unless its predicate is false."""
    guard = world.guard()
    root = Delegation.issue(
        world.org,
        world.bot,
        [
            REFUND,
            {"tool": REFUND, "where": {"currency": "EUR"}, "budget": {"window": "1h", "calls": 1}},
        ],
        ttl="1d",
        clock=world.clock,
    )
    assert call(guard, root, world.bot) == "ran"  # no currency: cannot tell, charged
    assert call(guard, root, world.bot) == Reason.BUDGET_EXHAUSTED


@pytest.mark.parametrize(
    "scopes",
    [
        [[REFUND], [REFUND]],
        [[REFUND, {"tool": READ, "budget": TWO_CALLS}], [REFUND]],
        [[{"tool": "billing/*", "budget": TWO_CALLS}], [REFUND]],
        [[REFUND], [{"tool": REFUND, "budget": TWO_CALLS}]],
        [[REFUND], [REFUND, {"tool": REFUND, "where": {"amount": 2}, "budget": TWO_CALLS}]],
        [["billing/*"], [{"tool": "billing/*", "budget": TWO_CALLS}]],
    ],
)
def test_not_budgeted_means_no_rule_budget_would_be_charged(
    world: World, scopes: list[list[Any]]
) -> None:
    root = Delegation.issue(world.org, world.alice, scopes[0], ttl="1d", clock=world.clock)
    chain_d = root.attenuate(world.alice, world.bot, scopes[1], clock=world.clock)
    guard = world.guard()
    chain = guard.verifier.verify_chain(chain_d)
    for args in ({"amount": 1}, {"amount": 2}, {}):
        match = guard.verifier.authorize(chain, REFUND, args)
        charged = charges_for(chain.delegation.grants, REFUND, args)
        if not match.budgeted:
            assert charged == []
        budgets_selecting = [
            rule
            for grant in chain.delegation
            for rule in grant.scope
            if rule.budget is not None and rule.matches_tool(REFUND)
        ]
        assert match.budgeted is bool(budgets_selecting)
