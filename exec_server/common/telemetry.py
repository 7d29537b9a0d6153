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
import re
import sys
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Tuple

from exec_server import __version__

INSTRUMENTATION = "exec_server"
#: Attribute values allowed for ``result``.
SUCCESS, ERROR, DISCONNECTED, TERMINATED = "success", "error", "disconnected", "terminated"

#: ``EXEC_SERVER_TELEMETRY=off`` bypasses the API entirely (the baseline of
#: ``benchmarks/telemetry_overhead.py``).
DISABLED = os.environ.get("EXEC_SERVER_TELEMETRY", "").lower() == "off"

# Whether an SDK is there is decided at call time from the provider installed
# *now*, so it does not matter whether the SDK arrived before this module was
# imported (``opentelemetry-instrument``, a script that configures the SDK and
# then imports the client) or after it (``exec-server --otel``).  The API is
# imported only once somebody else has imported it, or named a provider in
# the environment: nobody can have installed a provider before that, and a
# process without OpenTelemetry pays nothing for it at start-up.  The
# environment is read once, here (it was two lookups per request): a provider
# is named in it before the process starts.
_TRACE_PROVIDER_NAMED = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_METER_PROVIDER_NAMED = "OTEL_PYTHON_METER_PROVIDER" in os.environ
#: (provider, its tracer or meter, or None when it is the API's own no-op or proxy)
_tracer_cache: Tuple[Any, Any] = (None, None)
_meter_cache: Tuple[Any, Any] = (None, None)


def _current_tracer() -> Any:
    """The tracer of the installed SDK provider, or None when tracing is off."""
    global _tracer_cache
    if DISABLED or ("opentelemetry.trace" not in sys.modules and not _TRACE_PROVIDER_NAMED):
        return None
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    cached_provider, tracer = _tracer_cache
    if provider is not cached_provider:
        api_own = isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
        tracer = None if api_own else provider.get_tracer(INSTRUMENTATION, __version__)
        _tracer_cache = (provider, tracer)
    return tracer


def _current_meter() -> Any:
    """The meter of the installed SDK meter provider, or None when metrics are off."""
    global _meter_cache
    if DISABLED or ("opentelemetry.metrics" not in sys.modules and not _METER_PROVIDER_NAMED):
        return None
    from opentelemetry import metrics

    provider = metrics.get_meter_provider()
    cached_provider, meter = _meter_cache
    if provider is not cached_provider:
        # The API's proxy and no-op providers live in the API package itself.
        api_own = type(provider).__module__.startswith("opentelemetry.metrics")
        meter = None if api_own else provider.get_meter(INSTRUMENTATION, __version__)
        _meter_cache = (provider, meter)
    return meter


class _Instrument:
    """A metric instrument made from the current SDK meter on first use; recording is a no-op without one."""

    __slots__ = ("_factory", "_name", "_options", "_meter", "_real")

    def __init__(self, factory: str, name: str, **options: Any):
        self._factory = factory
        self._name = name
        self._options = options
        self._meter: Any = None
        self._real: Any = None

    def _instrument(self) -> Any:
        meter = _current_meter()
        if meter is None:
            return None
        if meter is not self._meter:
            try:
                self._real = getattr(meter, self._factory)(self._name, **self._options)
            except TypeError:  # an API before 1.23 takes no explicit_bucket_boundaries_advisory
                options = {k: v for k, v in self._options.items() if k != "explicit_bucket_boundaries_advisory"}
                self._real = getattr(meter, self._factory)(self._name, **options)
            self._meter = meter
        return self._real

    def add(self, amount: float, attributes: Optional[Dict[str, Any]] = None) -> None:
        real = self._instrument()
        if real is not None:
            real.add(amount, attributes)

    def record(self, amount: float, attributes: Optional[Dict[str, Any]] = None) -> None:
        real = self._instrument()
        if real is not None:
            real.record(amount, attributes)


#: Bucket boundaries in seconds for the duration histograms: the SDK's defaults (0, 5, 10, 25, ... 10000) are
#: meant for milliseconds, and put every request of under 5 s in one bucket.
REQUEST_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
PROCESS_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0]

