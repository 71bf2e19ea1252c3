"""Every channel offers only answers that would count, and says what would otherwise.

The terminal does not prompt, the CLI does not sign, and a notebook card shows
no live button when the answer it would record is refused by the policy; each
names who can answer and through which channel. A request that is still
pending shows its card again when the call is made again (a re-run cell).
"""

from __future__ import annotations

import html
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentguard.approval import QueueChannel, TerminalChannel, answer_routes
from agentguard.clock import ManualClock
from agentguard.errors import ApprovalPending, DeniedError, StoreError
from agentguard.guard import Guard
from agentguard.notebook import ApprovalCard, NotebookChannel
from agentguard.store.base import Revocation
from agentguard.store.memory import MemoryStore
from agentguard.testing import RecordingTool, World

from .cli.cli_support import CLI, one_line_error

TOOL = "tickets/comment"
LOCAL = [{"tools": [TOOL], "min_assurance": "local"}]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Shown:
    """Records every card a notebook channel displays, in order."""

    def __init__(self) -> None:
        self.cards: list[ApprovalCard] = []

    def __call__(self, card: ApprovalCard) -> None:
        self.cards.append(card)


# -- terminal ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at_terminal", "reason", "says"),
    [
        pytest.param(
            "user:mallory", "approver_not_authorized", "not an approver", id="not an approver"
        ),
        pytest.param("user:alice", "separation_of_duties", "subject or sponsor", id="in the chain"),
    ],
)
def test_the_terminal_does_not_prompt_for_an_answer_that_would_not_count(
    at_terminal: str, reason: str, says: str
) -> None:
    world = World()
    out = io.StringIO()
    channel = TerminalChannel(at_terminal, stdin=FakeTTY("y\n"), stdout=out)
    approvers = [*world.policy()["approvers"], {"id": "user:alice", "min_assurance": "local"}]
    guard = world.guard(approver=channel, step_up=LOCAL, approvers=approvers)
    tool = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, TOOL, {"id": 1}, tool, holder=world.bot)
    assert info.value.reason == reason
    assert says in info.value.explanation
    assert "user:carol can approve it" in info.value.explanation  # who can, instead
    assert out.getvalue() == ""  # nothing was asked
    assert not tool.ran


def test_the_terminal_still_prompts_the_approver_whose_answer_counts() -> None:
    world = World()
    out = io.StringIO()
    guard = world.guard(
        approver=TerminalChannel("user:carol", stdin=FakeTTY("y\n"), stdout=out), step_up=LOCAL
    )
    tool = RecordingTool()
    guard.call(world.delegation, TOOL, {"id": 1}, tool, holder=world.bot)
    assert "Approve as user:carol?" in out.getvalue()
    assert tool.calls == [{"id": 1}]


# -- the queue from the CLI -------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CLI:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    monkeypatch.delenv("AGENTGUARD_POLICY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return CLI(tmp_path)


def _filed(cli: CLI, world: World, **policy: Any) -> str:
    """A request filed through a guard on the CLI's home and policy file; its id.

    The world's clock is the system's: the CLI reads time from it.
    """
    path = world.write_policy(cli.root / "agentguard.yaml", step_up=LOCAL, **policy)
    guard = Guard(path, home=cli.home, approver=QueueChannel(), approval_mode="raise")
    try:
        with pytest.raises(ApprovalPending) as info:
            guard.call(world.delegation, TOOL, {"id": 1}, RecordingTool(), holder=world.bot)
    finally:
        guard.close()
    return info.value.request_id


def test_cli_refuses_an_approver_who_may_not_approve_before_looking_for_a_key(cli: CLI) -> None:
    world = World(clock=ManualClock(time.time()))
    cli.ok("init", "--org", "org:acme")
    request_id = _filed(cli, world)
    # user:zed has no key at all: the refusal is about the policy, not about the key.
    line = one_line_error(
        cli("approvals", "approve", request_id, "--as", "user:zed"),
        "user:zed is not an approver",
        "user:carol can approve it",
        f"agentguard approvals approve {request_id} --as ID",
    )
    assert "key" not in line.split(";")[0]


