"""The stdio proxy exports its own spans when the OTEL_* variables ask for it."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import anyio
import pytest
from mcp import Client
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.adapters.mcp.mcp_support import TIME_SERVER, Setup, proxy_params
from tests.test_telemetry import _Receiver

pytestmark = pytest.mark.anyio


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    """A real OTLP/HTTP receiver on a free local port."""
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_proxy_exports_decision_spans_over_otlp(setup: Setup, receiver: _Receiver) -> None:
    """A decision made in the proxy process reaches the OTLP receiver, tagged mcp_proxy."""
    delegation = setup.delegation([{"tool": "time/get_current_time"}])
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    params = proxy_params(
        [
            "proxy",
            "--delegation",
            str(setup.delegation_file(delegation)),
            "--as",
            setup.agent.id,
            "--home",
            str(setup.home),
            "--policy",
            str(setup.policy_file),
            "--namespace",
            "time",
            "--trusted",
            "--",
            TIME_SERVER,
            "--local-timezone",
            "UTC",
        ],
        env=env,
    )
    with anyio.fail_after(30):
        async with Client(params, mode="legacy") as client:
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert not result.is_error
    # The proxy flushes its batch processor when it exits (after the client closes).
    with anyio.fail_after(10):
        while not receiver.bodies.get("/v1/traces"):
            await anyio.sleep(0.05)
    names: set[str] = set()
    points: set[str] = set()
    services: set[str] = set()
    for body in receiver.bodies["/v1/traces"]:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for attr in resource_spans.resource.attributes:
                if attr.key == "service.name":
                    services.add(attr.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    names.add(span.name)
                    for attr in span.attributes:
                        if attr.key == "agentguard.enforcement.point":
                            points.add(attr.value.string_value)
    assert "agentguard.authorize time/get_current_time" in names
    assert points == {"mcp_proxy"}
    assert services == {"agentguard-mcp"}
