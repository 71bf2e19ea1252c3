"""Notebook approval cards: a real kernel run by nbclient, plus in-process unit tests."""

from __future__ import annotations

import html
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import nbformat
import pytest

from agentguard.errors import ApprovalPending, ConfigError, DeniedError
from agentguard.notebook import ApprovalCard, NotebookChannel, PendingApprovals, pending_html
from agentguard.testing import RecordingTool, World
from tests.display_support import assert_shows_the_facts, shown_args, sub_agent

STEP_UP = [{"tools": ["tickets/comment"], "min_assurance": "local"}]

SETUP = """
import asyncio
import sys
print("KERNEL", sys.executable)
from agentguard import Delegation, DeniedError, Identity
from agentguard.errors import ApprovalPending
from agentguard.guard import Guard
from agentguard.notebook import NotebookChannel, PendingApprovals
from agentguard.store.memory import MemoryStore
from IPython.display import display

org, alice, bot = (Identity.generate(i) for i in ("org:acme", "user:alice", "agent:bot"))
delegation = Delegation.issue(
    org, alice, ["tickets/*"], ttl="1h", on_behalf_of="user:alice", max_depth=1
).attenuate(alice, bot, ["tickets/*"], ttl="1h")
policy = {
    "trusted_roots": [{"id": "org:acme", "public_key": org.principal.public_jwk()}],
    "approvers": [{"id": "user:carol", "min_assurance": "local"}],
    "step_up": [{"tools": ["tickets/close"], "min_assurance": "local"}],
    "approval": {"timeout": "60s"},
}
shown = []
card_shown = asyncio.Event()

def show(card):
    display(card.widget)
    shown.append(card)
    card_shown.set()

channel = NotebookChannel("user:carol", display=show)
guard = Guard(policy, store=MemoryStore(), approver=channel)
closed = []

def close_ticket(id):
    closed.append(id)
    return f"closed {id}"
"""

AWAIT_CLICK = """
async def click_approve_when_shown():
    await card_shown.wait()
    shown[-1].approve_button.click()

clicker = asyncio.ensure_future(click_approve_when_shown())
result = await guard.acall(delegation, "tickets/close", {"id": 7}, close_ticket, holder=bot)
await clicker
assert result == "closed 7", result
assert closed == [7], closed
assert shown[-1].answer == "approved"
print("ASYNC APPROVED", result)
"""

SYNC_FAILS_FAST = """
try:
    guard.call(delegation, "tickets/close", {"id": 8}, close_ticket, holder=bot)
except DeniedError as exc:
    error = exc
assert error.reason == "approval_unavailable"
assert "await guard.acall(...)" in error.explanation
assert 'approval_mode="raise"' in error.explanation
assert closed == [7] and len(shown) == 1
print("SYNC FAILED FAST:", error.explanation)
"""

AWAIT_DENY = """
card_shown.clear()

async def click_deny_when_shown():
    await card_shown.wait()
    shown[-1].message.value = "not ticket 8"
    shown[-1].deny_button.click()

clicker = asyncio.ensure_future(click_deny_when_shown())
try:
    await guard.acall(delegation, "tickets/close", {"id": 8}, close_ticket, holder=bot)
except DeniedError as exc:
    denial = exc
await clicker
assert denial.reason == "approval_rejected", denial.reason
assert "not ticket 8" in denial.explanation
assert closed == [7]
print("ASYNC DENIED")
"""

RAISE_MODE = """
raising = Guard(policy, store=MemoryStore(), approval_mode="raise")
NotebookChannel("user:carol", display=show).attach(raising)
try:
    raising.call(delegation, "tickets/close", {"id": 9}, close_ticket, holder=bot)
except ApprovalPending as exc:
    pending = exc
display(PendingApprovals(raising.approvals))
shown[-1].approve_button.click()
assert raising.call(delegation, "tickets/close", {"id": 9}, close_ticket, holder=bot) == "closed 9"
print("RAISE MODE RESUBMITTED", pending.request_id)
"""


# Run twice, as a person re-runs a cell: the second run shows the pending card again.
RERUN_PENDING = """
try:
    raising.call(delegation, "tickets/close", {"id": 10}, close_ticket, holder=bot)
except ApprovalPending as exc:
    print("PENDING", exc.request_id)
"""

RERUN_APPROVED = """
shown[-1].approve_button.click()
done = raising.call(delegation, "tickets/close", {"id": 10}, close_ticket, holder=bot)
assert done == "closed 10", done
print("RERUN APPROVED")
"""


