"""Tests for agentguard.tracing: the span tree, attributes, links, metrics and privacy.

The global tracer and meter providers can be set only once per process, so
this module installs them once and routes finished spans to per-test
processors (an in-memory exporter by default).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import pytest
from opentelemetry import baggage, metrics, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agentguard import tracing
from agentguard.approval import ApprovalBook, ApprovalRequest, CallbackChannel, QueueChannel
from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.errors import ApprovalPending, DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.memory import MemoryStore

SECRET = "canary-7f3a9c1e-do-not-export"


class _Router(SpanProcessor):
    """Forwards span events to the processors the current test installed."""

    def __init__(self) -> None:
        self.processors: list[SpanProcessor] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in list(self.processors):
            processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for processor in list(self.processors):
            processor.on_end(span)


ROUTER = _Router()
METRICS = InMemoryMetricReader()


def _install() -> None:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "another test set a non-SDK tracer provider"
    provider.add_span_processor(ROUTER)
    metrics.set_meter_provider(MeterProvider(metric_readers=[METRICS]))


_install()
TRACER = trace.get_tracer("tests")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test, in end order."""
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    ROUTER.processors.append(processor)
    yield memory
    ROUTER.processors.remove(processor)


@pytest.fixture(autouse=True)
def _no_content_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tracing.CAPTURE_CONTENT_ENV, raising=False)


@pytest.fixture
def carol() -> Identity:
    """A human approver."""
    return Identity.generate("user:carol")


POLICY: dict[str, Any] = {
    "approvers": [{"id": "user:carol", "min_assurance": "local"}],
    "step_up": [{"tools": ["tickets/comment"], "min_assurance": "local"}],
    "approval": {"channel": "queue", "timeout": "5m"},
}


def _guard(
    org: Identity,
    clock: ManualClock,
    *,
    approver: Any = None,
    approval_mode: str = "block",
    enforcement_point: str = "python",
) -> Guard:
    return Guard(
        POLICY,
        trusted_roots=[org.principal],
        store=MemoryStore(),
        clock=clock,
        approver=approver or QueueChannel(),
        approval_mode=approval_mode,
        enforcement_point=enforcement_point,
    )


def _delegation(guard: Guard, org: Identity, alice: Identity, bot: Identity) -> Delegation:
    root = guard.issue(org, alice, ["tickets/*"], ttl="1h", purpose="triage")
    return guard.attenuate(root, alice, bot, ["tickets/read", "tickets/comment"], ttl="10m")


def _spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    spans = exporter.get_finished_spans()
    by_name = {span.name: span for span in spans}
    assert len(by_name) == len(spans), [s.name for s in spans]
    return by_name


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _last_decision(guard: Guard) -> dict[str, Any]:
    return next(r for r in reversed(guard.audit.tail(10)) if r["type"] == "decision")


def _read(ticket: str = "", **_: Any) -> str:
    return f"ticket {ticket}"


def test_allow_span_tree_and_attributes(
    exporter: InMemorySpanExporter,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
) -> None:
    guard = _guard(org, clock)
    delegation = _delegation(guard, org, alice, bot)
    result = guard.call(
        delegation, "tickets/read", {"ticket": "T-1"}, _read, holder=bot, call_id="c1"
    )
    assert result == "ticket T-1"
    spans = _spans(exporter)
    assert set(spans) == {"execute_tool tickets/read", "agentguard.authorize tickets/read"}
    tool, authorize = spans["execute_tool tickets/read"], spans["agentguard.authorize tickets/read"]
    assert tool.kind is SpanKind.INTERNAL
    assert authorize.kind is SpanKind.INTERNAL
    assert tool.parent is None
    assert _parent_id(authorize) == _span_id(tool)
    assert tool.status.status_code is StatusCode.UNSET
    record = _last_decision(guard)
    expected = {
        tracing.GEN_AI_OPERATION_NAME: "execute_tool",
        tracing.GEN_AI_TOOL_NAME: "tickets/read",
        tracing.GEN_AI_TOOL_CALL_ID: "c1",
        tracing.AGENTGUARD_DECISION_OUTCOME: "allow",
        tracing.AGENTGUARD_DECISION_REASON: "allowed",
        tracing.AGENTGUARD_DECISION_ID: record["decision_id"],
        tracing.AGENTGUARD_DELEGATION_DEPTH: 2,
        tracing.AGENTGUARD_DELEGATION_ROOT: "org:acme",
        tracing.AGENTGUARD_DELEGATION_CHAIN: ("org:acme", "user:alice", "agent:bot"),
        tracing.AGENTGUARD_DELEGATION_ID: delegation.leaf.link_id,
        tracing.AGENTGUARD_ENFORCEMENT_POINT: "python",
    }
    assert _attrs(tool) == expected
    authorize_attrs = _attrs(authorize)
    assert not any(key.startswith("gen_ai.") for key in authorize_attrs)
    assert authorize_attrs == {k: v for k, v in expected.items() if not k.startswith("gen_ai.")}
    # The audit record names the authorize span; the decision id joins them.
    assert authorize.context is not None
    assert record["trace_id"] == trace.format_trace_id(authorize.context.trace_id)
    assert record["span_id"] == trace.format_span_id(authorize.context.span_id)


