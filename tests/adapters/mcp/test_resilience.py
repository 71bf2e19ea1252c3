"""Upstreams that die or restart are reconnected; made-up tool names do not multiply listings."""

from __future__ import annotations

import json
import logging
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from agentguard_mcp import META_DECISION, Caller, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp.cli import build_guard
from anyio.abc import Process
from mcp import Client
from mcp.client.stdio import stdio_client

from tests.adapters.mcp.mcp_support import (
    Setup,
    notes_command,
    proxy_params,
    records,
    text_of,
)

pytestmark = pytest.mark.anyio

UNAVAILABLE = "upstream unavailable (notes); try again shortly"


class Ticks:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HttpServers:
    """Notes servers over HTTP, started and stopped by the test; all stopped at the end."""

    def __init__(self) -> None:
        self.running: list[Process] = []

    async def start(self, argv: list[str]) -> None:
        """Start one and wait (bounded) until it listens."""
        process = await anyio.open_process(argv)
        self.running.append(process)
        assert process.stdout is not None
        seen = b""
        with anyio.fail_after(20):
            while b"ready" not in seen:
                seen += await process.stdout.receive()

    async def stop(self) -> None:
        """Stop the servers started so far."""
        while self.running:
            process = self.running.pop()
            process.terminate()
            with anyio.fail_after(10):
                await process.aclose()


@asynccontextmanager
async def _http_servers() -> AsyncIterator[HttpServers]:
    servers = HttpServers()
    try:
        yield servers
    finally:
        await servers.stop()


def _audited_calls(setup: Setup) -> list[tuple[str, str, str | None, str]]:
    """(tool, status, error type, decision id) of every completed call; the log must be intact."""
    guard = build_guard(setup.home, str(setup.policy_file))
    try:
        assert guard.audit.verify() is None
        entries = [json.loads(e.body) for e in guard.store.audit_entries()]
    finally:
        guard.close()
    decisions = {e["decision_id"]: e for e in entries if e["type"] == "decision"}
    completions = [e for e in entries if e["type"] == "completion"]
    allowed = [d for d in decisions.values() if d["outcome"] == "allow"]
    # Every allowed call completed exactly once, successfully or not.
    assert sorted(c["decision_id"] for c in completions) == sorted(
        d["decision_id"] for d in allowed
    )
    return [
        (decisions[c["decision_id"]]["tool"], c["status"], c["error_type"], c["decision_id"])
        for c in completions
    ]


def _reason(result: types.CallToolResult) -> Any:
    return (result.meta or {})[META_DECISION]["reason"]


async def test_stdio_upstream_that_exits_is_restarted(setup: Setup, tmp_path: Path) -> None:
    """Behind the stdio proxy: the call that kills the upstream fails cleanly; the next works."""
    record, lists, errlog = tmp_path / "calls.jsonl", tmp_path / "lists.jsonl", tmp_path / "err"
    path = setup.delegation_file(setup.delegation(["notes/*"]))
    params = proxy_params(
        [
            "proxy", "--delegation", str(path), "--as", setup.agent.id,
            "--home", str(setup.home), "--policy", str(setup.policy_file),
            "--namespace", "notes", "--trusted",
            "--", *notes_command(record, "--crash-tool", "--record-lists", str(lists)),
        ]
    )  # fmt: skip
    with errlog.open("w") as stderr, anyio.fail_after(60):
        async with Client(stdio_client(params, errlog=stderr), mode="legacy") as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            assert names == ["crash", "delete_note", "read_note", "write_note"]
            first = await client.call_tool("read_note", {"id": "n1"})
            assert not first.is_error, text_of(first)

            crashed = await client.call_tool("crash", {})
            assert crashed.is_error
            assert text_of(crashed) == UNAVAILABLE
            assert _reason(crashed) == "upstream_unavailable"

            again = await client.call_tool("read_note", {"id": "n2"})
            assert not again.is_error, text_of(again)
            assert sorted(t.name for t in (await client.list_tools()).tools) == names

    assert [r["arguments"]["id"] for r in records(record)] == ["n1", "n2"]
    assert len({r["pid"] for r in records(lists)}) == 2  # one restart
    calls = _audited_calls(setup)
    assert [c[:3] for c in calls] == [
        ("notes/read_note", "success", None),
        ("notes/crash", "error", "UpstreamUnavailable"),
        ("notes/read_note", "success", None),
    ]
    assert (crashed.meta or {})[META_DECISION]["decision_id"] == calls[1][3]
    log = errlog.read_text()
    assert "agentguard mcp: upstream notes: session lost (connection closed)" in log
    assert "agentguard mcp: upstream notes: reconnected" in log
    assert "Traceback" not in log


