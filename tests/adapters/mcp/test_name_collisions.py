"""Client-facing tool names are injective: two tools never share one, and none is shadowed.

``namespace__tool`` is ambiguous when a namespace ends with ``_``: ``a_`` + ``b``
and ``a`` + ``_b`` are both ``a___b``. Such a configuration is refused at
start-up, naming both namespaces. Collisions the configuration cannot predict
(an upstream listing a tool whose name equals another's client-safe rewrite)
are refused at start-up naming both tools; if a re-listing brings one in later,
both tools are withdrawn and refused (``name_collision``) with an error in the
log, so neither silently shadows the other.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from agentguard_mcp import Caller, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp._names import client_name
from agentguard_mcp.cli import build_guard
from agentguard_mcp.config import config_from_mapping
from mcp import Client
from mcp.server import Server
from mcp.server.context import ServerRequestContext

from agentguard.errors import ConfigError
from tests.adapters.mcp.mcp_support import Setup, notes_command, serve_in_process, text_of

pytestmark = pytest.mark.anyio


def test_the_reported_pairs_collide_under_the_naming_scheme() -> None:
    """Why the check exists: both pairs from the report map to one name."""
    assert client_name("a_", "b", prefixed=True) == client_name("a", "_b", prefixed=True)
    assert client_name("x_", "_y", prefixed=True) == client_name("x", "__y", prefixed=True)


@pytest.mark.parametrize(("first", "second"), [("a_", "a"), ("x", "x_")])
def test_configuration_with_ambiguous_namespaces_is_refused(first: str, second: str) -> None:
    """``a_`` next to ``a`` (either order) is a ConfigError naming both namespaces."""
    upstreams = {first: {"command": ["x"]}, second: {"command": ["y"]}}
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"upstreams": upstreams})
    assert f"'{first}'" in str(info.value)
    assert f"'{second}'" in str(info.value)


def test_python_api_refuses_ambiguous_namespaces(setup: Setup) -> None:
    """GuardedProxy built directly (no configuration file) refuses them too."""
    guard = build_guard(setup.home, str(setup.policy_file))
    upstreams = [
        Upstream(UpstreamSpec(namespace=ns, command=("x",))) for ns in ("tickets", "a_", "a")
    ]
    with pytest.raises(ConfigError, match="'a_' and 'a'"):
        GuardedProxy(guard, upstreams)
    guard.close()


def _run_proxy(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentguard_mcp", "proxy", "--home", str(setup.home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("first", "first_tool", "second", "second_tool"),
    [("a_", "b", "a", "_b"), ("x_", "_y", "x", "__y")],
    ids=["a_-b-vs-a-_b", "x_-_y-vs-x-__y"],
)
def test_proxy_process_refuses_ambiguous_namespaces(
    setup: Setup, tmp_path: Path, first: str, first_tool: str, second: str, second_tool: str
) -> None:
    """The reports' cases with real processes: both pairs would be one name, exit 2.

    ``x_`` + ``_y`` and ``x`` + ``__y`` are both ``x____y``; neither tool may be
    dropped in silence. Exit 2 like every other invalid configuration file;
    nothing is started.
    """
    assert client_name(first, first_tool, prefixed=True) == client_name(
        second, second_tool, prefixed=True
    )
    config = tmp_path / "proxy.yaml"
    record = tmp_path / "calls.jsonl"
    config.write_text(
        "upstreams:\n"
        f"  {first}:\n    command: {notes_command(record, '--extra-tool', first_tool)}\n"
        f"  {second}:\n    command: {notes_command(record, '--extra-tool', second_tool)}\n",
        encoding="utf-8",
    )
    done = _run_proxy(setup, "--config", str(config), "--http", "127.0.0.1:0")
    assert done.returncode == 2, done.stderr
    assert f"'{first}' and '{second}'" in done.stderr
    assert "Traceback" not in done.stderr


def test_proxy_process_refuses_two_tools_with_one_client_name(setup: Setup, tmp_path: Path) -> None:
    """A real upstream listing ``read.note`` and its client-safe rewrite: both named, exit 1."""
    rewrite = client_name("notes", "read.note", prefixed=False)
    assert rewrite.startswith("read_note_")
    delegation = setup.delegation_file(setup.delegation(["notes/*"]))
    record = tmp_path / "calls.jsonl"
    done = _run_proxy(
        setup,
        "--delegation", str(delegation), "--as", setup.agent.id, "--namespace", "notes",
        "--trusted", "--", *notes_command(record, "--extra-tool", "read.note",
                                           "--extra-tool", rewrite),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "notes/read.note" in done.stderr
    assert f"notes/{rewrite}" in done.stderr
    assert f"client name {rewrite}" in done.stderr


class ListingServer:
    """An upstream whose tool list the test changes between listings."""

    def __init__(self, *names: str) -> None:
        self.names = list(names)
        self.calls: list[str] = []
        self.server: Server[Any] = Server(
            "listing", on_list_tools=self._list, on_call_tool=self._call
        )

    async def _list(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tools = [
            types.Tool(
                name=name,
                description=f"Tool {name}.",
                input_schema={"type": "object"},
                annotations=types.ToolAnnotations(read_only_hint=True, destructive_hint=False),
            )
            for name in self.names
        ]
        return types.ListToolsResult(tools=tools)

    async def _call(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        self.calls.append(params.name)
        return types.CallToolResult(content=[types.TextContent(text="done")])


async def test_collision_appearing_at_run_time_withdraws_both_tools(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """A re-listing adds a colliding tool: neither is listed or callable; an error is logged."""
    rewrite = client_name("crm", "look.up", prefixed=False)
    upstream = ListingServer("look.up", "other")
    delegation = setup.delegation(["crm/*"])
    guard = build_guard(setup.home, str(setup.policy_file))
    with anyio.fail_after(20), caplog.at_level(logging.ERROR, logger="agentguard_mcp"):
        async with (
            serve_in_process(upstream.server.streamable_http_app()) as base,
            AsyncExitStack() as stack,
        ):
            spec = UpstreamSpec(namespace="crm", url=f"{base}/mcp", trusted=True)
            proxy = GuardedProxy(
                guard, [Upstream(spec)], caller=Caller(delegation.serialize(), holder=setup.agent)
            )
            await proxy.start(stack)
            async with Client(proxy.server, mode="legacy") as client:
                listed = [t.name for t in (await client.list_tools()).tools]
                assert sorted(listed) == sorted([rewrite, "other"])
                first = await client.call_tool(rewrite, {})
                assert not first.is_error, text_of(first)

                upstream.names.append(rewrite)  # the upstream now lists the rewrite itself
                assert [t.name for t in (await client.list_tools()).tools] == ["other"]
                refused = await client.call_tool(rewrite, {})
                assert refused.is_error
                assert "name_collision" in text_of(refused)
                assert (refused.meta or {})["io.agentguard/decision"]["reason"] == "name_collision"
                assert not (await client.call_tool("other", {})).is_error
    guard.close()
    assert upstream.calls == ["look.up", "other"]
    assert "crm/look.up" in caplog.text
    assert f"crm/{rewrite}" in caplog.text