connections_active = _Instrument(
    "create_up_down_counter", "exec_server_connections_active", description="Open client connections")
connections_total = _Instrument(
    "create_counter", "exec_server_connections_total", description="Client connections accepted")
requests_total = _Instrument(
    "create_counter", "exec_server_requests_total", description="Requests handled")
request_duration = _Instrument(
    "create_histogram", "exec_server_request_duration_seconds", unit="s", description="Handler time of a request",
    explicit_bucket_boundaries_advisory=REQUEST_BUCKETS)
request_total_duration = _Instrument(
    "create_histogram", "exec_server_request_total_duration_seconds", unit="s",
    description="From decoded receipt to response enqueue or disconnect, queueing included",
    explicit_bucket_boundaries_advisory=REQUEST_BUCKETS)
request_queue_duration = _Instrument(
    "create_histogram", "exec_server_request_queue_duration_seconds", unit="s",
    description="Time a request waited for a worker", explicit_bucket_boundaries_advisory=REQUEST_BUCKETS)
processes_active = _Instrument(
    "create_up_down_counter", "exec_server_processes_active", description="Processes running or not yet closed")
processes_finished = _Instrument(
    "create_counter", "exec_server_processes_finished_total", description="Processes closed, by result")
process_duration = _Instrument(
    "create_histogram", "exec_server_process_duration_seconds", unit="s", description="From spawn to closed",
    explicit_bucket_boundaries_advisory=PROCESS_BUCKETS)
client_requests_total = _Instrument(
    "create_counter", "exec_server_client_requests_total", description="Client calls, local failures included")


def tracing_enabled() -> bool:
    """True while a real tracer provider (an SDK) is installed, whenever it was installed."""
    return _current_tracer() is not None


def metrics_enabled() -> bool:
    """True while a real meter provider (an SDK) is installed; without one, recording is skipped."""
    return _current_meter() is not None


def method_label(method: str, routed: bool) -> str:
    return method if routed else "unknown"


def extract(carrier: Optional[Any]) -> Any:
    """The remote parent from a request's ``trace`` member (a TraceContext or None).

    An invalid ``traceparent`` yields an empty context: a fresh trace.
    """
    if carrier is None:
        return None
    from opentelemetry import propagate

    fields = {}
    traceparent, tracestate = getattr(carrier, "traceparent", None), getattr(carrier, "tracestate", None)
    if traceparent and len(traceparent) <= _TRACEPARENT_MAX_CHARS:
        fields["traceparent"] = traceparent
    if tracestate and _tracestate_usable(tracestate):
        fields["tracestate"] = tracestate
    return propagate.extract(fields)