def _kernel_outputs(cell: Any) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.extend(str(v) for v in output.get("data", {}).values())
    return "".join(parts)


def test_notebook_awaits_a_card_click_and_sync_call_fails_fast(tmp_path: Path) -> None:
    """A real kernel: an awaited call waits for the (simulated) click; a sync one fails fast."""
    from nbclient import NotebookClient

    cells = [
        SETUP,
        AWAIT_CLICK,
        SYNC_FAILS_FAST,
        AWAIT_DENY,
        RAISE_MODE,
        RERUN_PENDING,
        RERUN_PENDING,
        RERUN_APPROVED,
    ]
    # nbformat's constructors are unannotated.
    notebook = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    notebook.cells = [
        nbformat.v4.new_code_cell(textwrap.dedent(c))  # type: ignore[no-untyped-call]
        for c in cells
    ]
    client = NotebookClient(
        notebook,
        kernel_name="python3",  # the kernelspec installed in the venv runs this interpreter
        timeout=60,
        startup_timeout=60,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()

    setup, approved, failed, denied, raising, pending, rerun, rerun_approved = notebook.cells
    assert f"KERNEL {sys.executable}" in _kernel_outputs(setup)  # the venv's own ipykernel
    assert "ASYNC APPROVED closed 7" in _kernel_outputs(approved)
    widget_views = [
        o
        for o in approved.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert widget_views, "the approval card was displayed as a widget"
    assert "SYNC FAILED FAST" in _kernel_outputs(failed)
    assert "ASYNC DENIED" in _kernel_outputs(denied)
    out = _kernel_outputs(raising)
    assert "RAISE MODE RESUBMITTED" in out
    assert "tickets/close" in out  # the pending table rendered through _repr_html_
    # The re-run cell joins the same pending request and shows its card again.
    first, again = (re.search(r"PENDING (apr_\S+)", _kernel_outputs(c)) for c in (pending, rerun))
    assert first is not None
    assert again is not None
    assert first.group(1) == again.group(1)
    for cell in (pending, rerun):
        assert any(
            "application/vnd.jupyter.widget-view+json" in o.get("data", {})
            for o in cell.get("outputs", [])
        ), "the card is displayed in this run of the cell"
    assert "RERUN APPROVED" in _kernel_outputs(rerun_approved)


# -- in process ---------------------------------------------------------------------------------


class Shown:
    """A display hook that remembers cards and signals each one."""

    def __init__(self) -> None:
        self.cards: list[ApprovalCard] = []
        self.event = anyio.Event()

    def __call__(self, card: ApprovalCard) -> None:
        self.cards.append(card)
        self.event.set()


@pytest.mark.anyio
async def test_awaited_call_waits_for_the_click_in_process() -> None:
    world = World()
    shown = Shown()
    guard = world.guard(approver=NotebookChannel("user:carol", display=shown), step_up=STEP_UP)
    tool = RecordingTool()

    async def click() -> None:
        await shown.event.wait()
        shown.cards[0].message.value = "looks right"
        shown.cards[0].approve_button.click()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(click)
            result = await guard.acall(
                world.delegation, "tickets/comment", {"id": 1}, tool, holder=world.bot
            )
    assert result == "done"
    assert tool.calls == [{"id": 1}]
    card = shown.cards[0]
    assert card.answer == "approved"
    assert card.approve_button.disabled
    assert card.deny_button.disabled
    assert "Approved" in card.status.value
    request = guard.approvals.get(card.request.id)
    assert request.approver == "user:carol"
    assert request.message == "looks right"


def test_sync_blocking_call_fails_fast_and_closes_the_request() -> None:
    world = World()
    shown = Shown()
    channel = NotebookChannel("user:carol", display=shown)
    guard = world.guard(approver=channel, step_up=STEP_UP)
    tool = RecordingTool()
    with pytest.raises(DeniedError) as denied:
        guard.call(world.delegation, "tickets/comment", {"id": 1}, tool, holder=world.bot)
    assert denied.value.reason == "approval_unavailable"
    assert "await guard.acall(...)" in denied.value.explanation
    assert not shown.cards
    assert not tool.ran
    assert guard.approvals.pending() == []  # closed: a later awaited call files a fresh one


def test_raise_mode_shows_the_card_and_resubmission_runs() -> None:
    world = World()
    shown = Shown()
    guard = world.guard(approval_mode="raise", step_up=STEP_UP)
    channel = NotebookChannel("user:carol", display=shown).attach(guard)
    assert guard.channel is channel
    tool = RecordingTool()
    with pytest.raises(ApprovalPending):
        guard.call(world.delegation, "tickets/comment", {"id": 2}, tool, holder=world.bot)
    assert "tickets/comment" in PendingApprovals(guard.approvals)._repr_html_()
    shown.cards[0].approve_button.click()
    assert guard.call(world.delegation, "tickets/comment", {"id": 2}, tool, holder=world.bot)
    assert tool.calls == [{"id": 2}]
    assert "No approval requests are pending" in PendingApprovals(guard.approvals)._repr_html_()


def test_a_card_whose_answer_would_not_count_offers_no_button_and_says_who_can() -> None:
    """An approver the policy does not list gets no live button; the card says why and
    who can answer instead; a click anyway (a widget API call) records nothing."""
    world = World()
    shown = Shown()
    guard = world.guard(approval_mode="raise", step_up=STEP_UP)
    NotebookChannel("user:mallory", display=shown).attach(guard)
    with pytest.raises(ApprovalPending) as pending:
        guard.call(
            world.delegation, "tickets/comment", {"id": 3}, RecordingTool(), holder=world.bot
        )
    card = shown.cards[0]
    assert card.approve_button.disabled
    assert card.deny_button.disabled
    assert "would not count" in card.status.value
    assert "not an approver in the policy" in card.status.value
    assert "user:carol can approve it" in html.unescape(card.status.value)
    card.deny_button.click()
    assert card.answer is None
    assert "Not recorded" in card.status.value
    assert guard.approvals.get(pending.value.request_id).status == "pending"
    assert card._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]


def test_card_and_table_escape_what_they_show() -> None:
    world = World()
    shown = Shown()
    guard = world.guard(approval_mode="raise", step_up=STEP_UP)
    NotebookChannel("user:carol", display=shown).attach(guard)
    with pytest.raises(ApprovalPending):
        guard.call(
            world.delegation,
            "tickets/comment",
            {"text": "<script>alert(1)</script>"},
            RecordingTool(),
            holder=world.bot,
        )
    card_html = shown.cards[0].widget.children[0].value
    assert "<script>" not in card_html
    assert "&lt;script&gt;" in card_html
    table = pending_html(guard.approvals.pending(), world.clock.now())
    assert "<td><code>tickets/comment</code></td>" in table


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ConfigError, match=r"agentguard\[notebook\]"):
        NotebookChannel("user:carol")


