"""A call awaiting approval says who can answer it; one nobody can answer is refused at once."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import pytest

from agentguard.approval import ApprovalBook, ApprovalRequest, QueueChannel
from agentguard.clock import ManualClock, SystemClock
from agentguard.errors import ApprovalPending, DeniedError, StoreError
from agentguard.store.base import Revocation
from agentguard.store.memory import MemoryStore
from agentguard.testing import RecordingTool, World, audit_records

TOOL = "admin/reset"
ARGS: dict[str, Any] = {"target": "db1"}


class CountingQueue(QueueChannel):
    """A queue channel that counts deliveries."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered = 0

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        self.delivered += 1
        super().deliver(request, book)


def test_a_pending_request_says_who_can_answer_and_how() -> None:
    world = World()
    guard = world.guard(
        approver=QueueChannel(), approval_mode="raise", approval={"channel": "queue"}
    )
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, TOOL, ARGS, RecordingTool(), holder=world.bot)
    text = str(info.value)
    rid = info.value.request_id
    assert world.carol.id in text
    assert f"agentguard approvals approve {rid} --as ID" in text
    # The rule demands 'signed': the page's answers would not count, so it is not offered.
    assert "approvals serve" not in text


def test_the_page_is_offered_where_its_answer_counts() -> None:
    world = World()
    guard = world.guard(
        approver=QueueChannel(),
        approval_mode="raise",
        approval={"channel": "queue", "grant_rule_assurance": "authenticated"},
    )
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, TOOL, ARGS, RecordingTool(), holder=world.bot)
    text = str(info.value)
    assert "agentguard approvals serve" in text
    assert "terminal" not in text  # 'local' answers would not count either


def test_a_blocking_wait_logs_one_line_naming_the_request_and_the_approver(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World(clock=ManualClock(time.time()))
    guard = world.guard(
        clock=SystemClock(), approver=QueueChannel(), approval={"channel": "queue", "timeout": 0.3}
    )
    with (
        caplog.at_level(logging.WARNING, logger="agentguard"),
        pytest.raises(DeniedError) as info,
    ):
        guard.call(world.delegation, TOOL, ARGS, RecordingTool(), holder=world.bot)
    assert info.value.reason == "approval_timeout"
    waiting = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
    assert len(waiting) == 1, waiting  # once per wait, not once per poll
    assert re.search(r"waiting up to 0\.\ds for approval", waiting[0]), waiting[0]
    assert world.carol.id in waiting[0]
    assert TOOL in waiting[0]
    assert "approvals approve apr_" in waiting[0]


def test_an_answer_already_given_on_delivery_logs_no_wait(caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    guard = world.guard(approver=world.approver(approve=True))
    tool = RecordingTool()
    with caplog.at_level(logging.WARNING, logger="agentguard"):
        guard.call(world.delegation, TOOL, ARGS, tool, holder=world.bot)
    assert tool.ran
    assert not [r for r in caplog.records if "waiting up to" in r.getMessage()]


@pytest.mark.parametrize(
    "approvers",
    [
        pytest.param([], id="no approvers at all"),
        pytest.param([{"id": "user:dan", "tools": ["billing/*"]}], id="approver for other tools"),
        pytest.param(
            [{"id": "agent:helper", "tools": ["*/*"]}], id="not a human, duties separated"
        ),
        pytest.param([{"id": "agent:bot", "tools": ["*/*"]}], id="the requesting agent itself"),
    ],
)
def test_a_request_nobody_may_approve_is_refused_at_once(approvers: list[dict[str, Any]]) -> None:
    world = World()
    channel = CountingQueue()
    guard = world.guard(
        approver=channel,
        approval_mode="raise",
        approval={"channel": "queue", "separation_of_duties": True},
        approvers=approvers,
    )
    tool = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, TOOL, ARGS, tool, holder=world.bot)
    assert not isinstance(info.value, ApprovalPending)
    assert info.value.reason == "no_approver"
    assert "approvers:" in str(info.value)  # says what to add, and where
    assert not tool.ran
    assert channel.delivered == 0  # nobody was asked a question nobody may answer
    assert audit_records(guard)[-1]["reason"] == "no_approver"


def test_a_revoked_approver_cannot_answer_so_nobody_may() -> None:
    world = World()
    guard = world.guard(
        approver=QueueChannel(), approval_mode="raise", approval={"channel": "queue"}
    )
    guard.revoke("principal", world.carol.id, reason="left the team")
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, TOOL, ARGS, RecordingTool(), holder=world.bot)
    assert info.value.reason == "no_approver"