def test_cli_refuses_a_person_of_the_chain_and_names_who_can(cli: CLI) -> None:
    world = World(clock=ManualClock(time.time()))
    cli.ok("init", "--org", "org:acme")
    approvers = [*world.policy()["approvers"], {"id": "user:alice"}]
    request_id = _filed(cli, world, approvers=approvers)
    one_line_error(
        cli("approvals", "approve", request_id, "--as", "user:alice"),
        "separation_of_duties",
        "user:carol can approve it",
    )


# -- what counts, by level ------------------------------------------------------------------


def test_the_routes_named_are_those_whose_answers_count() -> None:
    world = World()
    guard = world.guard(approver=QueueChannel(), approval_mode="raise", step_up=LOCAL)
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, TOOL, {"id": 1}, RecordingTool(), holder=world.bot)
    request = guard.approvals.get(info.value.request_id)
    assert "notebook card" in answer_routes(request)  # local counts
    assert "MCP client" not in answer_routes(request)  # agent does not
    signed = answer_routes(request, level="signed")
    assert "approvals approve" in signed
    assert "approval page" not in signed
    assert "terminal" not in signed
    assert "no channel known" in answer_routes(request, level="root\u202e")
    assert "\u202e" not in answer_routes(request, level="root\u202e")


# -- notebook cards ----------------------------------------------------------------------------


def _raising_notebook(world: World, approver: str = "user:carol", **policy: Any) -> Any:
    shown = Shown()
    guard = world.guard(approval_mode="raise", step_up=LOCAL, **policy)
    NotebookChannel(approver, display=shown).attach(guard)
    return guard, shown


def test_a_card_shows_who_can_answer_and_how() -> None:
    world = World()
    guard, shown = _raising_notebook(world)
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, TOOL, {"id": 1}, RecordingTool(), holder=world.bot)
    card = shown.cards[0]
    assert card.how_to_answer in str(info.value)  # the same line the caller gets
    assert "user:carol" in card.how_to_answer
    texts = [
        html.unescape(child.value) for child in card.widget.children if hasattr(child, "value")
    ]
    assert any(card.how_to_answer in text for text in texts)
    assert card.approve_refused is None
    assert not card.approve_button.disabled


def test_a_chain_member_s_card_may_deny_but_not_approve() -> None:
    """Separation of duties: the sponsor may say no to her agent, never yes."""
    world = World()
    approvers = [*world.policy()["approvers"], {"id": "user:alice", "min_assurance": "local"}]
    guard, shown = _raising_notebook(world, "user:alice", approvers=approvers)
    tool = RecordingTool()
    with pytest.raises(ApprovalPending):
        guard.call(world.delegation, TOOL, {"id": 1}, tool, holder=world.bot)
    card = shown.cards[0]
    assert card.approve_button.disabled
    assert not card.deny_button.disabled
    assert card.approve_refused is not None
    assert "subject or sponsor" in card.approve_refused
    card.deny_button.click()
    assert card.answer == "denied"
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, TOOL, {"id": 1}, tool, holder=world.bot)
    assert info.value.reason == "approval_rejected"
    assert not tool.ran


def test_a_card_above_the_approver_s_floor_offers_no_approve() -> None:
    """Carol answers at 'authenticated' or more: a card (local) would not count."""
    world = World()
    approvers = [{**world.policy()["approvers"][0], "min_assurance": "authenticated"}]
    guard, shown = _raising_notebook(world, approvers=approvers)
    with pytest.raises(ApprovalPending):
        guard.call(world.delegation, TOOL, {"id": 1}, RecordingTool(), holder=world.bot)
    card = shown.cards[0]
    assert card.approve_button.disabled
    refused = card.approve_refused or ""
    assert "'authenticated' is required" in refused
    assert "approval page" in refused
    assert "notebook card" not in refused


def test_rerunning_a_cell_whose_request_is_pending_shows_its_card_again() -> None:
    world = World()
    guard, shown = _raising_notebook(world)
    tool = RecordingTool()
    with pytest.raises(ApprovalPending) as first:
        guard.call(world.delegation, TOOL, {"id": 1}, tool, holder=world.bot)
    with pytest.raises(ApprovalPending) as again:
        guard.call(world.delegation, TOOL, {"id": 1}, tool, holder=world.bot)
    assert again.value.request_id == first.value.request_id  # joined, not filed twice
    assert len(shown.cards) == 2
    assert shown.cards[1] is shown.cards[0]  # the same card, shown again
    shown.cards[1].approve_button.click()
    guard.call(world.delegation, TOOL, {"id": 1}, tool, holder=world.bot)
    assert tool.calls == [{"id": 1}]


