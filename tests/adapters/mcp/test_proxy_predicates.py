"""Restrictive policy rules through both proxy transports: "cannot tell" never reaches upstream.

The review that found these sent values an upstream would coerce or resolve
(``"5000"`` for an integer, ``/../etc/shadow`` for a path) past a step-up
and a deny rule. Each call here must stop at the proxy: the recording notes
server must see none of them.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from agentguard_mcp import GuardedClient, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp.cli import build_guard
from agentguard_mcp.serve import http_app
from mcp import Client

from tests.adapters.mcp.mcp_support import (
    Setup,
    notes_command,
    proxy_params,
    records,
    serve_in_process,
    text_of,
    write_config,
)

pytestmark = pytest.mark.anyio

# ``if_missing: skip``: calls without the field (the allowed call below) pass.
STEP_UP = [{"tools": ["notes/read_note"], "where": {"amount": {">": 100}}, "if_missing": "skip"}]
DENY = [{"tools": ["notes/*"], "where": {"path": {"within": "/etc"}}, "if_missing": "skip"}]
SLIPPERY: list[dict[str, Any]] = [
    {"id": "n1", "amount": "5000"},
    {"id": "n1", "amount": " 5000"},
    {"id": "n1", "amount": "5e3"},
    {"id": "n1", "amount": ["5000"]},
    {"id": "n1", "amount": [5000]},
    {"id": "n1", "path": "/../etc/shadow"},
    {"id": "n1", "path": ["/etc/shadow"]},
    {"id": "n1", "path": "/etc/shadow\u0000"},
    {"id": "n1", "path": "etc/shadow"},
]
ALLOWED = {"id": "n1", "amount": 5, "path": "/srv/notes/n1"}


def _policy(setup: Setup) -> None:
    setup.write_policy(step_up=STEP_UP, deny=DENY)


async def test_stdio_proxy_stops_every_value_it_cannot_judge(setup: Setup, tmp_path: Path) -> None:
    """Over stdio each slippery value is refused or left pending; a plain path runs."""
    _policy(setup)
    record = tmp_path / "calls.jsonl"
    delegation = setup.delegation(["notes/*"])
    config = write_config(
        setup,
        {"notes": {"command": notes_command(record), "trusted": True}},
        delegation=str(setup.delegation_file(delegation)),
        **{"as": setup.agent.id},
    )
    with anyio.fail_after(60):
        async with Client(proxy_params(["proxy", "--config", str(config)])) as client:
            for args in SLIPPERY:
                result = await client.call_tool("read_note", args)
                assert result.is_error or text_of(result).startswith("approval pending"), args
            allowed = await client.call_tool("read_note", ALLOWED)
            assert not allowed.is_error, text_of(allowed)
    assert [r["arguments"] for r in records(record)] == [ALLOWED]


async def test_http_proxy_stops_every_value_it_cannot_judge(setup: Setup, tmp_path: Path) -> None:
    """Over HTTP, with the caller's own call tokens, the same values never reach upstream."""
    _policy(setup)
    record = tmp_path / "calls.jsonl"
    delegation = setup.delegation(["notes/*"])
    guard = build_guard(setup.home, str(setup.policy_file))
    spec = UpstreamSpec(namespace="notes", command=tuple(notes_command(record)), trusted=True)
    outcomes: list[tuple[Any, str]] = []
    with anyio.fail_after(60):
        async with AsyncExitStack() as stack:
            proxy = GuardedProxy(guard, [Upstream(spec)])
            await proxy.start(stack)
            base = await stack.enter_async_context(serve_in_process(http_app(proxy)))
            client = GuardedClient(f"{base}/mcp", delegation, setup.agent)
            await stack.enter_async_context(client)
            for args in SLIPPERY:
                result = await client.call_tool("read_note", args)
                reason = (result.meta or {}).get("io.agentguard/decision", {}).get("reason")
                outcomes.append((args, reason))
            allowed = await client.call_tool("read_note", ALLOWED)
            assert not allowed.is_error, text_of(allowed)
    guard.close()
    assert {reason for _, reason in outcomes} <= {"policy_denied", "approval_pending"}, outcomes
    assert [r["arguments"] for r in records(record)] == [ALLOWED]
