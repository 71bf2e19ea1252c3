"""Tracing gotchas the README names: a traces-only collector, and a client that strips the env.

A real OTLP/HTTP receiver that accepts traces only (``/v1/metrics`` answers
405, as Phoenix and Jaeger do) and the stdio proxy started by the ``mcp`` SDK's
client, as an MCP client would start it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import stdio_client

from tests.adapters.mcp.mcp_support import TIME_SERVER, Setup, proxy_params
from tests.test_telemetry import _Handler, _Receiver

pytestmark = pytest.mark.anyio


class _TracesOnly(_Handler):
    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path == "/v1/traces":
            super().do_POST()
            return
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.bodies.setdefault(self.path, []).append(b"")
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    server.RequestHandlerClass = _TracesOnly
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


async def _serve_one_call(setup: Setup, env: dict[str, str] | None, errlog: Path) -> None:
    delegation = setup.delegation_file(setup.delegation(["time/get_current_time"]))
    params = proxy_params(
        [
            "proxy", "--delegation", str(delegation), "--as", setup.agent.id,
            "--home", str(setup.home), "--policy", str(setup.policy_file),
            "--namespace", "time", "--trusted", "--", TIME_SERVER, "--local-timezone", "UTC",
        ],
        env=env,
    )  # fmt: skip
    with errlog.open("w") as stderr, anyio.fail_after(60):
        async with Client(stdio_client(params, errlog=stderr), mode="legacy") as client:
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert not result.is_error
    # The client waited for the proxy to exit, which flushes its exporters.


@pytest.mark.parametrize("metrics", ["default", "none"])
async def test_a_traces_only_collector_needs_metrics_off(
    setup: Setup, receiver: _Receiver, tmp_path: Path, metrics: str
) -> None:
    """By default metrics go over OTLP too and a traces-only receiver answers 405 (logged);
    ``OTEL_METRICS_EXPORTER=none`` sends spans only, with nothing logged."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    if metrics == "none":
        env["OTEL_METRICS_EXPORTER"] = "none"
    errlog = tmp_path / "stderr"
    await _serve_one_call(setup, env, errlog)
    assert receiver.bodies.get("/v1/traces")
    log = errlog.read_text()
    if metrics == "none":
        assert "/v1/metrics" not in receiver.bodies
        assert "405" not in log
    else:
        assert receiver.bodies.get("/v1/metrics")
        assert "Failed to export metrics batch code: 405" in log


async def test_spans_need_the_environment_passed_by_the_client(
    setup: Setup, receiver: _Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_* only in the client's own environment: the SDK does not pass it on, no spans."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    assert os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] == receiver.url
    await _serve_one_call(setup, None, tmp_path / "stderr")
    assert receiver.bodies == {}
