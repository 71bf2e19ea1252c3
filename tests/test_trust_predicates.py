"""The trust review's reproductions through the Python API: decisions on what cannot be told.

Restrictive rules (policy deny and step_up, approval rules of a grant) apply
unless their predicate is definitely false; granting rules admit only on
definite truth. Each case below ran the tool on the release before.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentguard.approval import QueueChannel
from agentguard.errors import ApprovalPending, DeniedError
from agentguard.guard import Guard
from agentguard.testing import RecordingTool, World, audit_records

STEP_UP = [{"tools": ["billing/refund"], "where": {"amount": {">": 100}}}]
DENY = [{"tools": ["fs/*"], "where": {"path": {"within": "/etc"}}}]
# More list items than a predicate's evaluation budget: the answer is "unknown".
RECIPIENTS = [f"ok{i}" for i in range(20_000)]


@pytest.fixture
def guard(world: World) -> Guard:
    return world.guard(step_up=STEP_UP, deny=DENY, approval={"mode": "raise"})


@pytest.mark.parametrize("amount", ["5000", " 5000", "5e3", ["5000"], [5000], None])
def test_step_up_applies_when_the_amount_cannot_be_compared(
    world: World, guard: Guard, amount: Any
) -> None:
    """The tool does not run without approval; the decision says approval is required."""
    args = {} if amount is None else {"amount": amount}
    tool = RecordingTool()
    with pytest.raises((ApprovalPending, DeniedError)):
        guard.call(world.delegation, "billing/refund", args, tool, holder=world.bot)
    assert not tool.ran
    assert guard.check(world.delegation, "billing/refund", args, holder=world.bot).outcome in (
        "approval_required",
        "deny",
    )


def test_grant_predicates_admit_only_definite_truth(world: World, guard: Guard) -> None:
    """`amount <= 1000` in the grant does not admit "5" (a string): denied, not approved."""
    decision = guard.check(world.delegation, "billing/refund", {"amount": "5"}, holder=world.bot)
    assert (decision.outcome, decision.reason) == ("deny", "predicate_failed")


@pytest.mark.parametrize(
    "path", ["/../etc/shadow", "/etc//shadow", ["/etc/shadow"], "/etc/shadow\x00", "etc/shadow"]
)
def test_within_deny_applies_to_paths_it_cannot_place_outside(
    world: World, guard: Guard, path: Any
) -> None:
    """Denied with policy_denied, and the tool never runs."""
    tool = RecordingTool()
    with pytest.raises(DeniedError) as caught:
        guard.call(world.delegation, "fs/read", {"path": path}, tool, holder=world.bot)
    assert caught.value.reason == "policy_denied"
    assert not tool.ran


def test_if_missing_skip_lets_calls_without_the_field_through(world: World) -> None:
    """An operator can say a restrictive rule does not concern calls that lack its field."""
    deny = [{"tools": ["fs/*"], "where": {"path": {"within": "/etc"}}, "if_missing": "skip"}]
    guard = world.guard(deny=deny)
    assert guard.check(world.delegation, "fs/list", {}, holder=world.bot).outcome == "allow"
    refused = guard.check(world.delegation, "fs/read", {"path": 7}, holder=world.bot)
    assert refused.reason == "policy_denied"


def test_an_approval_rule_applies_beside_a_broader_free_rule(world: World) -> None:
    """`hosts/*` free and `hosts/quarantine` with approval in one grant: approval needed."""
    scope: list[str | dict[str, Any]] = ["hosts/*", {"tool": "hosts/quarantine", "approval": True}]
    delegation = world.chain(world.bot, scope=scope)
    guard = world.guard()
    decision = guard.check(delegation, "hosts/quarantine", {}, holder=world.bot)
    assert decision.outcome == "approval_required"
    assert guard.check(delegation, "hosts/list", {}, holder=world.bot).outcome == "allow"


def test_free_below_a_bound_approval_above_is_written_with_not(world: World) -> None:
    """The documented idiom: a free rule for X, an approval rule for `not X`."""
    small = {"amount": {"<=": 100}}
    scope: list[str | dict[str, Any]] = [
        {"tool": "billing/refund", "where": small},
        {"tool": "billing/refund", "where": {"$not": small}, "approval": True},
    ]
    delegation = world.chain(world.bot, scope=scope)
    guard = world.guard()

    def outcome(args: dict[str, Any]) -> str:
        return guard.check(delegation, "billing/refund", args, holder=world.bot).outcome

    assert outcome({"amount": 50}) == "allow"
    assert outcome({"amount": 5000}) == "approval_required"
    assert outcome({"amount": "50"}) == "deny"


def test_a_refusal_says_when_the_guard_could_not_tell(world: World, guard: Guard) -> None:
    """predicate_failed on a wrongly typed value explains "cannot tell", not "does not admit"."""
    unsure = guard.check(world.delegation, "billing/refund", {"amount": "5"}, holder=world.bot)
    assert "cannot tell whether these arguments satisfy it" in unsure.explanation
    clear = guard.check(world.delegation, "billing/refund", {"amount": 5000}, holder=world.bot)
    assert "does not admit these arguments" in clear.explanation


def test_deny_rule_skipped_by_exhausting_the_predicate_budget(world: World) -> None:
    """Attack: a huge argument list makes a policy deny rule's predicate run out of budget."""
    guard = world.guard(
        deny=[{"tools": ["tickets/*"], "where": {"to": {"any": {"==": "evil"}}}}],
    )
    fn = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, "tickets/send", {"to": [*RECIPIENTS, "evil"]}, fn,
                   holder=world.bot)  # fmt: skip
    assert info.value.reason == "policy_denied"
    assert not fn.ran


def test_step_up_rule_skipped_by_exhausting_the_predicate_budget(world: World) -> None:
    """Attack: a huge argument list makes a policy step_up rule's predicate run out of budget."""
    guard = world.guard(
        approver=QueueChannel(),
        approval_mode="raise",
        step_up=[{"tools": ["tickets/*"], "where": {"to": {"any": {"==": "vip"}}}}],
        # Large enough to show all 20 001 recipients to the approver.
        approval={"channel": "queue", "display_limit": 400_000},
    )
    fn = RecordingTool()
    with pytest.raises(ApprovalPending):
        guard.call(world.delegation, "tickets/send", {"to": [*RECIPIENTS, "vip"]}, fn,
                   holder=world.bot)  # fmt: skip
    assert not fn.ran
    assert audit_records(guard)[-1]["reason"] == "approval_pending"
