"""Step-up over HTTP: "approval pending", an answer from the CLI in another process, a retry."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from agentguard_mcp import GuardedClient, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp.cli import build_guard
from agentguard_mcp.serve import http_app

from tests.adapters.mcp.mcp_support import (
    BIN,
    Setup,
    notes_command,
    records,
    serve_in_process,
    text_of,
)

pytestmark = pytest.mark.anyio


async def _cli(setup: Setup, *args: str) -> None:
    """Run ``agentguard approvals ...`` as its own process, like an approver at a terminal."""
    argv = [str(BIN / "agentguard"), "approvals", *args, "--as", setup.alice.id]
    argv += ["--home", str(setup.home), "--policy", str(setup.policy_file)]
    done = await anyio.run_process(argv, check=False)
    assert done.returncode == 0, done.stderr.decode()


async def test_http_caller_retries_after_out_of_band_answers(setup: Setup, tmp_path: Path) -> None:
    """Pending with an id; a rejection's message reaches the caller; an approval runs once."""
    record = tmp_path / "calls.jsonl"
    delegation = setup.delegation(["notes/*"])
    guard = build_guard(setup.home, str(setup.policy_file))
    # Untrusted upstream: every tool counts as destructive and needs approval.
    spec = UpstreamSpec(namespace="notes", command=tuple(notes_command(record)))
    with anyio.fail_after(60):
        async with AsyncExitStack() as stack:
            proxy = GuardedProxy(guard, [Upstream(spec)])
            await proxy.start(stack)
            base = await stack.enter_async_context(serve_in_process(http_app(proxy)))
            client = GuardedClient(f"{base}/mcp", delegation, setup.agent)
            await stack.enter_async_context(client)

            # A rejection: the approver's words come back to the agent.
            first = await client.call_tool("write_note", {"id": "n1", "text": "draft"})
            assert text_of(first).startswith("approval pending, id=apr_")
            rejected_id = (first.meta or {})["io.agentguard/decision"]["approval_request_id"]
            await _cli(setup, "deny", rejected_id, "--message", "not in the shared notes")
            refused = await client.call_tool("write_note", {"id": "n1", "text": "draft"})
            assert refused.is_error
            assert "rejected by user:alice: not in the shared notes" in text_of(refused)
            assert "decision dec_" in text_of(refused)
            decision = (refused.meta or {})["io.agentguard/decision"]
            assert decision["reason"] == "approval_rejected"
            assert decision["approver"] == setup.alice.id

            # An approval: the retry (a fresh call token, signed by GuardedClient) runs once.
            args = {"id": "n2", "text": "final"}
            pending = await client.call_tool("write_note", args)
            request_id = (pending.meta or {})["io.agentguard/decision"]["approval_request_id"]
            assert request_id != rejected_id
            await _cli(setup, "approve", request_id)
            done = await client.call_tool("write_note", args)
            assert not done.is_error, text_of(done)
            again = await client.call_tool("write_note", args)
            assert again.is_error
    guard.close()
    assert [(r["name"], r["arguments"]) for r in records(record)] == [("write_note", args)]