def test_deny_marks_the_tool_span_not_the_authorize_span(
    exporter: InMemorySpanExporter,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
) -> None:
    guard = _guard(org, clock)
    delegation = _delegation(guard, org, alice, bot)
    with pytest.raises(DeniedError) as caught:
        guard.call(delegation, "tickets/delete", {"ticket": "T-1"}, _read, holder=bot)
    spans = _spans(exporter)
    tool = spans["execute_tool tickets/delete"]
    authorize = spans["agentguard.authorize tickets/delete"]
    assert _parent_id(authorize) == _span_id(tool)
    assert tool.status.status_code is StatusCode.ERROR
    assert tool.status.description is None
    assert _attrs(tool)[tracing.ERROR_TYPE] == caught.value.reason
    assert authorize.status.status_code is StatusCode.UNSET
    assert tracing.ERROR_TYPE not in _attrs(authorize)
    for span in (tool, authorize):
        attrs = _attrs(span)
        assert attrs[tracing.AGENTGUARD_DECISION_OUTCOME] == "deny"
        assert attrs[tracing.AGENTGUARD_DECISION_REASON] == caught.value.reason
        assert attrs[tracing.AGENTGUARD_DECISION_ID] == caught.value.decision_id
    # Exception messages (which may quote the call) are never recorded as events.
    assert all(not span.events for span in spans.values())


def test_approval_required_files_request_and_ends_the_wait_at_once(
    exporter: InMemorySpanExporter,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
) -> None:
    guard = _guard(org, clock, approval_mode="raise")
    delegation = _delegation(guard, org, alice, bot)
    with pytest.raises(ApprovalPending) as caught:
        guard.call(delegation, "tickets/comment", {"ticket": "T-1"}, _read, holder=bot)
    spans = _spans(exporter)
    tool = spans["execute_tool tickets/comment"]
    authorize = spans["agentguard.authorize tickets/comment"]
    wait = spans["agentguard.await_approval tickets/comment"]
    assert _parent_id(authorize) == _span_id(tool)
    assert _parent_id(wait) == _span_id(authorize)
    assert not any(key.startswith("gen_ai.") for key in _attrs(wait))
    request_id = caught.value.request_id
    assert _attrs(wait) == {
        tracing.AGENTGUARD_APPROVAL_ID: request_id,
        tracing.AGENTGUARD_APPROVAL_CHANNEL: "queue",
        tracing.AGENTGUARD_APPROVAL_OUTCOME: "pending",
        tracing.AGENTGUARD_ENFORCEMENT_POINT: "python",
    }
    assert wait.status.status_code is StatusCode.UNSET
    attrs = _attrs(authorize)
    assert attrs[tracing.AGENTGUARD_DECISION_OUTCOME] == "approval_required"
    assert attrs[tracing.AGENTGUARD_DECISION_REASON] == "approval_pending"
    assert attrs[tracing.AGENTGUARD_APPROVAL_ID] == request_id
    assert attrs[tracing.AGENTGUARD_POLICY_RULE_IDS] == ("policy step_up rule 0",)
    assert tool.status.status_code is StatusCode.ERROR
    assert _attrs(tool)[tracing.ERROR_TYPE] == "approval_pending"
    # The stored request names the span that asked, for the later link.
    request = guard.approvals.get(request_id)
    assert authorize.context is not None
    assert request.trace_id == trace.format_trace_id(authorize.context.trace_id)
    assert request.span_id == trace.format_span_id(authorize.context.span_id)


