"""A call approved in the client's form runs with the arguments it was approved for,
including those filled in from the tool's ``inputSchema`` defaults.

``bank_server.py``'s ``purge(target, force=False)`` is destructive, so it needs
approval; the client leaves ``force`` out. The form's approval is for the call
with ``force: false`` (what the guard judged), and the retry after the answer
must be that same call, or it would file a second request and never run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from agentguard.store.sqlite import SQLiteStore
from tests.adapters.mcp.mcp_support import Setup, proxy_params, records, text_of, write_config

pytestmark = pytest.mark.anyio

BANK_SERVER = str(Path(__file__).with_name("bank_server.py"))


async def _approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    assert isinstance(params, types.ElicitRequestFormParams)
    return types.ElicitResult(action="accept", content={"approve": True})


def _decisions(setup: Setup) -> list[dict[str, Any]]:
    store = SQLiteStore(setup.home / "state.db")
    try:
        bodies = [json.loads(e.body) for e in store.audit_entries()]
        requests = store.approval_list()
    finally:
        store.close()
    assert len(requests) == 1, "one request, answered once"
    return [b for b in bodies if b.get("type") == "decision"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_form_approved_call_runs_with_its_schema_defaults(
    setup: Setup, tmp_path: Path, mode: str
) -> None:
    record = tmp_path / "calls.jsonl"
    config = write_config(
        setup,
        {"bank": {"command": [sys.executable, BANK_SERVER, "--record", str(record)]}},
        delegation=str(setup.delegation_file(setup.delegation(["bank/*"]))),
        annotation_assurance="agent",
        elicitation_approver=setup.alice.id,
        **{"as": setup.agent.id},
    )
    with anyio.fail_after(60):
        async with Client(
            proxy_params(["proxy", "--config", str(config)]), mode=mode,
            elicitation_callback=_approve,
        ) as client:  # fmt: skip
            result = await client.call_tool("purge", {"target": "staging"})
            assert not result.is_error, text_of(result)
    assert [r["arguments"] for r in records(record)] == [{"target": "staging", "force": False}]
    allowed = _decisions(setup)[-1]
    assert allowed["outcome"] == "allow"
    assert allowed["args"] == {"target": "staging", "force": False}
    assert allowed["defaults_filled"] == ["force"]
