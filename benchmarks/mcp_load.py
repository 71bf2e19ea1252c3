"""Throughput and latency of the HTTP MCP proxy under concurrent callers on loopback.

An in-process upstream (streamable HTTP, one read-only tool) is called directly
and through ``GuardedProxy`` over streamable HTTP (full pipeline per call: the
Bearer delegation checked at the HTTP gate, chain verification, scope, the
caller's signed call token, replay check, SQLite audit) by N concurrent callers,
each with its own session (``GuardedClient`` for the proxy, ``mcp.Client``
direct). Everything runs in one process and one event loop, so the numbers are
those of one core serving callers and upstream together; read them as ratios.

    .venv/bin/python benchmarks/mcp_load.py [--calls 200] [--concurrency 1 4 16]

``--calls`` is the number of calls per caller (after a warm-up of 5).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import yaml
from agentguard_mcp import GuardedClient, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp.cli import build_guard
from agentguard_mcp.serve import http_app
from agentguard_mcp.testing import serve_app
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server import Server
from mcp.server.context import ServerRequestContext

from agentguard.delegation import Delegation
from agentguard.keys import Keyring

TOOL = types.Tool(
    name="lookup",
    input_schema={"type": "object", "properties": {"id": {"type": "string"}}},
    annotations=types.ToolAnnotations(read_only_hint=True),
)
WARM_UP = 5


def _upstream() -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[TOOL])

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(text="found")])

    return Server("bench-upstream", on_list_tools=list_tools, on_call_tool=call_tool)


Call = Callable[[str], Awaitable[types.CallToolResult]]


async def _load(
    connect: Callable[[], Any], call_of: Callable[[Any], Call], clients: int, calls: int
) -> tuple[float, list[float]]:
    """Run ``clients`` callers of ``calls`` calls each; (wall seconds, per-call latencies)."""
    samples: list[float] = []
    ready = anyio.Event()
    connected = 0

    async def caller(n: int) -> None:
        nonlocal connected
        async with connect() as session:
            call = call_of(session)
            for i in range(WARM_UP):
                assert not (await call(f"w{n}-{i}")).is_error
            connected += 1
            if connected == clients:
                ready.set()
            await ready.wait()
            for i in range(calls):
                start = time.perf_counter()
                result = await call(f"c{n}-{i}")
                samples.append(time.perf_counter() - start)
                assert not result.is_error

    started = 0.0

    async def clock_start() -> None:
        nonlocal started
        await ready.wait()
        started = time.perf_counter()

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock_start)
        for n in range(clients):
            tg.start_soon(caller, n)
    return time.perf_counter() - started, samples


def _row(name: str, clients: int, wall: float, samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    p50, p90, p99 = (cuts[k - 1] * 1000 for k in (50, 90, 99))
    rate = len(samples) / wall
    return f"{name:<8}{clients:>6}{len(samples):>8}{rate:>10.0f}{p50:>9.2f}{p90:>9.2f}{p99:>9.2f}"


async def main(calls: int, levels: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        keyring = Keyring(state / "keys")
        org, agent = keyring.create("org:bench"), keyring.create("agent:bench")
        policy = {"trusted_roots": [{"id": org.id, "key_file": "keys/org_bench.pub"}]}
        (state / "agentguard.yaml").write_text(yaml.safe_dump(policy))
        delegation = Delegation.issue(org, agent.principal, ["bench/lookup"], ttl="1h")
        guard = build_guard(state, str(state / "agentguard.yaml"))
        try:
            async with AsyncExitStack() as stack:
                base = await stack.enter_async_context(
                    serve_app(_upstream().streamable_http_app(), backlog=256)
                )
                spec = UpstreamSpec(namespace="bench", url=f"{base}/mcp", trusted=True)
                proxy = GuardedProxy(guard, [Upstream(spec)])
                await proxy.start(stack)
                front = await stack.enter_async_context(serve_app(http_app(proxy), backlog=256))

                @asynccontextmanager
                async def direct() -> AsyncIterator[Client]:
                    async with (
                        httpx2.AsyncClient() as http,
                        Client(
                            streamable_http_client(f"{base}/mcp", http_client=http), cache=None
                        ) as client,
                    ):
                        yield client

                def direct_call(client: Client) -> Call:
                    return lambda i: client.call_tool("lookup", {"id": i})

                def guarded() -> GuardedClient:
                    return GuardedClient(f"{front}/mcp", delegation, agent)

                def guarded_call(client: GuardedClient) -> Call:
                    return lambda i: client.call_tool("lookup", {"id": i})

                print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}")
                print(f"python {platform.python_version()}, {calls} calls per caller")
                print(
                    f"{'path':<8}{'callers':>6}{'calls':>8}{'calls/s':>10}"
                    f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
                )
                for clients in levels:
                    wall, samples = await _load(direct, direct_call, clients, calls)
                    print(_row("direct", clients, wall, samples))
                    wall, samples = await _load(guarded, guarded_call, clients, calls)
                    print(_row("proxy", clients, wall, samples))
        finally:
            guard.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200, help="calls per caller")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    options = parser.parse_args()
    anyio.run(main, options.calls, options.concurrency)
