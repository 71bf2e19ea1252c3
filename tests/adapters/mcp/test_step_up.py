"""Step-up approval through the protocol: elicitation, input-required, out of band."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from agentguard.guard import Guard
from tests.adapters.mcp.mcp_support import Setup, notes_command, proxy_params, records, write_config

pytestmark = pytest.mark.anyio


def _proxy(setup: Setup, record: Path, **top: Any) -> Any:
    delegation = setup.delegation(["notes/*"])
    config = write_config(
        setup,
        {"notes": {"command": notes_command(record), "trusted": True}},
        delegation=str(setup.delegation_file(delegation)),
        # The operator names who answers forms in this client: alice, who is not
        # in the chain (the agent works for team:notes).
        elicitation_approver=setup.alice.id,
        **{"as": setup.agent.id},
        **top,
    )
    return proxy_params(["proxy", "--config", str(config)])


def _answer(approve: bool) -> Any:
    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        assert "delete_note" in params.message
        return types.ElicitResult(action="accept", content={"approve": approve})

    return callback


def _text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_form_answer_approves_when_policy_accepts_agent_assurance(
    setup: Setup, tmp_path: Path, mode: str
) -> None:
    """Legacy clients get an elicitation, 2026-07-28 clients an input-required result."""
    record = tmp_path / "calls.jsonl"
    params = _proxy(setup, record, annotation_assurance="agent")
    with anyio.fail_after(30):
        async with Client(params, mode=mode, elicitation_callback=_answer(True)) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert (listed["delete_note"].meta or {}).get("io.agentguard/approval") == "required"
            assert "io.agentguard/approval" not in (listed["read_note"].meta or {})
            result = await client.call_tool("delete_note", {"id": "n1"})
            assert not result.is_error, _text(result)
            assert _text(result) == "delete_note n1 done"
            read = await client.call_tool("read_note", {"id": "n1"})
            assert not read.is_error
    assert [r["name"] for r in records(record)] == ["delete_note", "read_note"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_form_answer_is_not_enough_by_default_then_out_of_band(
    setup: Setup, tmp_path: Path, mode: str
) -> None:
    """By default an answer in the client has too little assurance; the CLI queue decides."""
    record = tmp_path / "calls.jsonl"
    params = _proxy(setup, record)
    with anyio.fail_after(30):
        async with Client(params, mode=mode, elicitation_callback=_answer(True)) as client:
            first = await client.call_tool("delete_note", {"id": "n2"})
            assert first.is_error
            assert "approval pending, id=apr_" in _text(first)
            assert records(record) == []
            request_id = (first.meta or {})["io.agentguard/decision"]["approval_request_id"]
            # Another process (this test) approves with alice's own key.
            approver = Guard(setup.policy_file, home=setup.home)
            try:
                approver.approvals.approve(request_id, setup.alice)
            finally:
                approver.close()
            second = await client.call_tool("delete_note", {"id": "n2"})
            assert not second.is_error, _text(second)
    assert [r["name"] for r in records(record)] == ["delete_note"]


async def test_clients_without_elicitation_get_approval_pending(
    setup: Setup, tmp_path: Path
) -> None:
    """No form capability: "approval pending, id=…" at once, and nothing runs."""
    record = tmp_path / "calls.jsonl"
    params = _proxy(setup, record, annotation_assurance="agent")
    with anyio.fail_after(30):
        async with Client(params, mode="auto") as client:
            result = await client.call_tool("write_note", {"id": "n3", "text": "x"})
            assert result.is_error
            assert _text(result).startswith("approval pending, id=apr_")
    assert records(record) == []


async def test_forged_or_replayed_input_required_state_is_refused(
    setup: Setup, tmp_path: Path
) -> None:
    """The sealed state binds caller and arguments, and works once."""
    record = tmp_path / "calls.jsonl"
    params = _proxy(setup, record, annotation_assurance="agent")
    approve = {
        "agentguard_approval": types.ElicitResult(action="accept", content={"approve": True})
    }
    with anyio.fail_after(30):
        async with Client(params, mode="2026-07-28", elicitation_callback=_answer(True)) as client:
            await client.list_tools()
            session = client.session
            first = await session.call_tool("delete_note", {"id": "n4"}, allow_input_required=True)
            assert isinstance(first, types.InputRequiredResult)
            state = first.request_state
            assert state is not None
            with pytest.raises(MCPError, match="Invalid or expired requestState"):
                await session.call_tool(
                    "delete_note",
                    {"id": "n4"},
                    input_responses=approve,  # type: ignore[arg-type]
                    request_state=state[:-4] + "AAAA",
                    allow_input_required=True,
                )
            with pytest.raises(MCPError, match="Invalid or expired requestState"):
                # Bound to the arguments: moving it to another call fails.
                await session.call_tool(
                    "delete_note",
                    {"id": "other"},
                    input_responses=approve,  # type: ignore[arg-type]
                    request_state=state,
                    allow_input_required=True,
                )
            done = await session.call_tool(
                "delete_note",
                {"id": "n4"},
                input_responses=approve,  # type: ignore[arg-type]
                request_state=state,
                allow_input_required=True,
            )
            assert isinstance(done, types.CallToolResult)
            assert not done.is_error
            with pytest.raises(MCPError, match="Invalid or expired requestState"):
                await session.call_tool(
                    "delete_note",
                    {"id": "n4"},
                    input_responses=approve,  # type: ignore[arg-type]
                    request_state=state,
                    allow_input_required=True,
                )
    assert [r["name"] for r in records(record)] == ["delete_note"]


class Form:
    """An elicitation callback that approves and counts how often a form was shown."""

    def __init__(self) -> None:
        self.shown = 0

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.shown += 1
        return types.ElicitResult(action="accept", content={"approve": True})


def _sponsored_proxy(setup: Setup, record: Path, **top: Any) -> Any:
    """The agent works on behalf of user:alice; no elicitation_approver is configured."""
    delegation = setup.delegation(["notes/*"], on_behalf_of=setup.alice.id)
    config = write_config(
        setup,
        {"notes": {"command": notes_command(record), "trusted": True}},
        delegation=str(setup.delegation_file(delegation)),
        annotation_assurance="agent",
        **{"as": setup.agent.id},
        **top,
    )
    return proxy_params(["proxy", "--config", str(config)])


def _answers(setup: Setup) -> list[tuple[str, str | None]]:
    guard = Guard(setup.policy_file, home=setup.home)
    try:
        return [(r.status, r.approver) for r in guard.approvals.all()]
    finally:
        guard.close()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_form_answer_is_recorded_as_the_holder_never_the_sponsor(
    setup: Setup, tmp_path: Path, mode: str
) -> None:
    """Nobody authenticated as alice, the sponsor: the answer is the agent's client's.

    The policy lets agent:bot answer (no separation of duties), so the form is
    offered and the call runs, approved by agent:bot at assurance ``agent``.
    """
    setup.write_policy(
        approvers=[
            {"id": setup.alice.id, "min_assurance": "agent"},
            {"id": setup.agent.id, "min_assurance": "agent"},
        ],
        approval={"separation_of_duties": False},
    )
    record = tmp_path / "calls.jsonl"
    form = Form()
    with anyio.fail_after(30):
        async with Client(
            _sponsored_proxy(setup, record), mode=mode, elicitation_callback=form
        ) as client:
            result = await client.call_tool("delete_note", {"id": "n1"})
            assert not result.is_error, _text(result)
    assert form.shown == 1
    assert _answers(setup) == [("used", setup.agent.id)]
    assert [r["name"] for r in records(record)] == ["delete_note"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_no_form_is_offered_when_its_answer_could_not_count(
    setup: Setup, tmp_path: Path, mode: str
) -> None:
    """By default an agent may not approve its own call: no form, the request waits out of band.

    Before, the form was shown and its answer put down to alice, the sponsor.
    bob, outside the chain, is the approver who can answer out of band.
    """
    setup.write_policy(
        approvers=[
            {"id": setup.alice.id, "min_assurance": "agent"},
            {"id": "user:bob", "min_assurance": "agent"},
        ]
    )
    record = tmp_path / "calls.jsonl"
    form = Form()
    with anyio.fail_after(30):
        async with Client(
            _sponsored_proxy(setup, record), mode=mode, elicitation_callback=form
        ) as client:
            result = await client.call_tool("delete_note", {"id": "n1"})
            assert result.is_error
            assert _text(result).startswith("approval pending, id=apr_")
    assert form.shown == 0
    assert _answers(setup) == [("pending", None)]
    assert records(record) == []


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_call_nobody_may_approve_is_refused_at_once(
    setup: Setup, tmp_path: Path, mode: str
) -> None:
    """alice, the only approver, sponsors the chain (separation of duties): nobody
    can approve, so the call is refused with ``no_approver`` instead of waiting."""
    record = tmp_path / "calls.jsonl"
    form = Form()
    with anyio.fail_after(30):
        async with Client(
            _sponsored_proxy(setup, record), mode=mode, elicitation_callback=form
        ) as client:
            result = await client.call_tool("delete_note", {"id": "n1"})
            assert result.is_error
            assert "no_approver" in _text(result)
    assert form.shown == 0
    assert records(record) == []


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_no_form_when_the_channel_assurance_is_too_low(
    setup: Setup, tmp_path: Path, mode: str
) -> None:
    """The operator names alice, but the rule needs ``local``: no form, pending for the queue."""
    record = tmp_path / "calls.jsonl"
    form = Form()
    with anyio.fail_after(30):
        async with Client(_proxy(setup, record), mode=mode, elicitation_callback=form) as client:
            result = await client.call_tool("delete_note", {"id": "n1"})
            assert _text(result).startswith("approval pending, id=apr_")
    assert form.shown == 0
    assert records(record) == []