async def test_reconnection_is_spaced_out_and_pins_still_apply(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed attempts back off (1 s, 2 s, 4 s ...); a redefined tool is still refused after."""
    record, lists = tmp_path / "calls.jsonl", tmp_path / "lists.jsonl"
    command = notes_command(record, "--crash-tool", "--record-lists", str(lists))
    spec = UpstreamSpec(namespace="notes", command=tuple(command), trusted=True)
    ticks = Ticks()
    upstream = Upstream(spec, monotonic=ticks, jitter=0.0)
    delegation = setup.delegation(["notes/*"])
    guard = build_guard(setup.home, str(setup.policy_file))
    # Repeated failures with one cause are logged at debug level (once per outage above it).
    caplog.set_level(logging.DEBUG, logger="agentguard_mcp")

    def attempts() -> tuple[int, int]:
        failed = sum("reconnection failed" in m for m in caplog.messages)
        back = sum(m.startswith("upstream notes: reconnected") for m in caplog.messages)
        return failed, back

    with anyio.fail_after(60):
        async with AsyncExitStack() as stack:
            proxy = GuardedProxy(
                guard, [upstream], caller=Caller(delegation.serialize(), holder=setup.agent)
            )
            await proxy.start(stack)
            async with Client(proxy.server, mode="legacy") as client:
                assert not (await client.call_tool("read_note", {"id": "n1"})).is_error
                # From now on the upstream cannot start: it exits before the handshake.
                upstream.spec = replace(spec, command=(sys.executable, "-c", "pass"))
                assert text_of(await client.call_tool("crash", {})) == UNAVAILABLE

                refused = await client.call_tool("read_note", {"id": "n2"})
                assert text_of(refused) == UNAVAILABLE  # first attempt, at once: failed
                assert _reason(refused) == "upstream_unavailable"
                assert attempts() == (1, 0)
                await client.call_tool("read_note", {"id": "n2"})
                ticks.advance(1.9)
                await client.call_tool("read_note", {"id": "n2"})
                assert attempts() == (1, 0)  # the next attempt waits 2 s
                ticks.advance(0.1)
                assert text_of(await client.call_tool("read_note", {"id": "n2"})) == UNAVAILABLE
                assert attempts() == (2, 0)  # then 4 s

                # The server comes back with a redefined write_note.
                upstream.spec = replace(spec, command=(*command, "--rug-pull"))
                ticks.advance(3.9)
                assert text_of(await client.call_tool("read_note", {"id": "n2"})) == UNAVAILABLE
                ticks.advance(0.1)
                async with anyio.create_task_group() as tg:
                    results: list[types.CallToolResult] = []

                    async def read(note: str) -> None:
                        results.append(await client.call_tool("read_note", {"id": note}))

                    for note in ("a", "b", "c", "d"):
                        tg.start_soon(read, note)
                assert [r.is_error for r in results] == [False] * 4
                assert attempts() == (2, 1)  # concurrent callers share one reconnection

                changed = await client.call_tool("write_note", {"id": "n3", "text": "x"})
                assert changed.is_error
                assert _reason(changed) == "tool_changed"
                listed = sorted(t.name for t in (await client.list_tools()).tools)
                assert listed == ["crash", "delete_note", "read_note"]
    guard.close()
    assert sorted(r["arguments"]["id"] for r in records(record)) == ["a", "b", "c", "d", "n1"]
    assert len({r["pid"] for r in records(lists)}) == 2


@pytest.mark.parametrize("era", ["2026-07-28", "2025-11-25"])
async def test_http_upstream_restarted_on_the_same_port(
    setup: Setup, tmp_path: Path, era: str
) -> None:
    """A stopped HTTP upstream fails calls cleanly; once back, it is reconnected and re-checked."""
    record = tmp_path / "calls.jsonl"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    argv = notes_command(record, "--http", f"127.0.0.1:{port}")
    if era == "2025-11-25":
        argv.append("--legacy-only")  # a session the restarted server no longer knows
    upstream = Upstream(UpstreamSpec(namespace="notes", url=url, trusted=True))
    delegation = setup.delegation(["notes/*"])
    guard = build_guard(setup.home, str(setup.policy_file))
    with anyio.fail_after(60):
        async with _http_servers() as servers, AsyncExitStack() as stack:
            await servers.start(argv)
            proxy = GuardedProxy(
                guard, [upstream], caller=Caller(delegation.serialize(), holder=setup.agent)
            )
            await proxy.start(stack)
            assert upstream.client.protocol_version == era
            async with Client(proxy.server, mode="legacy") as client:
                assert not (await client.call_tool("read_note", {"id": "n1"})).is_error
                await servers.stop()
                if era == "2026-07-28":
                    # Stateless: only a call while the server is down notices the outage.
                    down = await client.call_tool("read_note", {"id": "n2"})
                    assert text_of(down) == UNAVAILABLE
                await servers.start([*argv, "--rug-pull"])
                if era == "2025-11-25":
                    # The restarted server answers the old session with 404.
                    lost = await client.call_tool("read_note", {"id": "n2"})
                    assert text_of(lost) == UNAVAILABLE
                back = await client.call_tool("read_note", {"id": "n3"})
                assert not back.is_error, text_of(back)
                assert upstream.client.protocol_version == era
                changed = await client.call_tool("write_note", {"id": "n4", "text": "x"})
                assert _reason(changed) == "tool_changed"
                listed = sorted(t.name for t in (await client.list_tools()).tools)
                assert listed == ["delete_note", "read_note"]
    guard.close()
    assert [r["arguments"]["id"] for r in records(record)] == ["n1", "n3"]
    assert [c[:3] for c in _audited_calls(setup)] == [
        ("notes/read_note", "success", None),
        ("notes/read_note", "error", "UpstreamUnavailable"),
        ("notes/read_note", "success", None),
    ]


async def test_unknown_names_relist_at_most_once_per_interval(setup: Setup, tmp_path: Path) -> None:
    """A burst of made-up tool names costs at most one listing per upstream per interval."""
    record, lists = tmp_path / "calls.jsonl", tmp_path / "lists.jsonl"
    command = notes_command(record, "--record-lists", str(lists))
    ticks = Ticks()
    upstreams = [
        Upstream(UpstreamSpec(namespace=ns, command=tuple(command), trusted=True))
        for ns in ("notes", "other")
    ]
    delegation = setup.delegation(["notes/*", "other/*"])
    guard = build_guard(setup.home, str(setup.policy_file))

    async def bogus(client: Client, count: int) -> None:
        for i in range(count):
            result = await client.call_tool(f"no_such_tool_{i}", {})
            assert _reason(result) == "unknown_tool"

    with anyio.fail_after(60):
        async with AsyncExitStack() as stack:
            proxy = GuardedProxy(
                guard,
                upstreams,
                caller=Caller(delegation.serialize(), holder=setup.agent),
                monotonic=ticks,
            )
            await proxy.start(stack)
            async with Client(proxy.server, mode="legacy") as client:
                assert len(records(lists)) == 2  # one listing per upstream at start
                await bogus(client, 25)
                assert len(records(lists)) == 2  # the start's listing is fresh enough
                ticks.advance(2.0)
                await bogus(client, 25)
                assert len(records(lists)) == 4
                ticks.advance(1.9)
                await bogus(client, 25)
                assert len(records(lists)) == 4
                # A client's tools/list always reads the upstreams (rug-pull defence) ...
                assert len((await client.list_tools()).tools) == 6
                assert len(records(lists)) == 6
                # ... and counts as the latest listing.
                ticks.advance(1.9)
                await bogus(client, 25)
                assert len(records(lists)) == 6
                ok = await client.call_tool("notes__read_note", {"id": "n1"})
                assert not ok.is_error, text_of(ok)
    guard.close()
    assert len(records(lists)) == 6
