"""Set up the OpenTelemetry SDK for programs built on agentguard (the ``telemetry`` extra).

The library itself only uses the OpenTelemetry API (:mod:`agentguard.tracing`)
and never calls :func:`configure`: choosing an SDK is the application's job.
The CLI, the MCP proxy, the demo and notebooks call it to see their traces::

    from agentguard.telemetry import configure
    configure(exporter="console")

This is the only module that imports ``opentelemetry.sdk`` (and the OTLP
exporter); it installs the providers through :mod:`agentguard.tracing`, the
only module that imports the API.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from agentguard import tracing
from agentguard.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["EXPORTERS", "capture_spans", "configure"]

log = logging.getLogger("agentguard.telemetry")

#: Exporter names :func:`configure` understands (as in ``OTEL_TRACES_EXPORTER``).
EXPORTERS = ("console", "otlp", "none")
_EXTRA_HINT = "install the telemetry extra: pip install 'agentguard[telemetry]'"


def configure(
    *,
    exporter: str | None = None,
    service_name: str = "agentguard",
    span_processor: SpanProcessor | None = None,
) -> TracerProvider:
    """Install SDK tracer and meter providers as the global ones and return the tracer provider.

    Args:
        exporter: ``console``, ``otlp`` (OTLP over HTTP) or ``none``. ``None``
            reads ``OTEL_TRACES_EXPORTER`` (a comma-separated list is allowed),
            else uses ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
            ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, else ``console``.
            The OTLP exporter reads the standard ``OTEL_EXPORTER_OTLP_*``
            variables (endpoint, headers, timeout).
        service_name: ``service.name`` unless ``OTEL_SERVICE_NAME`` is set.
        span_processor: one more processor to add (a custom exporter, a test).

    Metrics go to ``OTEL_METRICS_EXPORTER`` when set, else over OTLP when
    traces do, else nowhere (console metrics would flood a notebook).

    The global providers can be set once per process: when an SDK tracer
    provider is installed already, it is returned unchanged (with a warning).

    Raises:
        ConfigError: the SDK or the OTLP exporter is not installed, or an
            exporter name is unknown.
    """
    span_exporters = _names(exporter, "OTEL_TRACES_EXPORTER", _default_traces_exporter())
    metric_exporters = _names(
        None, "OTEL_METRICS_EXPORTER", "otlp" if "otlp" in span_exporters else "none"
    )
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError as exc:
        raise ConfigError(f"the OpenTelemetry SDK is not installed; {_EXTRA_HINT}") from exc

    current = tracing.global_tracer_provider()
    if isinstance(current, TracerProvider):
        log.warning("agentguard: an OpenTelemetry SDK is configured already; keeping it")
        return current
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service_name})
    readers = [_metric_reader(name) for name in metric_exporters]
    provider = TracerProvider(resource=resource)
    for name in span_exporters:
        provider.add_span_processor(_span_processor(name))
    if span_processor is not None:
        provider.add_span_processor(span_processor)
    tracing.install_providers(provider, MeterProvider(resource=resource, metric_readers=readers))
    return provider


def _default_traces_exporter() -> str:
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return "otlp" if any(os.environ.get(name) for name in endpoints) else "console"


def _names(explicit: str | None, variable: str, default: str) -> list[str]:
    text = explicit if explicit is not None else (os.environ.get(variable) or default)
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise ConfigError(f"unknown exporter {name!r}; choose one of {', '.join(EXPORTERS)}")
    return [name for name in names if name != "none"]


def _otlp_missing() -> ConfigError:
    return ConfigError(f"the OTLP/HTTP exporter is not installed; {_EXTRA_HINT}")


def _span_processor(name: str) -> SpanProcessor:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if name == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise _otlp_missing() from exc
    return BatchSpanProcessor(OTLPSpanExporter())


def _metric_reader(name: str) -> MetricReader:
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )

    if name == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    except ImportError as exc:
        raise _otlp_missing() from exc
    return PeriodicExportingMetricReader(OTLPMetricExporter())


# capture_spans: one processor on the global provider routes ended spans to the
# captures open right now, since a provider cannot drop a processor once added.
_captures: tuple[SpanProcessor, ...] = ()
_captures_lock = threading.Lock()
_routed: set[int] = set()  # ids of the providers the router was added to


@contextmanager
def capture_spans() -> Iterator[InMemorySpanExporter]:
    """Collect in memory the spans that end inside the ``with`` block (for tests).

    Yields the SDK's ``InMemorySpanExporter``: ``get_finished_spans()`` lists
    the spans ended so far, from any thread, oldest first. The spans come
    from the global SDK tracer provider; when the application has installed
    none, SDK tracer and meter providers without exporters are installed
    first, for the rest of the process (OpenTelemetry allows no second one).

    Example::

        with capture_spans() as spans:
            guard.check(world.delegation, "tickets/read", {}, holder=world.bot)
        assert [s.name for s in spans.get_finished_spans()] == ["agentguard.authorize tickets/read"]

    Raises:
        ConfigError: the OpenTelemetry SDK is not installed, or the global
            tracer provider is not the SDK's.
    """
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError as exc:
        raise ConfigError(f"capturing spans needs the OpenTelemetry SDK; {_EXTRA_HINT}") from exc

    global _captures
    provider = tracing.global_tracer_provider()
    if not isinstance(provider, TracerProvider):
        # OpenTelemetry keeps a provider another library installed first: refuse then.
        tracing.install_providers(TracerProvider(), MeterProvider())
        provider = tracing.global_tracer_provider()
        if not isinstance(provider, TracerProvider):
            raise ConfigError(
                "capturing spans needs the OpenTelemetry SDK's tracer provider; "
                f"the global one is a {type(provider).__name__}"
            )
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    with _captures_lock:
        if id(provider) not in _routed:
            provider.add_span_processor(_router())
            _routed.add(id(provider))
        _captures = (*_captures, processor)
    try:
        yield exporter
    finally:
        with _captures_lock:
            _captures = tuple(p for p in _captures if p is not processor)


def _router() -> SpanProcessor:
    from opentelemetry.sdk.trace import SpanProcessor

    class Router(SpanProcessor):
        """Hands each ended span to the captures open at that moment."""

        def on_end(self, span: ReadableSpan) -> None:
            for capture in _captures:
                capture.on_end(span)

    return Router()
