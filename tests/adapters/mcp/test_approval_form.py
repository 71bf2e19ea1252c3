"""The approval form an MCP client shows: the same facts as every other channel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from agentguard.keys import Keyring
from tests.adapters.mcp.mcp_support import Setup, notes_command, proxy_params, records, write_config
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