def test_later_resolution_links_to_the_request(
    exporter: InMemorySpanExporter,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
) -> None:
    """The resubmitted call that uses the receipt links its authorize span to the asking one."""
    guard = _guard(org, clock, approval_mode="raise")
    delegation = _delegation(guard, org, alice, bot)
    with pytest.raises(ApprovalPending) as caught:
        guard.call(delegation, "tickets/comment", {"ticket": "T-1"}, _read, holder=bot)
    asking = _spans(exporter)["agentguard.authorize tickets/comment"]
    exporter.clear()
    guard.approvals.answer(
        caught.value.request_id,
        approver="user:carol",
        approve=True,
        channel="web",
        assurance="local",
    )
    assert guard.call(delegation, "tickets/comment", {"ticket": "T-1"}, _read, holder=bot)
    spans = _spans(exporter)
    assert "agentguard.await_approval tickets/comment" not in spans
    authorize = spans["agentguard.authorize tickets/comment"]
    assert authorize.context is not None
    assert asking.context is not None
    assert authorize.context.trace_id != asking.context.trace_id
    [link] = authorize.links
    assert link.context.trace_id == asking.context.trace_id
    assert link.context.span_id == asking.context.span_id
    assert dict(link.attributes or {}) == {tracing.AGENTGUARD_APPROVAL_ID: caught.value.request_id}
    attrs = _attrs(authorize)
    assert attrs[tracing.AGENTGUARD_DECISION_OUTCOME] == "allow"
    assert attrs[tracing.AGENTGUARD_DECISION_REASON] == "approved"
    assert attrs[tracing.AGENTGUARD_APPROVAL_OUTCOME] == "approved"
    assert attrs[tracing.AGENTGUARD_APPROVAL_CHANNEL] == "web"
    assert spans["execute_tool tickets/comment"].status.status_code is StatusCode.UNSET


def _approve(request: ApprovalRequest, book: ApprovalBook) -> None:
    book.answer(
        request.id, approver="user:carol", approve=True, channel="callback", assurance="local"
    )


def test_approval_granted_while_waiting(
    exporter: InMemorySpanExporter,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
) -> None:
    guard = _guard(org, clock, approver=CallbackChannel(_approve))
    delegation = _delegation(guard, org, alice, bot)
    assert guard.call(delegation, "tickets/comment", {"ticket": "T-2"}, _read, holder=bot)
    spans = _spans(exporter)
    tool = spans["execute_tool tickets/comment"]
    authorize = spans["agentguard.authorize tickets/comment"]
    wait = spans["agentguard.await_approval tickets/comment"]
    assert _parent_id(wait) == _span_id(authorize)
    assert _parent_id(authorize) == _span_id(tool)
    assert _attrs(wait)[tracing.AGENTGUARD_APPROVAL_OUTCOME] == "approved"
    assert _attrs(wait)[tracing.AGENTGUARD_APPROVAL_CHANNEL] == "callback"
    assert not authorize.links  # asked and answered within the same call
    for span in (tool, authorize):
        attrs = _attrs(span)
        assert attrs[tracing.AGENTGUARD_DECISION_OUTCOME] == "allow"
        assert attrs[tracing.AGENTGUARD_DECISION_REASON] == "approved"
        assert attrs[tracing.AGENTGUARD_APPROVAL_OUTCOME] == "approved"
    assert tool.status.status_code is StatusCode.UNSET


def test_approval_timed_out(
    exporter: InMemorySpanExporter,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
) -> None:
    def nobody_answers(request: ApprovalRequest, book: ApprovalBook) -> None:
        clock.advance(301)  # the deadline passes with the request still pending

    guard = _guard(org, clock, approver=CallbackChannel(nobody_answers))
    delegation = _delegation(guard, org, alice, bot)
    with pytest.raises(DeniedError) as caught:
        guard.call(delegation, "tickets/comment", {"ticket": "T-3"}, _read, holder=bot)
    assert caught.value.reason == "approval_timeout"
    spans = _spans(exporter)
    tool = spans["execute_tool tickets/comment"]
    authorize = spans["agentguard.authorize tickets/comment"]
    wait = spans["agentguard.await_approval tickets/comment"]
    assert _attrs(wait)[tracing.AGENTGUARD_APPROVAL_OUTCOME] == "timeout"
    assert _attrs(authorize)[tracing.AGENTGUARD_DECISION_OUTCOME] == "deny"
    assert _attrs(authorize)[tracing.AGENTGUARD_DECISION_REASON] == "approval_timeout"
    assert authorize.status.status_code is StatusCode.UNSET
    assert tool.status.status_code is StatusCode.ERROR
    assert _attrs(tool)[tracing.ERROR_TYPE] == "approval_timeout"