# W3C Trace Context limits, checked before the API's propagator sees a carrier: it logs a WARNING for each
# one past them (with the offending tracestate member's text, newlines included), which let any client write
# one forged line of its choosing into the server's log per request.  What fails here is dropped, as the
# propagator itself would drop it (a traceparent too long: a fresh trace; a bad tracestate: none).
_TRACEPARENT_MAX_CHARS = 512
_TRACESTATE_MAX_CHARS = 8192
_TRACESTATE_MAX_MEMBERS = 32
_TRACESTATE_MEMBER = (r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
                      r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def _tracestate_usable(tracestate: str) -> bool:
    if len(tracestate) > _TRACESTATE_MAX_CHARS:
        return False
    members = [member.strip(" \t") for member in tracestate.split(",")]
    members = [member for member in members if member]
    # compiled at the first traced request (re's cache keeps it), not at every server's start
    return len(members) <= _TRACESTATE_MAX_MEMBERS and all(re.fullmatch(_TRACESTATE_MEMBER, m) for m in members)


def inject() -> Dict[str, str]:
    """The current context as a ``trace`` carrier (empty when nothing is traced)."""
    if not tracing_enabled():
        return {}
    from opentelemetry import propagate

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
        tracer = _current_tracer()
        if tracer is not None:
            from opentelemetry import trace

            self.span = tracer.start_span(method, context=extract(carrier), kind=trace.SpanKind.SERVER,
                                          attributes=rpc_attributes(method))

    def dispatched(self) -> None:
        if self.span is not None:
            from opentelemetry import context, trace

            self.span.set_attribute("rpc.dispatch_offset_ns", int((time.monotonic() - self.received) * 1e9))
            self.token = context.attach(trace.set_span_in_context(self.span))

    def requeued(self) -> None:
        """The dispatch ended without an answer (the request goes to a request thread): the context it attached goes."""
        if self.token is not None:
            from opentelemetry import context

            context.detach(self.token)
            self.token = None

    def finish(self, result: Optional[str], error_code: Optional[int] = None) -> None:
        """End the span: ``result`` as attribute ``result`` (none for a request cut by a disconnect), and a JSON-RPC
        error's ``error_code`` as ``rpc.jsonrpc.error_code``."""
        if self.span is None:
            return
        from opentelemetry import context, trace

        if self.token is not None:
            context.detach(self.token)
            self.token = None
        if result is not None and result != DISCONNECTED:
            self.span.set_attribute("result", result)
        if result == ERROR:
            self.span.set_status(trace.Status(trace.StatusCode.ERROR))
        if error_code is not None:
            self.span.set_attribute("rpc.jsonrpc.error_code", error_code)
        self.span.set_attribute("rpc.response_enqueue_offset_ns", int((time.monotonic() - self.received) * 1e9))
        self.span.end()


@contextmanager
def child_span(name: str) -> Iterator[None]:
    """An INTERNAL span under the current one (spawn, fs helper); no-op when off."""
    with _span(name, "INTERNAL"):
        yield


@contextmanager
def client_span(method: str) -> Iterator[Dict[str, str]]:
    """The CLIENT span of one call (:func:`rpc_attributes`); yields its ``trace`` carrier (:func:`inject`: empty,
    and no span, when tracing is off)."""
    with _span(method, "CLIENT", rpc_attributes(method)):
        yield inject()


def rpc_attributes(method: str) -> Dict[str, str]:
    """A request span's attributes: ``method`` (PROTOCOL.md 12.2, as the reference) and the OpenTelemetry RPC
    semantic conventions' ``rpc.system``, ``rpc.method`` and ``rpc.jsonrpc.version``."""
    return {"method": method, "rpc.system": "jsonrpc", "rpc.method": method, "rpc.jsonrpc.version": "2.0"}


@contextmanager
def client_call(method: str) -> Iterator[Dict[str, str]]:
    """:func:`client_span` of one call, counted in ``exec_server_client_requests_total`` by method and result
    (an exception leaving the block is ``error``): ``Endpoint.call``'s, and the ``initialize`` of a connect or of
    a resume, which go around it."""
    result = ERROR
    try:
        with client_span(method) as carrier:
            yield carrier
        result = SUCCESS
    finally:
        if metrics_enabled():
            client_requests_total.add(1, {"method": method, "result": result})


@contextmanager
def _span(name: str, kind: str, attributes: Optional[Dict[str, Any]] = None) -> Iterator[None]:
    tracer = _current_tracer()
    if tracer is None:
        yield
        return
    from opentelemetry import trace

    with tracer.start_as_current_span(name, kind=trace.SpanKind[kind], attributes=attributes):
        yield


def current_span_context() -> Any:
    """The current span's context, kept for :func:`log_fields` of a later record; None when nothing is traced."""
    if not tracing_enabled():
        return None
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    return span_context if span_context.is_valid else None


def log_fields(span_context: Any = None, **fields: Any) -> Dict[str, Any]:
    """``extra=`` for a log record: the given fields plus the trace and span ids of ``span_context`` (kept by
    :func:`current_span_context` in the request that began what is logged: a process's close, a session's
    detach and expiry happen outside any request), else of the current span."""
    if span_context is None:
        if not tracing_enabled():
            return fields
        from opentelemetry import trace

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
    from opentelemetry import metrics, trace

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
