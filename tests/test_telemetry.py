"""Tests for agentguard.telemetry: SDK set-up, the OTLP/HTTP wire, and who imports OpenTelemetry.

``configure()`` sets process-wide providers, so the end-to-end tests run it in
a child Python process; the wire test sends to a real OTLP/HTTP receiver that
this test starts and that decodes the requests with ``opentelemetry-proto``.
"""

from __future__ import annotations

import ast
import gzip
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import agentguard
from agentguard import telemetry
from agentguard.errors import ConfigError

SECRET = "canary-wire-5b1d0e77"
PACKAGE = Path(agentguard.__file__).parent

# A program built on agentguard: it configures the SDK from OTEL_* variables,
# then makes an allowed call inside an MCP-style server span, a denied call, a
# call that waits for approval, and the same call again once approved.
PROGRAM = textwrap.dedent(
    """
    import sys
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind
    from agentguard.approval import QueueChannel
    from agentguard.errors import ApprovalPending, DeniedError
    from agentguard.guard import Guard
    from agentguard.keys import Identity
    from agentguard.store.memory import MemoryStore
    from agentguard.telemetry import configure

    secret = sys.argv[1]
    provider = configure()
    org, alice, bot = (Identity.generate(i) for i in ("org:acme", "user:alice", "agent:bot"))
    guard = Guard(
        {
            "approvers": [{"id": "user:carol", "min_assurance": "local"}],
            "step_up": [{"tools": ["tickets/comment"], "min_assurance": "local"}],
        },
        trusted_roots=[org.principal],
        store=MemoryStore(),
        approver=QueueChannel(),
        approval_mode="raise",
        enforcement_point="mcp_proxy",
    )
    root = guard.issue(org, alice, ["tickets/*"], ttl="1h", purpose=secret)
    delegation = guard.attenuate(root, alice, bot, ["tickets/read", "tickets/comment"], ttl="10m")

    def run(**args):
        return "done"

    with trace.get_tracer("server").start_as_current_span("tools/call read", kind=SpanKind.SERVER):
        guard.call(delegation, "tickets/read", {"ticket": secret}, run, holder=bot)
    try:
        guard.call(delegation, "tickets/delete", {"ticket": secret}, run, holder=bot)
    except DeniedError:
        pass
    try:
        guard.call(delegation, "tickets/comment", {"text": secret}, run, holder=bot)
    except ApprovalPending as exc:
        guard.approvals.answer(
            exc.request_id, approver="user:carol", approve=True, channel="web", assurance="local"
        )
    guard.call(delegation, "tickets/comment", {"text": secret}, run, holder=bot)
    print("second configure returns the same provider:", configure() is provider)
    """
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def _run(program: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", program, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


class _Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint that keeps every request body it receives."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: dict[str, list[bytes]] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        with self.server.lock:
            self.server.bodies.setdefault(self.path, []).append(body)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:  # quiet: no per-request lines
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    """A real OTLP/HTTP receiver on a free local port, served from a thread."""
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, kind) if kind else None


def test_spans_cross_the_otlp_wire_intact(receiver: _Receiver) -> None:
    """Kinds, parents, links and attributes survive OTLP/HTTP; the secret does not travel."""
    env = _env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="wire-test")
    done = _run(PROGRAM, env, SECRET)
    assert "second configure returns the same provider: True" in done.stdout
    raw = [body for bodies in receiver.bodies.values() for body in bodies]
    assert all(SECRET.encode() not in body for body in raw)

    spans: list[Span] = []
    for body in receiver.bodies["/v1/traces"]:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            assert service["service.name"] == "wire-test"
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
    names = [span.name for span in spans]
    assert sorted(names) == sorted(
        [
            "tools/call read",
            "agentguard.authorize tickets/read",
            "execute_tool tickets/delete",
            "agentguard.authorize tickets/delete",
            "execute_tool tickets/comment",
            "agentguard.authorize tickets/comment",
            "agentguard.await_approval tickets/comment",
            "execute_tool tickets/comment",
            "agentguard.authorize tickets/comment",
        ]
    )
    by_id = {span.span_id: span for span in spans}

    def attrs(span: Span) -> dict[str, object]:
        return {a.key: _value(a.value) for a in span.attributes}

    def parent(span: Span) -> Span:
        return by_id[span.parent_span_id]

    server = next(s for s in spans if s.name == "tools/call read")
    assert server.kind == Span.SPAN_KIND_SERVER
    enriched = attrs(server)
    assert enriched["agentguard.decision.outcome"] == "allow"
    assert enriched["agentguard.enforcement.point"] == "mcp_proxy"
    read = next(s for s in spans if s.name == "agentguard.authorize tickets/read")
    assert read.kind == Span.SPAN_KIND_INTERNAL
    assert parent(read) is server
    assert attrs(read)["agentguard.delegation.chain"] == ("org:acme", "user:alice", "agent:bot")
    assert attrs(read)["agentguard.delegation.depth"] == 2

    delete = next(s for s in spans if s.name == "execute_tool tickets/delete")
    assert delete.kind == Span.SPAN_KIND_INTERNAL
    assert delete.status.code == delete.status.STATUS_CODE_ERROR
    assert attrs(delete)["error.type"] == "out_of_scope"
    assert attrs(delete)["gen_ai.operation.name"] == "execute_tool"

    wait = next(s for s in spans if s.name == "agentguard.await_approval tickets/comment")
    asking = parent(wait)
    assert asking.name == "agentguard.authorize tickets/comment"
    assert parent(asking).name == "execute_tool tickets/comment"
    assert attrs(wait)["agentguard.approval.outcome"] == "pending"
    resolved = next(
        s for s in spans if s.name == "agentguard.authorize tickets/comment" and s is not asking
    )
    [link] = resolved.links
    assert link.trace_id == asking.trace_id
    assert link.span_id == asking.span_id
    assert attrs(resolved)["agentguard.approval.outcome"] == "approved"
    assert attrs(resolved)["agentguard.decision.reason"] == "approved"

    metric_names = {
        metric.name
        for body in receiver.bodies.get("/v1/metrics", [])
        for resource_metrics in ExportMetricsServiceRequest.FromString(body).resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    }
    assert {"agentguard.decisions", "agentguard.authorization.duration"} <= metric_names