def test_check_traces_a_dry_run_without_a_tool_span(
    exporter: InMemorySpanExporter,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
) -> None:
    guard = _guard(org, clock)
    delegation = _delegation(guard, org, alice, bot)
    decision = guard.check(delegation, "tickets/read", {"ticket": "T-1"}, holder=bot)
    [span] = exporter.get_finished_spans()
    assert span.name == "agentguard.authorize tickets/read"
    assert _attrs(span)[tracing.AGENTGUARD_DECISION_ID] == decision.id
    assert _attrs(span)[tracing.AGENTGUARD_DECISION_DRY_RUN] is True


@pytest.mark.anyio
async def test_async_call_nests_the_same_way(
    exporter: InMemorySpanExporter,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
) -> None:
    guard = _guard(org, clock, approver=CallbackChannel(_approve))

    async def comment(ticket: str) -> str:
        await anyio.lowlevel.checkpoint()
        return ticket

    delegation = _delegation(guard, org, alice, bot)
    result: str = await guard.acall(
        delegation, "tickets/comment", {"ticket": "T-4"}, comment, holder=bot
    )
    assert result == "T-4"
    spans = _spans(exporter)
    tool = spans["execute_tool tickets/comment"]
    authorize = spans["agentguard.authorize tickets/comment"]
    wait = spans["agentguard.await_approval tickets/comment"]
    assert _parent_id(authorize) == _span_id(tool)
    assert _parent_id(wait) == _span_id(authorize)
    assert _attrs(tool)[tracing.AGENTGUARD_DECISION_OUTCOME] == "allow"


def test_tool_failure_marks_the_tool_span(
    exporter: InMemorySpanExporter,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
) -> None:
    guard = _guard(org, clock)
    delegation = _delegation(guard, org, alice, bot)

    def broken(ticket: str) -> str:
        raise KeyError(SECRET)

    with pytest.raises(KeyError):
        guard.call(delegation, "tickets/read", {"ticket": "T-1"}, broken, holder=bot)
    tool = _spans(exporter)["execute_tool tickets/read"]
    assert tool.status.status_code is StatusCode.ERROR
    assert _attrs(tool)[tracing.ERROR_TYPE] == "KeyError"
    assert _attrs(tool)[tracing.AGENTGUARD_DECISION_OUTCOME] == "allow"
    assert SECRET not in _dump(exporter.get_finished_spans())


# --- interop ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outer_name", "kind"),
    [
        ("execute_tool tickets/read", SpanKind.INTERNAL),
        ("execute_tool read", SpanKind.INTERNAL),
        ("tools/call read", SpanKind.SERVER),
    ],
)
def test_framework_tool_span_is_enriched_not_duplicated(
    exporter: InMemorySpanExporter,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
    outer_name: str,
    kind: SpanKind,
) -> None:
    """A framework's ``execute_tool``/``tools/call`` span (full or bare name) is enriched."""
    guard = _guard(org, clock, enforcement_point="mcp_proxy")
    delegation = _delegation(guard, org, alice, bot)
    with TRACER.start_as_current_span(
        outer_name,
        kind=kind,
        attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "read"},
    ):
        guard.call(delegation, "tickets/read", {"ticket": "T-1"}, _read, holder=bot, call_id="c9")
    spans = _spans(exporter)
    assert set(spans) == {outer_name, "agentguard.authorize tickets/read"}
    outer = spans[outer_name]
    assert outer.kind is kind
    assert _parent_id(spans["agentguard.authorize tickets/read"]) == _span_id(outer)
    attrs = _attrs(outer)
    assert attrs[tracing.GEN_AI_TOOL_NAME] == "read"  # the framework's own name is kept
    assert attrs[tracing.GEN_AI_TOOL_CALL_ID] == "c9"
    assert attrs[tracing.AGENTGUARD_DECISION_OUTCOME] == "allow"
    assert attrs[tracing.AGENTGUARD_ENFORCEMENT_POINT] == "mcp_proxy"


