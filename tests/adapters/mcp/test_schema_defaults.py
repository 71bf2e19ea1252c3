"""The proxy judges an omitted argument at the default the tool's ``inputSchema`` gives it,
forwards that value, and the audit record says it was filled in.

``bank_server.py``'s ``purge(target, force=False)`` lists ``force`` with
``default: false``. A grant pinning ``force == false`` used to refuse a call
that left ``force`` out (missing is unknown); now the call is judged, and runs,
with ``force: false``.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from mcp import Client

from agentguard.store.sqlite import SQLiteStore
from tests.adapters.mcp.mcp_support import Setup, records, text_of
from tests.adapters.mcp.test_argument_schema import _proxy

pytestmark = pytest.mark.anyio

PINNED = [{"tool": "bank/purge", "where": {"force": False}}]


def _decisions(setup: Setup) -> list[dict[str, object]]:
    store = SQLiteStore(setup.home / "state.db")
    try:
        bodies = [json.loads(e.body) for e in store.audit_entries()]
    finally:
        store.close()
    return [b for b in bodies if b.get("type") == "decision"]


async def test_an_omitted_argument_is_judged_and_forwarded_at_its_schema_default(
    setup: Setup, tmp_path: Path
) -> None:
    record = tmp_path / "calls.jsonl"
    with anyio.fail_after(60):
        async with Client(_proxy(setup, record, PINNED), mode="legacy") as client:
            ok = await client.call_tool("purge", {"target": "staging"})
            assert not ok.is_error, text_of(ok)
            forced = await client.call_tool("purge", {"target": "prod", "force": True})
            assert forced.is_error
    # The upstream saw the value the guard judged, sent explicitly.
    assert [r["arguments"] for r in records(record)] == [{"target": "staging", "force": False}]
    allowed, refused = _decisions(setup)[-2:]
    assert allowed["outcome"] == "allow"
    assert allowed["defaults_filled"] == ["force"]
    assert allowed["args"] == {"target": "staging", "force": False}
    assert refused["outcome"] == "deny"
    assert "defaults_filled" not in refused
