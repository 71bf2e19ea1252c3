"""Load: the HTTP proxy under concurrent callers on loopback keeps every decision correct.

Several :class:`~agentguard_mcp.GuardedClient` callers, each with its own
session, send a fixed mix of calls that must run (a read; an update within its
predicate) and calls that must be refused (an update the predicate rejects; a
tool outside the delegation's scope). Afterwards every allowed call ran exactly
once at the upstream, no refused call reached it, and the audit log verifies and
holds exactly one decision record per call, with the expected outcome. Bounded
in count and time; ``AGENTGUARD_HARDENING=1`` runs the large variant.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
import pytest
from agentguard_mcp import META_DECISION, GuardedClient, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp.cli import build_guard
from agentguard_mcp.serve import http_app
from mcp.server import Server
from mcp.server.context import ServerRequestContext

from tests.adapters.mcp.mcp_support import Setup, serve_in_process, text_of

pytestmark = pytest.mark.anyio

HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"
#: Reads and writes that declare themselves harmless, so no step-up gets in the way.
SAFE = types.ToolAnnotations(read_only_hint=False, destructive_hint=False)
SCOPE: list[Any] = [
    "notes/lookup",
    {"tool": "notes/update", "where": {"amount": {"<=": 1000}}},
]


class CountingUpstream:
    """An in-process upstream that counts how often each call id reached it."""

    def __init__(self) -> None:
        # Any further argument is allowed: these calls carry whatever the test needs.
        schema = {
            "type": "object",
            "properties": {"id": {"type": "string"}},
            "additionalProperties": True,
        }
        self.tools = [
            types.Tool(name=name, input_schema=schema, annotations=SAFE)
            for name in ("lookup", "update", "purge")
        ]
        self.calls: Counter[str] = Counter()
        self.server: Server[Any] = Server(
            "counting", on_list_tools=self._list, on_call_tool=self._call
        )

    async def _list(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools)

    async def _call(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        call_id = str((params.arguments or {}).get("id"))
        self.calls[call_id] += 1
        return types.CallToolResult(content=[types.TextContent(text=f"{params.name} {call_id}")])


@dataclass(frozen=True)
class Planned:
    """One call of the mix and the decision it must get."""

    call_id: str
    tool: str
    args: dict[str, Any]
    allowed: bool
    reason: str | None = None


def plan(client: int, calls: int) -> list[Planned]:
    """The fixed mix of one caller: allowed read, allowed update, predicate fails, out of scope."""
    out = []
    for n in range(calls):
        call_id = f"c{client}-{n}"
        kind = n % 4
        if kind == 0:
            out.append(Planned(call_id, "lookup", {"id": call_id}, allowed=True))
        elif kind == 1:
            out.append(Planned(call_id, "update", {"id": call_id, "amount": 10}, allowed=True))
        elif kind == 2:
            args = {"id": call_id, "amount": 5000}
            out.append(Planned(call_id, "update", args, allowed=False, reason="predicate_failed"))
        else:
            out.append(Planned(call_id, "purge", {"id": call_id}, False, reason="out_of_scope"))
    return out


async def _run_load(setup: Setup, clients: int, calls: int, limit: float) -> None:
    upstream = CountingUpstream()
    delegation = setup.delegation(SCOPE)
    guard = build_guard(setup.home, str(setup.policy_file))
    plans = [plan(c, calls) for c in range(clients)]
    results: dict[str, types.CallToolResult] = {}

    async def caller(url: str, mix: list[Planned]) -> None:
        async with GuardedClient(url, delegation, setup.agent) as client:
            listed = {t.name for t in (await client.list_tools()).tools}
            assert listed == {"lookup", "update"}
            # Not listed for this delegation, but a hostile caller can still ask.
            client.addresses["purge"] = "notes/purge"
            for call in mix:
                results[call.call_id] = await client.call_tool(call.tool, call.args)

    try:
        with anyio.fail_after(limit):
            async with AsyncExitStack() as stack:
                base = await stack.enter_async_context(
                    serve_in_process(upstream.server.streamable_http_app())
                )
                spec = UpstreamSpec(namespace="notes", url=f"{base}/mcp", trusted=True)
                proxy = GuardedProxy(guard, [Upstream(spec)])
                await proxy.start(stack)
                front = await stack.enter_async_context(serve_in_process(http_app(proxy)))
                async with anyio.create_task_group() as tg:
                    for mix in plans:
                        tg.start_soon(caller, f"{front}/mcp", mix)

        decisions: dict[str, list[dict[str, Any]]] = {}
        for entry in guard.store.audit_entries():
            record = json.loads(entry.body)
            if record["type"] == "decision":
                decisions.setdefault(str(record["args"]["id"]), []).append(record)
        assert guard.audit.verify() is None
    finally:
        guard.close()

    everything = [call for mix in plans for call in mix]
    assert len(results) == len(everything) == clients * calls
    assert sum(len(v) for v in decisions.values()) == len(everything)
    for call in everything:
        result = results[call.call_id]
        [record] = decisions[call.call_id]
        if call.allowed:
            assert not result.is_error, text_of(result)
            assert text_of(result) == f"{call.tool} {call.call_id}"
            assert upstream.calls[call.call_id] == 1
            assert record["outcome"] == "allow"
        else:
            assert result.is_error
            assert (result.meta or {})[META_DECISION]["reason"] == call.reason
            assert upstream.calls[call.call_id] == 0
            assert record["outcome"] == "deny"
            assert record["reason"] == call.reason
    assert sum(upstream.calls.values()) == sum(call.allowed for call in everything)


async def test_concurrent_callers_get_every_decision_right(setup: Setup) -> None:
    """4 callers x 25 calls, half of them refused: each decision right, audited once."""
    await _run_load(setup, clients=4, calls=25, limit=60)


@pytest.mark.slow
@pytest.mark.skipif(not HARDENING, reason="the large load runs under make hardening")
async def test_concurrent_callers_under_large_load(setup: Setup) -> None:
    """16 callers x 250 calls (``make hardening``)."""
    await _run_load(setup, clients=16, calls=250, limit=600)