def test_a_span_for_another_tool_is_not_reused(
    exporter: InMemorySpanExporter,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
) -> None:
    guard = _guard(org, clock)
    delegation = _delegation(guard, org, alice, bot)
    with TRACER.start_as_current_span("execute_tool comment"):
        guard.call(delegation, "tickets/read", {"ticket": "T-1"}, _read, holder=bot)
    spans = _spans(exporter)
    tool = spans["execute_tool tickets/read"]
    assert _parent_id(tool) == _span_id(spans["execute_tool comment"])
    assert tracing.AGENTGUARD_DECISION_ID not in _attrs(spans["execute_tool comment"])


# --- privacy ---------------------------------------------------------------------------


def _dump(spans: Sequence[ReadableSpan]) -> str:
    """Every span with its attributes, events, links and resource as text."""
    return "\n".join(span.to_json() for span in spans)


def test_canary_secret_never_exported(
    exporter: InMemorySpanExporter,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
) -> None:
    """A secret in arguments, grant purposes, an approver's message and baggage is never exported.

    Nor is any call token.
    """
    guard = _guard(org, clock, approval_mode="raise")
    root = guard.issue(org, alice, ["tickets/*"], ttl="1h", purpose=f"purpose {SECRET}")
    delegation = guard.attenuate(
        root, alice, bot, ["tickets/read", "tickets/comment"], ttl="10m", purpose=SECRET
    )
    token = otel_context.attach(baggage.set_baggage("session", SECRET))
    try:
        with TRACER.start_as_current_span("agent turn"):
            guard.call(
                delegation,
                "tickets/read",
                {"ticket": SECRET, "password": SECRET},
                _read,
                holder=bot,
            )
            with pytest.raises(DeniedError):
                guard.call(delegation, "tickets/delete", {"ticket": SECRET}, _read, holder=bot)
            with pytest.raises(ApprovalPending) as caught:
                guard.call(delegation, "tickets/comment", {"text": SECRET}, _read, holder=bot)
            guard.approvals.answer(
                caught.value.request_id,
                approver="user:carol",
                approve=True,
                channel="web",
                assurance="local",
                message=SECRET,
            )
            guard.call(delegation, "tickets/comment", {"text": SECRET}, _read, holder=bot)
    finally:
        otel_context.detach(token)
    spans = exporter.get_finished_spans()
    assert len(spans) >= 8
    text = _dump(spans)
    assert SECRET not in text
    tokens = [r["call_token"] for r in guard.audit.tail(20) if r.get("call_token")]
    assert tokens
    assert all(t not in text for t in tokens)
    # The audit log keeps the proof; the trace only the join key.
    assert SECRET in json.dumps(guard.audit.tail(20))


def test_content_capture_opt_in_records_only_redacted_arguments(
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
    clock: ManualClock,
    org: Identity,
    alice: Identity,
    bot: Identity,
) -> None:
    monkeypatch.setenv(tracing.CAPTURE_CONTENT_ENV, "true")
    guard = _guard(org, clock)
    delegation = _delegation(guard, org, alice, bot)
    guard.call(delegation, "tickets/read", {"ticket": "T-7", "api_key": SECRET}, _read, holder=bot)
    spans = _spans(exporter)
    captured = json.loads(
        _attrs(spans["execute_tool tickets/read"])[tracing.GEN_AI_TOOL_CALL_ARGUMENTS]
    )
    assert captured == {"api_key": "[redacted]", "ticket": "T-7"}
    assert tracing.GEN_AI_TOOL_CALL_ARGUMENTS not in _attrs(
        spans["agentguard.authorize tickets/read"]
    )
    assert SECRET not in _dump(list(spans.values()))


# --- best effort -----------------------------------------------------------------------


class _Raising(SpanProcessor):
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        raise RuntimeError("processor broke on start")

    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("processor broke on end")


class _RaisingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise RuntimeError("exporter broke")

    def shutdown(self) -> None:
        pass


