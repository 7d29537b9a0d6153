"""Tracing, metrics and log correlation through the OpenTelemetry API.

The project depends on ``opentelemetry-api`` only.  Without an SDK every
call here is a no-op: spans are not created at all (a cheap check of the
global tracer provider), and metric instruments are the API's proxies.  With
an SDK configured (``exec-server --otel``, or ``opentelemetry-instrument``)
the server and client produce (PROTOCOL.md section 12):

- one SERVER span per request, named after the method (``unknown`` for
  unrouted ones), child of the W3C ``trace`` carrier the request brought,
  with attributes ``method``, ``result`` (success, error, disconnected),
  ``rpc.dispatch_offset_ns`` and ``rpc.response_enqueue_offset_ns``;
  child spans ``process.spawn`` and ``fs.helper``;
- one CLIENT span per client call, whose context travels as ``trace``;
- the metrics of PROTOCOL.md 12.3, with attribute values from closed sets
  only (never an id, path, command or URL).
"""

import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace

from exec_server import __version__

INSTRUMENTATION = "exec_server"
#: Attribute values allowed for ``result``.
SUCCESS, ERROR, DISCONNECTED, TERMINATED = "success", "error", "disconnected", "terminated"

#: ``EXEC_SERVER_TELEMETRY=off`` bypasses the API entirely (the baseline of
#: ``benchmarks/telemetry_overhead.py``).
DISABLED = os.environ.get("EXEC_SERVER_TELEMETRY", "").lower() == "off"


class _Off:
    """Stands in for the meter and its instruments when telemetry is off."""

    def __getattr__(self, name: str) -> Any:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


_tracer = trace.get_tracer(INSTRUMENTATION, __version__)
_meter: Any = _Off() if DISABLED else metrics.get_meter(INSTRUMENTATION, __version__)
_DEFAULT_PROVIDER = trace.get_tracer_provider()
_DEFAULT_METER_PROVIDER = metrics.get_meter_provider()

connections_active = _meter.create_up_down_counter(
    "exec_server_connections_active", description="Open client connections")
connections_total = _meter.create_counter(
    "exec_server_connections_total", description="Client connections accepted")
requests_total = _meter.create_counter(
    "exec_server_requests_total", description="Requests handled")
request_duration = _meter.create_histogram(
    "exec_server_request_duration_seconds", unit="s", description="Handler time of a request")
request_total_duration = _meter.create_histogram(
    "exec_server_request_total_duration_seconds", unit="s",
    description="From decoded receipt to response enqueue or disconnect, queueing included")
request_queue_duration = _meter.create_histogram(
    "exec_server_request_queue_duration_seconds", unit="s", description="Time a request waited for a worker")
processes_active = _meter.create_up_down_counter(
    "exec_server_processes_active", description="Processes running or not yet closed")
processes_finished = _meter.create_counter(
    "exec_server_processes_finished_total", description="Processes closed, by result")
process_duration = _meter.create_histogram(
    "exec_server_process_duration_seconds", unit="s", description="From spawn to closed")
client_requests_total = _meter.create_counter(
    "exec_server_client_requests_total", description="Client calls, local failures included")


def tracing_enabled() -> bool:
    """True once an SDK (or any real provider) replaced the API's default."""
    return not DISABLED and trace.get_tracer_provider() is not _DEFAULT_PROVIDER


def metrics_enabled() -> bool:
    """True once an SDK meter provider is installed; without one, recording is skipped."""
    return not DISABLED and metrics.get_meter_provider() is not _DEFAULT_METER_PROVIDER


def method_label(method: str, routed: bool) -> str:
    return method if routed else "unknown"


def extract(carrier: Optional[Any]) -> Optional[otel_context.Context]:
    """The remote parent from a request's ``trace`` member (a TraceContext or None).

    An invalid ``traceparent`` yields an empty context: a fresh trace.
    """
    if carrier is None:
        return None
    fields = {}
    if getattr(carrier, "traceparent", None):
        fields["traceparent"] = carrier.traceparent
    if getattr(carrier, "tracestate", None):
        fields["tracestate"] = carrier.tracestate
    return propagate.extract(fields)


def inject() -> Dict[str, str]:
    """The current context as a ``trace`` carrier (empty when nothing is traced)."""
    if not tracing_enabled():
        return {}
    carrier: Dict[str, str] = {}
    propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in ("traceparent", "tracestate")}


class ServerRequestSpan:
    """The SERVER span of one request; a no-op object when tracing is off."""

    __slots__ = ("span", "received", "token")

    def __init__(self, method: str, carrier: Any, received: float):
        self.received = received
        self.span = None
        self.token = None
        if tracing_enabled():
            self.span = _tracer.start_span(method, context=extract(carrier), kind=trace.SpanKind.SERVER,
                                           attributes={"method": method})

    def dispatched(self) -> None:
        if self.span is not None:
            self.span.set_attribute("rpc.dispatch_offset_ns", int((time.monotonic() - self.received) * 1e9))
            self.token = otel_context.attach(trace.set_span_in_context(self.span))

    def finish(self, result: Optional[str]) -> None:
        if self.span is None:
            return
        if self.token is not None:
            otel_context.detach(self.token)
            self.token = None
        if result is not None and result != DISCONNECTED:
            self.span.set_attribute("result", result)
        if result == ERROR:
            self.span.set_status(trace.Status(trace.StatusCode.ERROR))
        self.span.set_attribute("rpc.response_enqueue_offset_ns", int((time.monotonic() - self.received) * 1e9))
        self.span.end()


@contextmanager
def child_span(name: str) -> Iterator[None]:
    """An INTERNAL span under the current one (spawn, fs helper); no-op when off."""
    with _span(name, trace.SpanKind.INTERNAL):
        yield


@contextmanager
def client_span(method: str) -> Iterator[None]:
    """The CLIENT span of one call, attribute ``method``; no-op when tracing is off."""
    with _span(method, trace.SpanKind.CLIENT, {"method": method}):
        yield


@contextmanager
def _span(name: str, kind: "trace.SpanKind", attributes: Optional[Dict[str, Any]] = None) -> Iterator[None]:
    if not tracing_enabled():
        yield
        return
    with _tracer.start_as_current_span(name, kind=kind, attributes=attributes):
        yield


def log_fields(**fields: Any) -> Dict[str, Any]:
    """``extra=`` for a log record: the given fields plus the current trace and span ids."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        fields["trace_id"] = format(span_context.trace_id, "032x")
        fields["span_id"] = format(span_context.span_id, "016x")
    return fields


def configure_sdk(service_version: str = __version__) -> None:
    """Install the OpenTelemetry SDK (``exec-server --otel``).

    Spans and metrics go to OTLP when ``opentelemetry-exporter-otlp`` is
    installed (endpoint from the standard ``OTEL_EXPORTER_OTLP_*``
    variables), else to stderr.

    Raises:
        RuntimeError: ``opentelemetry-sdk`` is not installed.
    """
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise RuntimeError("--otel needs the opentelemetry-sdk package (pip install opentelemetry-sdk)") from exc
    import sys

    resource = Resource.create({"service.name": "exec-server", "service.version": service_version})
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        span_exporter: Any = OTLPSpanExporter()
        metric_exporter: Any = OTLPMetricExporter()
    except ImportError:
        span_exporter = ConsoleSpanExporter(out=sys.stderr)
        metric_exporter = ConsoleMetricExporter(out=sys.stderr)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(resource=resource,
                                             metric_readers=[PeriodicExportingMetricReader(metric_exporter)]))
    logging.getLogger(__name__).info("OpenTelemetry SDK configured")
