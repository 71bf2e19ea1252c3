"""The proxy follows an upstream's ``notifications/tools/list_changed``.

The upstream is a real process (``list_changed_server.py``) that redefines
``lookup`` and adds ``extra`` while it runs, then announces it. The proxy
re-reads the listing at once, before any client asks, applies the pins (the
redefined tool is hidden and refused as ``tool_changed``; the new one is served)
and tells its own clients: a 2025-11-25 session gets the notification, a
2026-07-28 client gets it on its ``subscriptions/listen`` stream.
"""

from __future__ import annotations

import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from agentguard_mcp import Caller, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp.cli import build_guard
from mcp import Client
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged

from tests.adapters.mcp.mcp_support import HERE, Setup, serve_in_process, text_of

pytestmark = pytest.mark.anyio

SERVER = str(HERE / "list_changed_server.py")


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Scene:
    def __init__(self, setup: Setup, tmp_path: Path) -> None:
        self.record = tmp_path / "upstream.jsonl"
        self.trigger = tmp_path / "change-now"
        command = [sys.executable, SERVER, "--record", str(self.record)]
        spec = UpstreamSpec(
            namespace="crm", command=(*command, "--change-when", str(self.trigger)), trusted=True
        )
        self.upstream = Upstream(spec)
        self.guard = build_guard(setup.home, str(setup.policy_file))
        delegation = setup.delegation(["crm/*"])
        self.proxy = GuardedProxy(
            self.guard,
            [self.upstream],
            caller=Caller(delegation.serialize(), holder=setup.agent),
        )

    def upstream_lists(self) -> int:
        return sum(1 for line in _lines(self.record) if "list" in line)


async def _check_after_change(scene: Scene, client: Client) -> None:
    """What every client sees once the proxy followed the change."""
    assert [t.name for t in (await client.list_tools()).tools] == ["extra"]
    refused = await client.call_tool("lookup", {"id": "c1"})
    assert refused.is_error
    assert (refused.meta or {})["io.agentguard/decision"]["reason"] == "tool_changed"
    extra = await client.call_tool("extra", {"id": "c1"})
    assert not extra.is_error, text_of(extra)
    assert text_of(extra) == "extra: found"
    assert [line["call"] for line in _lines(scene.record) if "call" in line] == [
        "lookup",
        "extra",
    ]


async def test_a_session_client_is_told_and_sees_the_pins_applied(
    setup: Setup, tmp_path: Path
) -> None:
    scene = Scene(setup, tmp_path)
    told = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            told.set()

    with anyio.fail_after(30):
        async with AsyncExitStack() as stack:
            await scene.proxy.start(stack)
            async with Client(scene.proxy.server, mode="legacy", message_handler=on_message) as c:
                tools = c.server_capabilities.tools
                assert tools is not None
                assert tools.list_changed is True
                assert [t.name for t in (await c.list_tools()).tools] == ["lookup"]
                first = await c.call_tool("lookup", {"id": "c1"})
                assert not first.is_error, text_of(first)
                lists_before = scene.upstream_lists()

                scene.trigger.touch()
                await told.wait()
                # The proxy re-listed on the upstream's word, before this client asked.
                assert scene.upstream.changes_announced == 1
                assert scene.upstream_lists() > lists_before
                assert scene.proxy.tools["lookup"].changed
                assert "extra" in scene.proxy.tools
                assert scene.proxy.changes_announced == 1
                await _check_after_change(scene, c)
            # The client is gone: announcing again does not fail.
            await scene.proxy.announce_tools_changed()
            assert scene.proxy.changes_announced == 2
    scene.guard.close()


async def test_a_listening_2026_client_is_told_on_its_stream(setup: Setup, tmp_path: Path) -> None:
    scene = Scene(setup, tmp_path)
    with anyio.fail_after(30):
        async with AsyncExitStack() as stack:
            await scene.proxy.start(stack)
            async with Client(scene.proxy.server) as client:
                assert [t.name for t in (await client.list_tools()).tools] == ["lookup"]
                assert not (await client.call_tool("lookup", {"id": "c1"})).is_error
                async with client.listen(tools_list_changed=True) as subscription:
                    assert subscription.honored.tools_list_changed is True
                    scene.trigger.touch()
                    async for _event in subscription:
                        break
                assert scene.proxy.tools["lookup"].changed
                await _check_after_change(scene, client)
    scene.guard.close()


