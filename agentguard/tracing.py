"""OpenTelemetry spans and metrics for guarded tool calls (DESIGN §8).

This is the one module that imports the OpenTelemetry API; it uses the global
providers and never configures an SDK (see :mod:`agentguard.telemetry`). Per
call it produces::

    execute_tool {tool}                  (INTERNAL; or the framework's span, enriched)
      agentguard.authorize {tool}        the decision, joined to the audit record
        agentguard.await_approval {tool} only when a human is asked

Privacy: tokens, ``Authorization`` values, argument values, results, purpose
texts, explanations and exception messages never reach a span, event, link or
baggage. Only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``
the *redacted* arguments go on the tool span as ``gen_ai.tool.call.arguments``.

Telemetry is best effort: every function here swallows its own errors (logged
at debug level) so that an SDK, processor or exporter failure can neither
raise into the host program nor change a decision.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace

from agentguard.decision import Reason
from agentguard.errors import ApprovalPending, DeniedError
from agentguard.redaction import redact
from agentguard.store.base import ApprovalRow

if TYPE_CHECKING:
    from agentguard.decision import Decision

__all__ = [
    "AGENTGUARD_APPROVAL_CHANNEL",
    "AGENTGUARD_APPROVAL_ID",
    "AGENTGUARD_APPROVAL_OUTCOME",
    "AGENTGUARD_BUDGET_EXHAUSTED",
    "AGENTGUARD_BUDGET_NAMES",
    "AGENTGUARD_BUDGET_RESETS_AT",
    "AGENTGUARD_BUDGET_STATE",
    "AGENTGUARD_DECISION_DRY_RUN",
    "AGENTGUARD_DECISION_ID",
    "AGENTGUARD_DECISION_OUTCOME",
    "AGENTGUARD_DECISION_REASON",
    "AGENTGUARD_DECISION_SHADOW",
    "AGENTGUARD_DELEGATION_CHAIN",
    "AGENTGUARD_DELEGATION_DEPTH",
    "AGENTGUARD_DELEGATION_ID",
    "AGENTGUARD_DELEGATION_ROOT",
    "AGENTGUARD_ENFORCEMENT_POINT",
    "AGENTGUARD_POLICY_RULE_IDS",
    "CAPTURE_CONTENT_ENV",
    "ERROR_TYPE",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_TOOL_CALL_ARGUMENTS",
    "GEN_AI_TOOL_CALL_ID",
    "GEN_AI_TOOL_NAME",
    "METRIC_APPROVAL_WAIT",
    "METRIC_AUTHORIZATION_DURATION",
    "METRIC_DECISIONS",
    "ApprovalWait",
    "Authorization",
    "ToolCall",
    "annotate",
    "answer_outcome",
    "approval_resolved",
    "audit_ids",
    "capture_content",
    "current_ids",
    "decided",
    "global_tracer_provider",
    "install_providers",
]

log = logging.getLogger("agentguard.tracing")

# The gen_ai.* constants of opentelemetry-semantic-conventions are marked as
# moved; these are the same values.
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
ERROR_TYPE = "error.type"

AGENTGUARD_DECISION_OUTCOME = "agentguard.decision.outcome"
AGENTGUARD_DECISION_REASON = "agentguard.decision.reason"
AGENTGUARD_DECISION_ID = "agentguard.decision.id"
AGENTGUARD_DECISION_DRY_RUN = "agentguard.decision.dry_run"
AGENTGUARD_DECISION_SHADOW = "agentguard.decision.shadow"
AGENTGUARD_DELEGATION_DEPTH = "agentguard.delegation.depth"
AGENTGUARD_DELEGATION_ROOT = "agentguard.delegation.root"
AGENTGUARD_DELEGATION_CHAIN = "agentguard.delegation.chain"
AGENTGUARD_DELEGATION_ID = "agentguard.delegation.id"
AGENTGUARD_POLICY_RULE_IDS = "agentguard.policy.rule_ids"
AGENTGUARD_APPROVAL_ID = "agentguard.approval.id"
AGENTGUARD_APPROVAL_OUTCOME = "agentguard.approval.outcome"
AGENTGUARD_APPROVAL_CHANNEL = "agentguard.approval.channel"
AGENTGUARD_ENFORCEMENT_POINT = "agentguard.enforcement.point"
AGENTGUARD_BUDGET_NAMES = "agentguard.budget.names"
AGENTGUARD_BUDGET_STATE = "agentguard.budget.state"
AGENTGUARD_BUDGET_RESETS_AT = "agentguard.budget.resets_at"
AGENTGUARD_BUDGET_EXHAUSTED = "agentguard.budget.exhausted"

METRIC_DECISIONS = "agentguard.decisions"
METRIC_AUTHORIZATION_DURATION = "agentguard.authorization.duration"
METRIC_APPROVAL_WAIT = "agentguard.approval.wait.duration"

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
EXECUTE_TOOL = "execute_tool"
# Span names under which a framework may already have opened the tool span:
# GenAI instrumentations (execute_tool) and the MCP SDK server (tools/call).
_TOOL_SPAN_PREFIXES = ("execute_tool ", "tools/call ")
# Decision reasons that are failures of the guard itself, not refusals.
_GUARD_FAILURES = frozenset({"store_error", "audit_error"})

_SCOPE = "agentguard"
_tracer = trace.get_tracer(_SCOPE)
_meter = metrics.get_meter(_SCOPE)
_decisions = _meter.create_counter(
    METRIC_DECISIONS, unit="{decision}", description="Decisions taken by the guard"
)
_authorization_duration = _meter.create_histogram(
    METRIC_AUTHORIZATION_DURATION,
    unit="s",
    description="Time to decide one call, approval waits included",
)
_approval_wait = _meter.create_histogram(
    METRIC_APPROVAL_WAIT, unit="s", description="Time spent waiting for a human approval"
)

#: The authorization in progress in this context (set by :class:`Authorization`).
_current: ContextVar[Authorization | None] = ContextVar("agentguard_authorization", default=None)


# Where the OpenTelemetry API keeps the global providers once they are set
# (``set_tracer_provider`` and ``set_meter_provider`` set them once per process;
# a provider named by ``OTEL_PYTHON_*_PROVIDER`` is loaded into them by the first
# ``get_*_provider()``, and this module calls both at import). While they are
# still ``None`` nothing here would be recorded, and reading them is cheaper
# than asking for the provider (which looks the environment up on every call).
# An API version without them takes the documented path every time.
_UNKNOWN = object()
_metrics_state: Any = getattr(metrics, "_internal", None)


def _enabled() -> bool:
    """Whether an SDK (or another real provider) is installed; spans are skipped otherwise."""
    if getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _metering() -> bool:
    """Whether a meter provider may be installed (``False`` only when surely none is)."""
    return getattr(_metrics_state, "_METER_PROVIDER", _UNKNOWN) is not None


def global_tracer_provider() -> trace.TracerProvider:
    """The global tracer provider (a proxy until an application installs one)."""
    return trace.get_tracer_provider()


def install_providers(
    tracer_provider: trace.TracerProvider, meter_provider: metrics.MeterProvider
) -> None:
    """Make these the global providers (for :func:`agentguard.telemetry.configure` only)."""
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)


def capture_content() -> bool:
    """Whether the user opted in to recording (redacted) tool arguments."""
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"


def _bare(tool: str) -> str:
    return tool.partition("/")[2] or tool


def _is_tool_span(span: trace.Span, tool: str) -> bool:
    """Whether ``span`` is a recording tool span a framework opened for ``tool``."""
    if not span.is_recording():
        return False
    name = getattr(span, "name", None)  # the API span has no name; SDK spans do
    if not isinstance(name, str):
        return False
    for prefix in _TOOL_SPAN_PREFIXES:
        if name.startswith(prefix) and name[len(prefix) :] in (tool, _bare(tool)):
            return True
    return False


def _hex_ids(span: trace.Span) -> tuple[str, str] | None:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)


def _fail(span: trace.Span | None, error_type: str) -> None:
    if span is not None and span.is_recording():
        span.set_attribute(ERROR_TYPE, error_type)
        # No description: exception messages may hold argument values.
        span.set_status(trace.StatusCode.ERROR)


def _error_type(exc: BaseException) -> str:
    if isinstance(exc, DeniedError):
        return exc.reason
    return type(exc).__qualname__


class _Scope:
    """A span made current in this context until :meth:`close`."""

    span: trace.Span | None = None
    _token: Token[otel_context.Context] | None = None
    _owned = False

    def _open(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        self.span = _tracer.start_span(
            name, kind=trace.SpanKind.INTERNAL, attributes=attributes or None
        )
        self._owned = True
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def _end(self, what: str) -> None:
        """Detach the context and end an owned span; never raises (logs at debug)."""
        token, self._token = self._token, None
        try:
            try:
                if token is not None:
                    otel_context.detach(token)
            finally:
                if self._owned and self.span is not None:
                    self.span.end()
        except Exception:
            log.debug("agentguard: could not end the %s span", what, exc_info=True)


class ToolCall(_Scope):
    """The tool span of one guarded run (``with ToolCall(...)`` around authorize + run).

    Enriches the current span when a framework already opened the tool span for
    this tool; otherwise opens ``execute_tool {tool}``. A refusal or a failure
    of the tool marks it as an error with ``error.type``.
    """

    def __init__(
        self,
        tool: str,
        *,
        call_id: str | None,
        enforcement_point: str,
        args: Mapping[str, Any] | None = None,
        redact_fields: Iterable[str] = (),
    ) -> None:
        self.tool = tool
        self.call_id = call_id
        self.enforcement_point = enforcement_point
        self.args = args
        self.redact_fields = tuple(redact_fields)

    def __enter__(self) -> ToolCall:
        try:
            if not _enabled():
                return self
            current = trace.get_current_span()
            attributes: dict[str, Any] = {AGENTGUARD_ENFORCEMENT_POINT: self.enforcement_point}
            if _is_tool_span(current, self.tool):
                self.span = current
                existing = getattr(current, "attributes", None) or {}
                if self.call_id and existing.get(GEN_AI_TOOL_CALL_ID) is None:
                    attributes[GEN_AI_TOOL_CALL_ID] = self.call_id
            else:
                attributes[GEN_AI_OPERATION_NAME] = EXECUTE_TOOL
                attributes[GEN_AI_TOOL_NAME] = self.tool
                if self.call_id:
                    attributes[GEN_AI_TOOL_CALL_ID] = self.call_id
            if self.args is not None and capture_content():
                attributes[GEN_AI_TOOL_CALL_ARGUMENTS] = json.dumps(
                    redact(self.args, self.redact_fields), sort_keys=True, default=str
                )
            if self.span is None:
                self._open(f"{EXECUTE_TOOL} {self.tool}", attributes)
            else:
                self.span.set_attributes(attributes)
        except Exception:
            log.debug("agentguard: could not start the tool span", exc_info=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.span is None:
            return  # no span was opened or enriched: nothing to mark or end
        try:
            if exc is not None:
                _fail(self.span, _error_type(exc))
        except Exception:
            log.debug("agentguard: could not mark the tool span", exc_info=True)
        self._end("tool")


class Authorization(_Scope):
    """The ``agentguard.authorize {tool}`` span around one run of the pipeline.

    It becomes the current span, so the audit record and an approval request
    filed meanwhile name it; :func:`decided` fills in the decision.
    """

    def __init__(self, tool: str, *, enforcement_point: str) -> None:
        self.tool = tool
        self.enforcement_point = enforcement_point
        self.tool_span: trace.Span | None = None
        self.outcome: str | None = None
        self._started = 0.0
        self._var_token: Token[Authorization | None] | None = None
        # Neither spans nor metrics can be recorded: the whole span is skipped.
        self._quiet = False

    def __enter__(self) -> Authorization:
        try:
            tracing = _enabled()
            if not tracing and not _metering():
                self._quiet = True
                return self
            self._started = time.perf_counter()
            self._var_token = _current.set(self)
            if not tracing:
                return self
            current = trace.get_current_span()
            if _is_tool_span(current, self.tool):
                self.tool_span = current
            self._open(
                f"agentguard.authorize {self.tool}",
                {AGENTGUARD_ENFORCEMENT_POINT: self.enforcement_point},
            )
        except Exception:
            log.debug("agentguard: could not start the authorize span", exc_info=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._quiet:
            return
        try:
            if self._var_token is not None:
                _current.reset(self._var_token)
            if exc is not None:
                _fail(self.span, _error_type(exc))
            _authorization_duration.record(
                time.perf_counter() - self._started,
                {
                    AGENTGUARD_DECISION_OUTCOME: self.outcome or "error",
                    AGENTGUARD_ENFORCEMENT_POINT: self.enforcement_point,
                },
            )
        except Exception:
            log.debug("agentguard: could not record the authorization", exc_info=True)
        self._end("authorize")

    def _spans(self) -> list[trace.Span]:
        return [s for s in (self.span, self.tool_span) if s is not None and s.is_recording()]

    def _set(self, attributes: Mapping[str, Any]) -> None:
        for span in self._spans():
            span.set_attributes(attributes)


def _rule_ids(rule: int | None, reason: str, approval_rules: Sequence[str]) -> list[str]:
    ids = []
    if rule is not None:
        ids.append(f"policy deny rule {rule}" if reason == Reason.POLICY_DENIED else f"rule {rule}")
    # Approval rules read "link 1 rule 0 (description)": keep the identifying part.
    ids.extend(text.split(" (", 1)[0] for text in approval_rules)
    return ids


def decided(decision: Decision) -> None:
    """Put a :class:`~agentguard.guard.Decision` on the current authorize and tool spans.

    Also counts it. Never raises.
    """
    try:
        current = _current.get()
        if current is None and not _metering():
            return  # no span to fill in and no meter to count with
        attributes: dict[str, Any] = {
            AGENTGUARD_DECISION_OUTCOME: decision.outcome,
            AGENTGUARD_DECISION_REASON: decision.reason,
            AGENTGUARD_ENFORCEMENT_POINT: current.enforcement_point if current else "",
        }
        _decisions.add(1, attributes)
        if current is None:
            return
        current.outcome = decision.outcome
        if not current._spans():
            return
        attributes[AGENTGUARD_DECISION_ID] = decision.id
        if decision.link_ids:
            attributes[AGENTGUARD_DELEGATION_DEPTH] = len(decision.link_ids)
            attributes[AGENTGUARD_DELEGATION_ID] = decision.link_ids[-1]
        if decision.path:
            attributes[AGENTGUARD_DELEGATION_ROOT] = decision.path[0]
            attributes[AGENTGUARD_DELEGATION_CHAIN] = list(decision.path)
        rule_ids = _rule_ids(decision.rule, decision.reason, decision.approval_rules)
        if rule_ids:
            attributes[AGENTGUARD_POLICY_RULE_IDS] = rule_ids
        if decision.approval_request_id:
            attributes[AGENTGUARD_APPROVAL_ID] = decision.approval_request_id
        if decision.dry_run:
            attributes[AGENTGUARD_DECISION_DRY_RUN] = True
        if decision.shadow:
            attributes[AGENTGUARD_DECISION_SHADOW] = True
        current._set(attributes)
        if decision.reason in _GUARD_FAILURES and current.span is not None:
            _fail(current.span, decision.reason)
    except Exception:
        log.debug("agentguard: could not record the decision", exc_info=True)


def annotate(attributes: Mapping[str, Any]) -> None:
    """Add ``attributes`` to the current authorize and tool spans (never raises)."""
    try:
        current = _current.get()
        if current is not None:
            current._set(attributes)
    except Exception:
        log.debug("agentguard: could not annotate the decision", exc_info=True)


def audit_ids() -> dict[str, str | None]:
    """``trace_id`` and ``span_id`` (hex) of the current span for the audit record."""
    try:
        ids = _hex_ids(trace.get_current_span())
    except Exception:  # noqa: BLE001 - telemetry must never break a decision or a tool call
        ids = None
    return {"trace_id": ids[0] if ids else None, "span_id": ids[1] if ids else None}


def current_ids() -> tuple[str | None, str | None]:
    """Trace and span ids (hex) of the current span, ``None`` when there is none.

    Stored with a new approval request: the call that later uses the answer
    links its authorize span to the one that asked.
    """
    ids = audit_ids()
    return ids["trace_id"], ids["span_id"]


def _link_context(origin: Mapping[str, Any]) -> trace.SpanContext | None:
    trace_id, span_id = origin.get("trace_id"), origin.get("span_id")
    if not isinstance(trace_id, str) or not isinstance(span_id, str):
        return None
    try:
        ctx = trace.SpanContext(
            int(trace_id, 16),
            int(span_id, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
    except ValueError:
        return None
    return ctx if ctx.is_valid else None


def approval_resolved(
    request_id: str, outcome: str, channel: str, request: Mapping[str, Any]
) -> None:
    """Record the answer the current call uses; link to the span that filed the request.

    ``request`` is the stored request (:meth:`ApprovalRequest.to_json`), which
    names the span of the call that asked. Never raises.
    """
    try:
        current = _current.get()
        if current is None or not current._spans():
            return
        current._set(
            {
                AGENTGUARD_APPROVAL_ID: request_id,
                AGENTGUARD_APPROVAL_OUTCOME: outcome,
                AGENTGUARD_APPROVAL_CHANNEL: channel,
            }
        )
        origin = _link_context(request)
        span = current.span
        if origin is None or span is None or not span.is_recording():
            return
        here = span.get_span_context()
        if origin.span_id == here.span_id and origin.trace_id == here.trace_id:
            return  # asked and answered within this very call
        span.add_link(origin, {AGENTGUARD_APPROVAL_ID: request_id})
    except Exception:
        log.debug("agentguard: could not record the approval", exc_info=True)


def answer_outcome(answer: ApprovalRow | BaseException | None) -> str:
    """``approved``, ``rejected``, ``pending``, ``timeout`` or ``unavailable``."""
    if isinstance(answer, ApprovalPending):
        return "pending"
    if isinstance(answer, BaseException):
        return "unavailable"
    if answer is None or answer.status == "pending":
        return "timeout"
    return "rejected" if answer.status == "rejected" else "approved"


class ApprovalWait(_Scope):
    """The ``agentguard.await_approval {tool}`` span around one wait for an answer.

    In non-blocking mode it ends at once with outcome ``pending``; the call
    that later uses the answer links to the span that filed the request.
    """

    def __init__(self, tool: str, *, request_id: str, channel: str) -> None:
        self.tool = tool
        self.request_id = request_id
        self.channel = channel
        self.outcome = "unavailable"
        self._started = time.perf_counter()

    def __enter__(self) -> ApprovalWait:
        try:
            if not _enabled():
                return self
            current = _current.get()
            self._open(
                f"agentguard.await_approval {self.tool}",
                {
                    AGENTGUARD_APPROVAL_ID: self.request_id,
                    AGENTGUARD_APPROVAL_CHANNEL: self.channel,
                    AGENTGUARD_ENFORCEMENT_POINT: current.enforcement_point if current else "",
                },
            )
        except Exception:
            log.debug("agentguard: could not start the approval span", exc_info=True)
        return self

    def answered(self, answer: ApprovalRow | BaseException | None) -> None:
        """Note what came back (a row, an error, or ``None`` for no answer in time)."""
        try:
            self.outcome = answer_outcome(answer)
            attributes = {
                AGENTGUARD_APPROVAL_ID: self.request_id,
                AGENTGUARD_APPROVAL_OUTCOME: self.outcome,
                AGENTGUARD_APPROVAL_CHANNEL: self.channel,
            }
            if self.span is not None and self.span.is_recording():
                self.span.set_attributes(attributes)
                if self.outcome == "unavailable" and isinstance(answer, BaseException):
                    _fail(self.span, _error_type(answer))
            current = _current.get()
            if current is not None:
                current._set(attributes)
        except Exception:
            log.debug("agentguard: could not record the approval answer", exc_info=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None:
                _fail(self.span, _error_type(exc))
            _approval_wait.record(
                time.perf_counter() - self._started,
                {
                    AGENTGUARD_APPROVAL_OUTCOME: self.outcome,
                    AGENTGUARD_APPROVAL_CHANNEL: self.channel,
                },
            )
        except Exception:
            log.debug("agentguard: could not record the approval wait", exc_info=True)
        self._end("approval")