def test_the_card_shows_the_same_facts() -> None:
    """The card shows every argument, folds with the whole value in a details element,
    escaped names and the agent's own claims marked as such."""
    world = World()
    shown = Shown()
    guard = world.guard(approval_mode="raise", step_up=STEP_UP)
    NotebookChannel("user:carol", display=shown).attach(guard)
    sub, delegation = sub_agent(world)
    with pytest.raises(ApprovalPending):
        guard.call(delegation, "tickets/comment", shown_args(), RecordingTool(), holder=sub)
    card_html = shown.cards[0].widget.children[0].value
    text = html.unescape(card_html)
    assert_shows_the_facts(text, text)
    assert "<details" in card_html
    assert "<summary>show all</summary>" in card_html


def test_a_card_shown_again_asks_the_book_again() -> None:
    """A re-run cell shows the pending card again with what a click would do *now*: an
    approver revoked since sees no live button (the card is not a stale picture)."""
    world = World()
    shown = Shown()
    approvers = [*world.policy()["approvers"], {"id": "user:dave", "min_assurance": "local"}]
    guard = world.guard(approval_mode="raise", step_up=STEP_UP, approvers=approvers)
    NotebookChannel("user:carol", display=shown).attach(guard)
    tool = RecordingTool()
    with pytest.raises(ApprovalPending):
        guard.call(world.delegation, "tickets/comment", {"id": 4}, tool, holder=world.bot)
    card = shown.cards[0]
    assert not card.approve_button.disabled

    guard.revoke("principal", "user:carol", reason="left the team")
    with pytest.raises(ApprovalPending):
        guard.call(world.delegation, "tickets/comment", {"id": 4}, tool, holder=world.bot)
    assert shown.cards == [card, card]  # the same card, shown again
    assert card.approve_button.disabled
    assert card.deny_button.disabled
    assert "user:carol is revoked" in card.status.value
    card.approve_button.click()
    assert card.answer is None
    assert not tool.ran
