"""Added latency per ``tools/call`` through the agentguard MCP proxy.

Runs ``mcp-server-time`` (from PyPI) directly and behind ``agentguard mcp proxy``
(stdio, a trusted read-only tool, full pipeline: chain verification, scope,
call token, replay check, SQLite audit) in one run, and reports medians and the
ratio. FastMCP's ``create_proxy`` in front of the same server is measured too
when a Python with the ``fastmcp`` package is given (bench-only: it is not a
dependency of ours and pins its own ``mcp``, so keep it in a throwaway venv)::

    python3 -m venv /tmp/fastmcp-venv && /tmp/fastmcp-venv/bin/pip install fastmcp
    .venv/bin/python benchmarks/mcp_proxy.py [--calls 200] \
        [--fastmcp-python /tmp/fastmcp-venv/bin/python]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import yaml
from mcp import Client, StdioServerParameters

from agentguard.delegation import Delegation
from agentguard.keys import Keyring

TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")
ARGS = {"timezone": "UTC"}


async def _measure(params: StdioServerParameters, calls: int) -> list[float]:
    async with Client(params, mode="legacy") as client:
        for _ in range(10):  # warm-up: imports, caches, SQLite pages
            await client.call_tool("get_current_time", ARGS)
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            result = await client.call_tool("get_current_time", ARGS)
            samples.append(time.perf_counter() - start)
            assert not result.is_error
        return samples


def _proxy_params(state: Path) -> StdioServerParameters:
    keyring = Keyring(state / "keys")
    org, agent = keyring.create("org:bench"), keyring.create("agent:bench")
    policy = {"trusted_roots": [{"id": org.id, "key_file": "keys/org_bench.pub"}]}
    (state / "agentguard.yaml").write_text(yaml.safe_dump(policy))
    delegation = Delegation.issue(org, agent.principal, ["time/get_current_time"], ttl="1h")
    (state / "agent.delegation").write_text(delegation.serialize())
    return StdioServerParameters(
        command=sys.executable,
        args=[
            "-m", "agentguard_mcp", "proxy",
            "--delegation", str(state / "agent.delegation"), "--as", agent.id,
            "--home", str(state), "--policy", str(state / "agentguard.yaml"),
            "--namespace", "time", "--trusted",
            "--", TIME_SERVER, "--local-timezone", "UTC",
        ],
    )  # fmt: skip


def _fastmcp_params(python: str | None) -> StdioServerParameters | None:
    if python is None:
        if importlib.util.find_spec("fastmcp") is None:
            return None
        python = sys.executable
    servers = {"mcpServers": {"t": {"command": TIME_SERVER, "args": ["--local-timezone", "UTC"]}}}
    script = (
        "from fastmcp.server import create_proxy\n"
        f"create_proxy({servers!r}).run(show_banner=False)\n"
    )
    return StdioServerParameters(command=python, args=["-c", script])


def _row(name: str, samples: list[float], base: float | None) -> str:
    median = statistics.median(samples) * 1000
    p95 = statistics.quantiles(samples, n=20)[18] * 1000
    added = f"{median - base:8.3f}" if base is not None else "       -"
    return f"{name:<22}{median:10.3f}{p95:10.3f}{added}"


async def main(calls: int, fastmcp_python: str | None) -> None:
    results: dict[str, Any] = {}
    results["direct"] = await _measure(
        StdioServerParameters(command=TIME_SERVER, args=["--local-timezone", "UTC"]), calls
    )
    with tempfile.TemporaryDirectory() as tmp:
        results["agentguard proxy"] = await _measure(_proxy_params(Path(tmp)), calls)
    fast = _fastmcp_params(fastmcp_python)
    if fast is not None:
        results["fastmcp proxy"] = await _measure(fast, calls)
    base = statistics.median(results["direct"]) * 1000
    print(f"{'tools/call, ms':<22}{'median':>10}{'p95':>10}{'added':>8}")
    for name, samples in results.items():
        print(_row(name, samples, None if name == "direct" else base))
    ours = statistics.median(results["agentguard proxy"]) * 1000 - base
    if fast is not None:
        theirs = statistics.median(results["fastmcp proxy"]) * 1000 - base
        print(f"added latency ratio agentguard/fastmcp: {ours / theirs:.2f} (goal: < 1)")
    else:
        print("fastmcp not available (see --fastmcp-python): FastMCP proxy comparison skipped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--fastmcp-python", help="a Python that has fastmcp installed")
    options = parser.parse_args()
    anyio.run(main, options.calls, options.fastmcp_python)