async def test_an_announcement_that_changes_nothing_served_is_not_forwarded(
    setup: Setup, tmp_path: Path
) -> None:
    """A change outside what the proxy serves (here: the same listing) is not passed on;
    the upstream's word is still followed (it re-listed)."""
    scene = Scene(setup, tmp_path)
    with anyio.fail_after(30):
        async with AsyncExitStack() as stack:
            await scene.proxy.start(stack)
            lists = scene.upstream_lists()
            await scene.proxy.tools_changed(scene.upstream)
            assert scene.upstream_lists() == lists + 1
            assert scene.proxy.changes_announced == 0
    scene.guard.close()


async def test_announcements_during_a_relist_are_coalesced_and_failures_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Announcements arriving while a re-list runs lead to one more re-list, not one
    each; a failing re-list is logged and the next announcement is followed again;
    other notifications are ignored."""
    upstream = Upstream(UpstreamSpec(namespace="crm", command=("true",)))
    runs: list[int] = []
    release = anyio.Event()
    started = anyio.Event()

    async def relist() -> None:
        runs.append(len(runs))
        started.set()
        await release.wait()
        if len(runs) == 2:
            raise RuntimeError("listing failed")

    upstream.on_tools_changed = relist
    notice = types.ToolListChangedNotification()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            upstream._task_group = tg
            await upstream._on_message(types.ResourceListChangedNotification())
            assert upstream.changes_announced == 0
            await upstream._on_message(notice)
            await started.wait()
            for _ in range(5):
                await upstream._on_message(notice)
            release.set()
        assert runs == [0, 1]
        assert upstream.changes_announced == 6
        assert "re-listing after its tools changed failed (RuntimeError)" in caplog.text
        release = anyio.Event()
        release.set()
        async with anyio.create_task_group() as tg:
            upstream._task_group = tg
            await upstream._on_message(notice)
        assert runs == [0, 1, 2]


class StreamingServer:
    """An HTTP upstream at 2026-07-28: it announces tool-list changes on
    ``subscriptions/listen`` streams only (the era has no other way)."""

    def __init__(self) -> None:
        self.tools = [
            types.Tool(
                name="lookup",
                description="Look up a customer.",
                input_schema={"type": "object", "properties": {"id": {"type": "string"}}},
                annotations=types.ToolAnnotations(read_only_hint=True),
            )
        ]
        self.bus = InMemorySubscriptionBus()
        self.server: Server[Any] = Server(
            "streaming",
            on_list_tools=self._list,
            on_call_tool=self._call,
            on_subscriptions_listen=ListenHandler(self.bus),
        )

    async def _list(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(self.tools))

    async def _call(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(text=f"{params.name}: found")])


async def test_a_2026_http_upstream_is_followed_through_its_listen_stream(setup: Setup) -> None:
    upstream = StreamingServer()
    guard = build_guard(setup.home, str(setup.policy_file))
    told = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            told.set()

    with anyio.fail_after(30):
        async with (
            serve_in_process(upstream.server.streamable_http_app()) as base,
            AsyncExitStack() as stack,
        ):
            spec = UpstreamSpec(namespace="crm", url=f"{base}/mcp", trusted=True)
            connection = Upstream(spec)
            proxy = GuardedProxy(
                guard,
                [connection],
                caller=Caller(setup.delegation(["crm/*"]).serialize(), holder=setup.agent),
            )
            await proxy.start(stack)
            assert connection.client.protocol_version == "2026-07-28"
            async with Client(proxy.server, mode="legacy", message_handler=on_message) as client:
                assert [t.name for t in (await client.list_tools()).tools] == ["lookup"]
                extra = upstream.tools[0].model_copy(update={"name": "extra"})
                upstream.tools.append(extra)
                # The proxy's listen stream may open just after start: announce until told.
                while not told.is_set():
                    await upstream.bus.publish(ToolsListChanged())
                    with anyio.move_on_after(0.2):
                        await told.wait()
                assert "extra" in proxy.tools
                assert [t.name for t in (await client.list_tools()).tools] == ["lookup", "extra"]
    guard.close()