CONSOLE_PROGRAM = textwrap.dedent(
    """
    from agentguard.guard import Guard
    from agentguard.keys import Identity
    from agentguard.store.memory import MemoryStore
    from agentguard.telemetry import configure

    org, bot = Identity.generate("org:acme"), Identity.generate("agent:bot")

    def decide(guard):
        delegation = guard.issue(org, bot, ["tickets/*"], ttl="10m")
        guard.call(delegation, "tickets/read", {}, lambda: None, holder=bot)
        return guard.audit.tail(2)[0]

    guard = Guard(trusted_roots=[org.principal], store=MemoryStore())
    before = decide(guard)
    print("untraced ids:", before["trace_id"], before["span_id"])
    configure(exporter="console", service_name="console-test").force_flush()
    after = decide(guard)
    print("traced ids:", len(after["trace_id"]), len(after["span_id"]))
    """
)


def test_console_exporter_prints_spans_only_after_configure() -> None:
    """Without configure() nothing is traced; after it the spans go to stdout."""
    done = _run(CONSOLE_PROGRAM, _env())
    assert "untraced ids: None None" in done.stdout
    assert "traced ids: 32 16" in done.stdout
    assert '"name": "execute_tool tickets/read"' in done.stdout
    assert '"service.name": "console-test"' in done.stdout


def test_unknown_exporter_is_refused() -> None:
    with pytest.raises(ConfigError, match="zipkin"):
        telemetry.configure(exporter="zipkin")


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("opentelemetry.sdk")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    with pytest.raises(ConfigError, match=r"agentguard\[telemetry\]"):
        telemetry.configure(exporter="none")


def _opentelemetry_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] == "opentelemetry"}


def test_only_tracing_imports_the_api_and_only_telemetry_the_sdk() -> None:
    """The split import-linter cannot see (it treats ``opentelemetry`` as one package)."""
    importers = {
        path.relative_to(PACKAGE).as_posix(): imports
        for path in sorted(PACKAGE.rglob("*.py"))
        if (imports := _opentelemetry_imports(path))
    }
    assert set(importers) == {"tracing.py", "telemetry.py"}
    assert all(not name.startswith("opentelemetry.sdk") for name in importers["tracing.py"])
    sdk_side = ("opentelemetry.sdk", "opentelemetry.exporter")
    assert all(name.startswith(sdk_side) for name in importers["telemetry.py"])