class RevocationsUnreadable(MemoryStore):
    """A store whose revocations of approvers cannot be read once ``broken`` is set (the
    chain's own lookups, which name its links, still work)."""

    broken = False

    def find_revoked(
        self, link_ids: Sequence[str], kids: Sequence[str], principals: Sequence[str]
    ) -> Revocation | None:
        if self.broken and principals and not link_ids:
            raise StoreError("revocations cannot be read (injected)")
        return super().find_revoked(link_ids, kids, principals)


def test_cannot_tell_who_may_approve_refuses_with_the_store_error_not_no_approver() -> None:
    world = World()
    store = RevocationsUnreadable()
    guard = world.guard(
        store=store, approver=QueueChannel(), approval_mode="raise", approval={"channel": "queue"}
    )
    store.broken = True
    tool = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, TOOL, ARGS, tool, holder=world.bot)
    assert not isinstance(info.value, ApprovalPending)
    assert info.value.reason == "store_error"  # the cause, not no_approver, not the channel
    assert "injected" in str(info.value)
    assert not tool.ran
    assert audit_records(guard)[-1]["reason"] == "store_error"


def test_a_request_nobody_may_approve_is_withdrawn_not_left_pending() -> None:
    """Refused with no_approver, the request it filed is closed: an approver listed later
    answers a new request for a later call, never this one."""
    world = World()
    guard = world.guard(
        approver=QueueChannel(), approval_mode="raise", approval={"channel": "queue"}, approvers=[]
    )
    for _ in range(3):
        with pytest.raises(DeniedError) as info:
            guard.call(world.delegation, TOOL, ARGS, RecordingTool(), holder=world.bot)
        assert info.value.reason == "no_approver"
    assert guard.approvals.pending() == []
    assert {r.status for r in guard.approvals.all()} <= {"closed"}


def test_a_level_this_version_does_not_know_is_not_reported_as_no_approver() -> None:
    world = World()
    guard = world.guard(
        approver=QueueChannel(), approval_mode="raise", approval={"channel": "queue"}
    )
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, TOOL, ARGS, RecordingTool(), holder=world.bot)
    request = guard.approvals.get(info.value.request_id)
    from_newer = dataclasses.replace(request, min_assurance="quantum")
    with pytest.raises(DeniedError) as refused:
        guard.approvals.who_may_approve(from_newer)
    assert refused.value.reason == "approval_invalid"
    assert "'quantum'" in str(refused.value)


def test_who_may_approve_reads_each_approver_once() -> None:
    """One revocation lookup per approver (no message built per refusal inside the loop)."""
    world = World()
    many = [{"id": f"user:p{i}", "tools": ["billing/*"]} for i in range(60)]
    store = CountingLookups()
    guard = world.guard(
        store=store,
        approver=QueueChannel(),
        approval_mode="raise",
        approval={"channel": "queue"},
        approvers=[*many, *world.policy()["approvers"]],
    )
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, TOOL, ARGS, RecordingTool(), holder=world.bot)
    request = guard.approvals.get(info.value.request_id)
    store.lookups = 0
    assert guard.approvals.who_may_approve(request) == [world.carol.id]
    assert store.lookups <= 1  # only carol's tools cover admin/reset: one revocation read


class CountingLookups(MemoryStore):
    lookups = 0

    def find_revoked(
        self, link_ids: Sequence[str], kids: Sequence[str], principals: Sequence[str]
    ) -> Revocation | None:
        self.lookups += 1
        return super().find_revoked(link_ids, kids, principals)


def test_an_approver_with_no_key_yet_is_named_with_what_they_need() -> None:
    """A 'signed' answer needs the approver's key: one listed without a key is still asked
    (a key made before the deadline counts), and the line says what they need."""
    world = World()
    guard = world.guard(
        approver=QueueChannel(),
        approval_mode="raise",
        approval={"channel": "queue"},
        approvers=[{"id": "user:dan", "tools": ["admin/*"]}],
        step_up=[{"tools": ["admin/*"], "min_assurance": "signed"}],
    )
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, TOOL, ARGS, RecordingTool(), holder=world.bot)
    assert "no key is known yet for user:dan" in str(info.value)
    assert "agentguard identity new ID" in str(info.value)
