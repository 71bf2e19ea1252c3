"""A state file locked by another process: the HTTP proxy keeps serving what needs no lock.

A real proxy process serves real clients over HTTP while a second process holds
a lock on the real SQLite file. Calls that need the lock are refused with
``store_error`` within the proxy's store timeout (``--store-timeout``); the
other clients' listings and store-free refusals complete while the lock is
still held, because the proxy's store work runs off its event loop.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from agentguard_mcp import (
    META_DECISION,
    Caller,
    GuardedClient,
    GuardedProxy,
    Upstream,
    UpstreamSpec,
)
from agentguard_mcp.cli import build_guard
from agentguard_mcp.serve import http_app
from agentguard_mcp.testing import serve_app
from anyio.abc import Process
from mcp import Client
from mcp.shared.exceptions import MCPError

from agentguard.resolve import STATE_FILE
from tests.adapters.mcp.mcp_support import Setup, notes_command, records, text_of, write_config
from tests.adapters.mcp.test_http_and_hygiene import _free_port, _process

pytestmark = pytest.mark.anyio

#: Holds the write lock until its standard input closes (on a WAL file
#: ``BEGIN EXCLUSIVE`` blocks writers; readers go on).
_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('test-lock', 'held')")
print("locked", flush=True)
sys.stdin.read()
"""


@asynccontextmanager
async def _locked(path: Path) -> AsyncIterator[Process]:
    """Another process holding the write lock on ``path`` for the duration of the block."""
    process = await anyio.open_process([sys.executable, "-c", _HOLDER, str(path)])
    try:
        assert process.stdout is not None
        seen = b""
        with anyio.fail_after(20):
            while b"locked" not in seen:
                seen += await process.stdout.receive()
        yield process
    finally:
        assert process.stdin is not None
        await process.stdin.aclose()  # releases the lock
        with anyio.fail_after(10):
            await process.wait()


def _reason(result: types.CallToolResult) -> object:
    return (result.meta or {}).get(META_DECISION, {}).get("reason")


def _proxy_argv(setup: Setup, record: Path, port: int, store_timeout: str) -> list[str]:
    config = write_config(setup, {"notes": {"command": notes_command(record), "trusted": True}})
    return [
        sys.executable, "-m", "agentguard_mcp", "proxy", "--config", str(config),
        "--http", f"127.0.0.1:{port}", "--store-timeout", store_timeout,
    ]  # fmt: skip


async def test_a_write_lock_refuses_only_the_calls_that_need_it(
    setup: Setup, tmp_path: Path
) -> None:
    """While the lock is held: one client's call waits, then store_error; the other's work runs."""
    record = tmp_path / "calls.jsonl"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    delegation = setup.delegation(["notes/*"])
    async with (
        # The refused call waits out the 4 s store timeout; the other client's three
        # requests, which need no write, finish well inside it even on a loaded machine.
        _process(_proxy_argv(setup, record, port, "4"), "listening on", stderr=True) as proxy,
        GuardedClient(url, delegation, setup.agent) as first,
        GuardedClient(url, delegation, setup.agent) as second,
    ):
        with anyio.fail_after(30):
            warm = await first.call_tool("read_note", {"id": "n0"})
            assert not warm.is_error, text_of(warm)
        async with _locked(setup.home / STATE_FILE):
            waiting: list[types.CallToolResult] = []
            others_done_while_waiting = False
            async with anyio.create_task_group() as tg:

                async def needs_the_store() -> None:
                    with anyio.fail_after(30):  # well below the old fixed 30 s per write
                        waiting.append(await first.call_tool("read_note", {"id": "n1"}))

                tg.start_soon(needs_the_store)
                with anyio.fail_after(20):
                    listed = (await second.list_tools()).tools
                    unknown = await second.client.call_tool("no_such_tool", {})
                    invalid = await second.call_tool("read_note", {"id": 5})
                others_done_while_waiting = not waiting
            assert sorted(t.name for t in listed) == ["delete_note", "read_note", "write_note"]
            assert _reason(unknown) == "unknown_tool"
            assert _reason(invalid) == "invalid_arguments"
            assert others_done_while_waiting
            [refused] = waiting
            # Refused while the lock is still held (the block has not exited).
            assert refused.is_error
            assert _reason(refused) == "store_error", text_of(refused)
            # The operator reads the store's own explanation on the proxy's stderr.
            assert proxy.stderr is not None
            seen = b""
            with anyio.fail_after(20):
                while b"tools/call refused: " not in seen:
                    seen += await proxy.stderr.receive()
            assert b"locked" in seen.split(b"tools/call refused: ", 1)[1]
        with anyio.fail_after(30):
            after = await first.call_tool("read_note", {"id": "n2"})
            assert not after.is_error, text_of(after)
    assert [r["arguments"]["id"] for r in records(record)] == ["n0", "n2"]


async def test_a_store_that_cannot_answer_refuses_with_store_error(
    setup: Setup, tmp_path: Path
) -> None:
    """Reads fail too (here: the store was closed): 503 over HTTP, an error listing, a refusal."""
    record = tmp_path / "calls.jsonl"
    upstream = Upstream(
        UpstreamSpec(namespace="notes", command=tuple(notes_command(record)), trusted=True)
    )
    delegation = setup.delegation(["notes/*"])
    guard = build_guard(setup.home, str(setup.policy_file), store_timeout=1)
    bearer = {
        "Authorization": f"Bearer {delegation.serialize()}",
        "Accept": "application/json, text/event-stream",
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    with anyio.fail_after(60):
        async with AsyncExitStack() as stack:
            stdio = GuardedProxy(
                guard, [upstream], caller=Caller(delegation.serialize(), holder=setup.agent)
            )
            await stdio.start(stack)
            http_proxy = GuardedProxy(guard, [upstream])
            http_proxy.rebuild()
            base = await stack.enter_async_context(serve_app(http_app(http_proxy)))
            http = await stack.enter_async_context(httpx2.AsyncClient(timeout=30))
            client = await stack.enter_async_context(Client(stdio.server, mode="legacy"))
            guard.store.close()

            gate = await http.post(f"{base}/mcp", json=body, headers=bearer)
            assert gate.status_code == 503
            assert gate.json()["error"] == "store_error"
            assert gate.headers["retry-after"] == "1"
            with pytest.raises(MCPError, match=r"store_error"):
                await client.list_tools()
            # The guard's own refusal (audited where it can be) ...
            refused = await client.call_tool("read_note", {"id": "n1"})
            assert refused.is_error
            assert _reason(refused) == "store_error"
            assert text_of(refused).startswith("denied by agentguard (store_error")
            # ... and the proxy's, when its own check needs the store first (the
            # arguments do not fit the schema: does the delegation reach the tool?).
            unchecked = await client.call_tool("read_note", {"id": 5})
            assert _reason(unchecked) == "store_error"
            assert text_of(unchecked) == (
                "denied by agentguard (store_error: the state store did not answer; try again)"
            )
    assert records(record) == []