def test_a_pending_request_this_notebook_never_showed_gets_a_card() -> None:
    """Filed by another guard on the same store (another kernel, say): a new card."""
    world = World()
    shown = Shown()
    queue = world.guard(approver=QueueChannel(), approval_mode="raise", step_up=LOCAL)
    with pytest.raises(ApprovalPending) as filed:
        queue.call(world.delegation, TOOL, {"id": 1}, RecordingTool(), holder=world.bot)
    notebook = world.guard(store=queue.store, approval_mode="raise", step_up=LOCAL)
    NotebookChannel("user:carol", display=shown).attach(notebook)
    with pytest.raises(ApprovalPending) as joined:
        notebook.call(world.delegation, TOOL, {"id": 1}, RecordingTool(), holder=world.bot)
    assert joined.value.request_id == filed.value.request_id
    assert [card.request.id for card in shown.cards] == [filed.value.request_id]


def test_a_blocking_sync_call_on_a_pending_request_fails_fast_and_keeps_it() -> None:
    world = World()
    guard, shown = _raising_notebook(world)
    with pytest.raises(ApprovalPending) as first:
        guard.call(world.delegation, TOOL, {"id": 1}, RecordingTool(), holder=world.bot)
    blocking = world.guard(store=guard.store, step_up=LOCAL)
    NotebookChannel("user:carol", display=shown).attach(blocking)
    with pytest.raises(DeniedError) as info:
        blocking.call(world.delegation, TOOL, {"id": 1}, RecordingTool(), holder=world.bot)
    assert info.value.reason == "approval_unavailable"
    assert "await guard.acall" in info.value.explanation
    assert blocking.approvals.get(first.value.request_id).status == "pending"


@pytest.mark.anyio
async def test_an_awaited_call_joining_a_pending_request_shows_the_card_and_waits() -> None:
    world = World()
    shown = Shown()
    guard = world.guard(step_up=LOCAL, approval={"timeout": "60s"})
    guard.channel = NotebookChannel("user:carol", display=shown)
    # A dry run files the request without showing it (as another kernel would).
    filed = guard.check(world.delegation, TOOL, {"id": 1}, holder=world.bot, request_approval=True)
    assert filed.approval_request_id is not None
    tool = RecordingTool()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:

            async def click_when_shown() -> None:
                while not shown.cards:
                    await anyio.sleep(0.01)
                shown.cards[0].approve_button.click()

            tasks.start_soon(click_when_shown)
            await guard.acall(world.delegation, TOOL, {"id": 1}, tool, holder=world.bot)
    assert [card.request.id for card in shown.cards] == [filed.approval_request_id]
    assert tool.calls == [{"id": 1}]


class RevocationsUnreadable(MemoryStore):
    """A store whose revocation list cannot be read once ``broken`` is set."""

    broken = False

    def find_revoked(
        self, link_ids: Sequence[str], kids: Sequence[str], principals: Sequence[str]
    ) -> Revocation | None:
        if self.broken and principals:
            raise StoreError("revocations cannot be read (injected)")
        return super().find_revoked(link_ids, kids, principals)


def test_a_card_that_cannot_tell_whether_an_answer_counts_offers_nothing() -> None:
    """Fail closed: when the store cannot say whether the approver is revoked, no button."""
    world = World()
    store = RevocationsUnreadable()
    guard, _ = _raising_notebook(world, store=store)
    with pytest.raises(ApprovalPending) as pending:
        guard.call(world.delegation, TOOL, {"id": 1}, RecordingTool(), holder=world.bot)
    store.broken = True
    card = ApprovalCard(
        guard.approvals.get(pending.value.request_id), guard.approvals, "user:carol"
    )
    assert card.approve_button.disabled
    assert card.deny_button.disabled
    assert "cannot tell" in (card.approve_refused or "")
    assert "request " in card.how_to_answer  # still says how, without naming who
