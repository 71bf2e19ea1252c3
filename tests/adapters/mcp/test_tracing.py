"""One trace across client -> proxy -> upstream, and no caller baggage crossing the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import mcp_types as types
import pytest
from agentguard_mcp import Caller, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp.cli import build_guard
from mcp import Client
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.adapters.mcp.mcp_support import Setup, serve_in_process, text_of

pytestmark = pytest.mark.anyio

CANARY = "CANARY-baggage-7f3a"


class _Router(SpanProcessor):
    """Forwards finished spans to the processors of the running test (a provider keeps its own)."""

    def __init__(self) -> None:
        self.processors: list[SpanProcessor] = []

    def on_end(self, span: ReadableSpan) -> None:
        for processor in list(self.processors):
            processor.on_end(span)


ROUTER = _Router()


def _provider() -> TracerProvider:
    """The process's SDK provider: reuse one another test installed, else install one."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "a non-SDK tracer provider is installed"
    return provider


_provider().add_span_processor(ROUTER)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    ROUTER.processors.append(processor)
    yield memory
    ROUTER.processors.remove(processor)


ECHO = types.Tool(
    name="echo",
    input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    annotations=types.ToolAnnotations(read_only_hint=True),
)


def _echo_server(received: list[dict[str, Any]]) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[ECHO])

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        received.append(dict(ctx.meta or {}))
        text = str((params.arguments or {}).get("text"))
        return types.CallToolResult(content=[types.TextContent(text=text)])

    # The schema lookup keeps the SDK from running tools/list (a root span) inside each call.
    return Server(
        "echo",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        get_tool_input_schema=lambda name: ECHO.input_schema if name == "echo" else None,
    )


async def test_one_trace_from_client_through_proxy_to_upstream(
    setup: Setup, exporter: InMemorySpanExporter
) -> None:
    """All spans share the client's trace id; the proxy's spans nest under the client's request."""
    received: list[dict[str, Any]] = []
    delegation = setup.delegation(["echo/echo"])
    guard = build_guard(setup.home, str(setup.policy_file))
    tracer = trace.get_tracer("tests")
    with anyio.fail_after(20):
        async with (
            serve_in_process(_echo_server(received).streamable_http_app()) as base,
            AsyncExitStack() as stack,
        ):
            spec = UpstreamSpec(namespace="echo", url=f"{base}/mcp", trusted=True)
            proxy = GuardedProxy(
                guard, [Upstream(spec)], caller=Caller(delegation.serialize(), holder=setup.agent)
            )
            await proxy.start(stack)
            async with Client(proxy.server, mode="legacy") as client:
                await client.list_tools()
                token = otel_context.attach(baggage.set_baggage("user.secret", CANARY))
                try:
                    with tracer.start_as_current_span("agent turn") as turn:
                        result = await client.call_tool("echo", {"text": "hi"})
                finally:
                    otel_context.detach(token)
    guard.close()
    assert not result.is_error, text_of(result)

    assert isinstance(turn, ReadableSpan)
    assert turn.start_time is not None
    start = turn.start_time
    # Spans of the set-up (connections, listings) may end late; keep those of the turn.
    spans = [s for s in exporter.get_finished_spans() if (s.start_time or 0) >= start]
    trace_id = turn.get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}
    by_id = {s.context.span_id: s for s in spans}

    def parent(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, span.name
        return by_id[span.parent.span_id]

    sends = [s for s in spans if s.name == "MCP send tools/call echo"]
    served = [s for s in spans if s.name == "tools/call echo"]
    assert len(sends) == 2
    assert len(served) == 2
    client_send = next(s for s in sends if parent(s).name == "agent turn")
    proxy_span = next(s for s in served if parent(s) is client_send)
    assert proxy_span.kind is trace.SpanKind.SERVER
    # The guard enriches the SDK's server span instead of opening execute_tool.
    assert (proxy_span.attributes or {}).get("agentguard.enforcement.point") == "mcp_proxy"
    assert not [s for s in spans if s.name.startswith("execute_tool")]
    authorize = next(s for s in spans if s.name == "agentguard.authorize echo/echo")
    assert parent(authorize) is proxy_span
    proxy_send = next(s for s in sends if s is not client_send)
    assert parent(proxy_send) is proxy_span
    upstream_span = next(s for s in served if s is not proxy_span)
    assert parent(upstream_span) is proxy_send

    # Trace context crosses, the caller's baggage does not.
    [meta] = received
    assert meta["traceparent"].split("-")[2] == trace.format_span_id(proxy_send.context.span_id)
    assert "baggage" not in meta
    assert CANARY not in str(meta)
    assert not [s for s in spans if CANARY in str(s.to_json())]
