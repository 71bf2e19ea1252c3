"""Property: no interleaving of calls over a delegation tree ever exceeds any link's budget.

Hypothesis draws the budgets of a four-holder tree (``org -> alice -> bot -> sub1 |
sub2``), then a sequence of refunds from any holder with any amount, and clock
moves across windows. An exact model (per budget and fixed window: calls and
the Decimal sum) predicts every outcome; the guard must agree with it call for
call, and the model's totals are checked against every budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentguard.budgets import Budget, window_bounds
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.keys import Identity
from agentguard.testing import RecordingTool, World

REFUND = "billing/refund"


@st.composite
def budgets(draw: st.DrawFn, window: int) -> dict[str, Any] | None:
    calls = draw(st.none() | st.integers(1, 6))
    total = draw(st.none() | st.integers(1, 300))
    if calls is None and total is None:
        return None
    spec: dict[str, Any] = {"window": draw(st.sampled_from([window, 2 * window]))}
    if calls is not None:
        spec["calls"] = calls
    if total is not None:
        spec["sum"] = {"amount": Decimal(total) / 4}  # quarters: exact in binary too
    return spec


@dataclass
class Holder:
    name: str
    identity: Identity
    delegation: Delegation
    #: The budgets charged for this holder's calls: (link id, Budget), root first.
    budgets: list[tuple[str, Budget]]


def _tree(world: World, specs: list[dict[str, Any] | None]) -> list[Holder]:
    def rule(spec: dict[str, Any] | None) -> list[Any]:
        return [{"tool": REFUND, "budget": spec} if spec else REFUND]

    def charged(delegation: Delegation) -> list[tuple[str, Budget]]:
        out = []
        for grant in delegation:
            budget = grant.scope[0].budget
            if isinstance(budget, Budget):
                out.append((grant.link_id, budget))
        return out

    root = Delegation.issue(
        world.org, world.alice, rule(specs[0]), ttl="1d", max_depth=3, clock=world.clock
    )
    bot = root.attenuate(world.alice, world.bot, rule(specs[1]), clock=world.clock)
    sub1, sub2 = world.identity("agent:sub1"), world.identity("agent:sub2")
    one = bot.attenuate(world.bot, sub1, rule(specs[2]), clock=world.clock)
    two = bot.attenuate(world.bot, sub2, rule(specs[3]), clock=world.clock)
    return [
        Holder(name, who, chain, charged(chain))
        for name, who, chain in (
            ("alice", world.alice, root),
            ("bot", world.bot, bot),
            ("sub1", sub1, one),
            ("sub2", sub2, two),
        )
    ]


steps = st.lists(
    st.tuples(
        st.integers(0, 3),  # which holder calls
        st.integers(0, 200),  # the amount, in quarters
        st.sampled_from([0, 0, 0, 60, 1800, 3600]),  # how far the clock moves first
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.tuples(budgets(3600), budgets(3600), budgets(1800), budgets(1800)),
    calls=steps,
)
def test_no_interleaving_exceeds_any_budget(
    specs: tuple[dict[str, Any] | None, ...], calls: list[tuple[int, int, int]]
) -> None:
    world = World()
    guard = world.guard()
    holders = _tree(world, list(specs))
    # The model: (link id, window start) -> [calls, sum].
    used: dict[tuple[str, int], list[Any]] = {}
    for who, quarters, advance in calls:
        world.clock.advance(advance)
        holder = holders[who]
        amount = Decimal(quarters) / 4
        now = world.clock.now()
        fits = True
        for link_id, budget in holder.budgets:
            start, _ = window_bounds(now, budget.window)
            n, total = used.get((link_id, start), [0, Decimal(0)])
            limit = dict(budget.sums).get("amount")
            if budget.calls is not None and n + 1 > budget.calls:
                fits = False
            if limit is not None and total + amount > limit:
                fits = False
        tool = RecordingTool()
        try:
            guard.call(
                holder.delegation, REFUND, {"amount": float(amount)}, tool, holder=holder.identity
            )
            outcome = "ran"
        except DeniedError as exc:
            outcome = str(exc.reason)
        assert outcome == ("ran" if fits else "budget_exhausted"), (holder.name, amount)
        assert tool.ran == fits
        if fits:
            for link_id, budget in holder.budgets:
                start, _ = window_bounds(now, budget.window)
                slot = used.setdefault((link_id, start), [0, Decimal(0)])
                slot[0] += 1
                slot[1] += amount
    # Every budget, in every window, within its limits.
    limits = {link: budget for h in holders for link, budget in h.budgets}
    for (link_id, _), (n, total) in used.items():
        budget = limits[link_id]
        assert budget.calls is None or n <= budget.calls
        limit = dict(budget.sums).get("amount")
        assert limit is None or total <= limit