class _Hanging(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def _outcomes(guard: Guard, delegation: Delegation, bot: Identity) -> list[str]:
    outcomes = [guard.call(delegation, "tickets/read", {"ticket": "T-1"}, _read, holder=bot)]
    try:
        guard.call(delegation, "tickets/delete", {"ticket": "T-1"}, _read, holder=bot)
    except DeniedError as exc:
        outcomes.append(exc.reason)
    try:
        guard.call(delegation, "tickets/comment", {"ticket": "T-1"}, _read, holder=bot)
    except ApprovalPending as exc:
        outcomes.append(exc.reason)
    return outcomes


EXPECTED_OUTCOMES = ["ticket T-1", "out_of_scope", "approval_pending"]


def test_raising_processor_changes_no_decision(
    clock: ManualClock, org: Identity, alice: Identity, bot: Identity
) -> None:
    """Processors and exporters that raise on every span leave decisions and audit as they were."""
    guard = _guard(org, clock, approval_mode="raise")
    delegation = _delegation(guard, org, alice, bot)
    broken = [_Raising(), SimpleSpanProcessor(_RaisingExporter())]
    ROUTER.processors.extend(broken)
    try:
        outcomes = _outcomes(guard, delegation, bot)
    finally:
        for processor in broken:
            ROUTER.processors.remove(processor)
    assert outcomes == EXPECTED_OUTCOMES
    assert [r["outcome"] for r in guard.audit.tail(10) if r["type"] == "decision"] == [
        "allow",
        "deny",
        "approval_required",
    ]


def test_hanging_exporter_delays_no_decision(
    clock: ManualClock, org: Identity, alice: Identity, bot: Identity
) -> None:
    """With the exporter stuck (behind the usual batch processor) 15 decisions still take < 2 s."""
    guard = _guard(org, clock, approval_mode="raise")
    delegation = _delegation(guard, org, alice, bot)
    hanging = _Hanging()
    processor = BatchSpanProcessor(hanging, max_export_batch_size=1, schedule_delay_millis=1)
    ROUTER.processors.append(processor)
    try:
        started = time.monotonic()
        outcomes = [_outcomes(guard, delegation, bot) for _ in range(5)]
        elapsed = time.monotonic() - started
        assert hanging.entered.wait(5)  # the exporter really is stuck meanwhile
    finally:
        ROUTER.processors.remove(processor)
        hanging.release.set()
        processor.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
    assert outcomes == [EXPECTED_OUTCOMES] * 5
    assert elapsed < 2.0


# --- metrics ---------------------------------------------------------------------------


def _points(name: str) -> list[Any]:
    data = METRICS.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_metrics_count_decisions_and_time_them(
    clock: ManualClock, org: Identity, alice: Identity, bot: Identity
) -> None:
    guard = _guard(org, clock, approver=CallbackChannel(_approve), enforcement_point="metrics")
    delegation = _delegation(guard, org, alice, bot)
    guard.call(delegation, "tickets/read", {"ticket": "T-1"}, _read, holder=bot)
    with pytest.raises(DeniedError):
        guard.call(delegation, "tickets/delete", {"ticket": "T-1"}, _read, holder=bot)
    guard.call(delegation, "tickets/comment", {"ticket": "T-1"}, _read, holder=bot)
    counts = {
        (
            p.attributes[tracing.AGENTGUARD_DECISION_OUTCOME],
            p.attributes[tracing.AGENTGUARD_DECISION_REASON],
        ): p.value
        for p in _points(tracing.METRIC_DECISIONS)
        if p.attributes[tracing.AGENTGUARD_ENFORCEMENT_POINT] == "metrics"
    }
    assert counts == {
        ("allow", "allowed"): 1,
        ("deny", "out_of_scope"): 1,
        ("allow", "approved"): 1,
    }
    durations = [
        p
        for p in _points(tracing.METRIC_AUTHORIZATION_DURATION)
        if p.attributes[tracing.AGENTGUARD_ENFORCEMENT_POINT] == "metrics"
    ]
    assert sum(p.count for p in durations) == 3
    waits = [
        p
        for p in _points(tracing.METRIC_APPROVAL_WAIT)
        if p.attributes[tracing.AGENTGUARD_APPROVAL_CHANNEL] == "callback"
        and p.attributes[tracing.AGENTGUARD_APPROVAL_OUTCOME] == "approved"
    ]
    assert sum(p.count for p in waits) >= 1
