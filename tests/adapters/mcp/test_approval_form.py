"""The approval form an MCP client shows: the same facts as every other channel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from agentguard_mcp import GuardedProxy
from mcp import Client

from agentguard.delegation import Delegation
from agentguard.errors import ApprovalPending
from agentguard.guard import Guard
from agentguard.keys import Identity, Keyring
from tests.adapters.mcp.mcp_support import (
    Setup,
    notes_command,
    proxy_params,
    records,
    text_of,
    write_config,
)
from tests.display_support import AGENT_PURPOSE, LONG, assert_shows_the_facts, shown_args

pytestmark = pytest.mark.anyio


async def test_form_text_shows_every_argument_folds_and_marks_agent_claims(
    setup: Setup, tmp_path: Path
) -> None:
    """The form lists the 21st argument, escapes names, folds the long value and then gives
    it whole, and marks the sub-agent's own purpose and sponsor as the agent's claims."""
    sub = Keyring(setup.home / "keys").create("agent:sub")
    delegation = setup.delegation(["notes/*"], max_depth=1).attenuate(
        setup.agent, sub.principal, ["notes/*"], purpose=AGENT_PURPOSE, on_behalf_of="user:ceo"
    )
    record = tmp_path / "calls.jsonl"
    config = write_config(
        setup,
        {"notes": {"command": notes_command(record), "trusted": True}},
        delegation=str(setup.delegation_file(delegation)),
        annotation_assurance="agent",
        elicitation_approver=setup.alice.id,  # forms are offered only when an answer can count
        **{"as": sub.id},
    )
    messages: list[str] = []

    async def decline(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        messages.append(params.message)
        return types.ElicitResult(action="decline")

    params = proxy_params(["proxy", "--config", str(config)])
    with anyio.fail_after(30):
        async with Client(params, mode="legacy", elicitation_callback=decline) as client:
            result = await client.call_tool("delete_note", {"id": "n1", **shown_args()})
            assert result.is_error
    assert records(record) == []
    [message] = messages
    folded, _, full = message.partition("Folded values in full:")
    assert_shows_the_facts(folded, full)
    assert LONG not in folded


async def _form_answerers(setup: Setup, tmp_path: Path, delegation: Delegation) -> list[str | None]:
    """Approve ``delete_note`` in a form, as the holder of ``delegation``; who the answers name.

    No ``elicitation_approver`` is configured. Alice and the holder may both answer
    at ``agent`` assurance (no separation of duties), so the form is offered
    whoever the proxy takes the answer for: only the recorded approver tells.
    """
    holder = delegation.leaf.subject
    setup.write_policy(
        approvers=[
            {"id": setup.alice.id, "min_assurance": "agent"},
            {"id": holder, "min_assurance": "agent"},
        ],
        approval={"separation_of_duties": False},
    )
    record = tmp_path / "calls.jsonl"
    config = write_config(
        setup,
        {"notes": {"command": notes_command(record), "trusted": True}},
        delegation=str(setup.delegation_file(delegation)),
        annotation_assurance="agent",
        **{"as": holder},
    )

    async def approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"approve": True})

    params = proxy_params(["proxy", "--config", str(config)])
    with anyio.fail_after(30):
        async with Client(params, mode="legacy", elicitation_callback=approve) as client:
            result = await client.call_tool("delete_note", {"id": "n1"})
            assert not result.is_error, text_of(result)
    assert [r["name"] for r in records(record)] == ["delete_note"]
    guard = Guard(setup.policy_file, home=setup.home)
    try:
        return [request.approver for request in guard.approvals.all()]
    finally:
        guard.close()


async def test_agent_cannot_name_the_elicitation_approver_by_attenuating(
    setup: Setup, tmp_path: Path
) -> None:
    """The agent attenuates its delegation with on_behalf_of=<an approver> to speak for them.

    A form's answer is the holder's own (at ``agent`` assurance), never a sponsor's."""
    sub = Keyring(setup.home / "keys").create("agent:sub")
    child = setup.delegation(["notes/*"], max_depth=1).attenuate(
        setup.agent, sub.principal, ["notes/*"], on_behalf_of=setup.alice.id
    )
    assert await _form_answerers(setup, tmp_path, child) == ["agent:sub"]


async def test_agent_cannot_name_the_form_approver_through_a_user_it_made_up(
    setup: Setup, tmp_path: Path
) -> None:
    """The bot mints user:fake, delegates to it, and signs as it naming an approver: ignored."""
    sub = Keyring(setup.home / "keys").create("agent:sub")
    fake = Identity.generate("user:fake")
    via_fake = (
        setup.delegation(["notes/*"], max_depth=2)
        .attenuate(setup.agent, fake, ["notes/*"])
        .attenuate(fake, sub.principal, ["notes/*"], on_behalf_of=setup.alice.id)
    )
    assert await _form_answerers(setup, tmp_path, via_fake) == ["agent:sub"]


def test_the_mcp_form_is_not_offered_for_a_request_it_cannot_show(guard: Guard) -> None:
    """No Approve button over a one-line stub: a request that cannot be read goes out of band."""
    # Private on purpose: through the protocol a request the guard just filed can always
    # be read back, so no client can reach this branch without breaking the store.
    proxy = GuardedProxy(guard, [])
    pending = ApprovalPending("pending", request_id="apr_missing")
    assert proxy._approval_form(pending) is None
