"""Telemetry against hostile or unusual input, with the OpenTelemetry API alone (no SDK needed)."""

import contextlib
import logging
import subprocess
import sys
import textwrap
import types

import pytest

from exec_server.common import telemetry
from exec_server.protocol.jsonrpc import TraceContext

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
FORGED = "a\n2099-01-01 00:00:00 CRITICAL exec_server.server.auth: token accepted for admin"


@pytest.mark.parametrize("tracestate", [
    FORGED,  # a member that is no W3C member: the propagator logged it, newline and all
    ",".join("k%d=v" % i for i in range(40)),  # more than 32 members
    "k=" + "v" * 9000,  # past 8192 characters
])
def test_a_bad_tracestate_is_dropped_without_a_log_line(tracestate, caplog):
    from opentelemetry import trace

    with caplog.at_level(logging.DEBUG):
        context = telemetry.extract(TraceContext(PARENT, tracestate))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    parent = trace.get_current_span(context).get_span_context()
    assert format(parent.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"  # the traceparent still counts
    assert not parent.trace_state


def test_a_too_long_traceparent_starts_a_fresh_trace_without_a_log_line(caplog):
    from opentelemetry import trace

    with caplog.at_level(logging.DEBUG):
        context = telemetry.extract(TraceContext(PARENT + "-" + "x" * 600, None))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not trace.get_current_span(context).get_span_context().is_valid


def test_a_valid_tracestate_is_kept(caplog):
    from opentelemetry import trace

    context = telemetry.extract(TraceContext(PARENT, "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,t@vendor=x"))
    state = trace.get_current_span(context).get_span_context().trace_state
    assert dict(state) == {"congo": "t61rcWkgMzE", "rojo": "00f067aa0ba902b7", "t@vendor": "x"}


BUCKETS = textwrap.dedent("""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    from exec_server import Client, make_server
    with make_server() as server, Client.connect(server.url, timeout=5) as client:
        for _ in range(5):
            client.call("environment/status", timeout=5)
        client.run(["true"], timeout=10)
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    if m.name.endswith("_seconds"):
                        bounds, counts = list(p.explicit_bounds), list(p.bucket_counts)
                        used = max(i for i, n in enumerate(counts) if n)  # the highest bucket holding a value
                        print(m.name, bounds[used] if used < len(bounds) else "inf", p.max)
""")


def test_duration_histograms_have_buckets_in_seconds():
    """With the SDK's default boundaries (0, 5, 10, ... for milliseconds) every request fell in (0, 5 s]."""
    pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is a test dependency")
    done = subprocess.run([sys.executable, "-c", BUCKETS], capture_output=True, timeout=60, text=True)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert {name for name, _, _ in lines} >= {"exec_server_request_duration_seconds",
                                              "exec_server_process_duration_seconds"}, done.stdout
    for name, upper, longest in lines:  # each value's bucket is at most ~10 times the value, not 5 s wide
        # (a value under the first boundary is in the first bucket: 10 ms for process durations)
        assert upper != "inf" and float(upper) <= max(10 * float(longest), 0.01), (name, upper, longest)


def test_an_api_without_bucket_advisories_still_gets_its_histograms(monkeypatch):
    made = []

    class OldMeter:  # opentelemetry-api 1.20 to 1.22: create_histogram(name, unit, description)
        def create_histogram(self, name, unit="", description=""):
            made.append(name)
            return self

        def record(self, amount, attributes=None):
            made.append(amount)

    monkeypatch.setattr(telemetry, "_current_meter", lambda: OldMeter())
    histogram = telemetry._Instrument("create_histogram", "h_seconds", unit="s",
                                      explicit_bucket_boundaries_advisory=telemetry.REQUEST_BUCKETS)
    histogram.record(0.25)
    assert made == ["h_seconds", 0.25]


class _SpanPerCall:
    """A tracer of the API alone: each span a NonRecordingSpan with fresh valid ids (no SDK, no global provider)."""

    def __init__(self):
        import random

        self._random = random.Random(7)

    def start_span(self, name, context=None, kind=None, attributes=None):
        from opentelemetry import trace

        ids = trace.SpanContext(self._random.getrandbits(128) | 1, self._random.getrandbits(64) | 1, False)
        return trace.NonRecordingSpan(ids)

    @contextlib.contextmanager
    def start_as_current_span(self, name, kind=None, attributes=None):
        from opentelemetry import trace

        with trace.use_span(self.start_span(name), end_on_exit=True):
            yield


def test_close_detach_and_expiry_records_carry_the_ids_of_their_requests_span(monkeypatch, caplog):
    """They are logged outside any request (a reader thread, the connection's end, a timer): they had no ids."""
    from conftest import wait_until
    from exec_server import Client, ServerConfig, make_server

    monkeypatch.setattr(telemetry, "_current_tracer", _SpanPerCall)
    with caplog.at_level(logging.INFO, logger="exec_server"):
        with make_server(config=ServerConfig(detached_session_ttl=0.3)) as server:
            with Client.connect(server.url, timeout=5) as client:
                client.run(["true"], timeout=10)
            wait_until(lambda: any(r.getMessage() == "session expired" for r in caplog.records), timeout=10)
    records = {r.getMessage(): r for r in caplog.records}
    for message in ("process started", "process closed", "session detached", "session expired"):
        assert len(getattr(records[message], "trace_id", "")) == 32, message
        assert len(getattr(records[message], "span_id", "")) == 16, message
    assert records["process closed"].span_id == records["process started"].span_id
    assert records["session expired"].span_id == records["session detached"].span_id


def test_the_initialize_of_a_connect_is_counted_as_a_client_call(monkeypatch):
    from exec_server import Client, make_server

    added = []

    class Meter:  # the API's instruments, recording what they are given
        def __getattr__(self, factory):
            return lambda name, **options: types.SimpleNamespace(
                add=lambda amount, attributes=None: added.append((name, attributes)),
                record=lambda amount, attributes=None: None)

    meter = Meter()
    monkeypatch.setattr(telemetry, "_current_meter", lambda: meter)
    with make_server() as server, Client.connect(server.url, timeout=5) as client:
        client.call("environment/status", timeout=5)
    calls = [attributes for name, attributes in added if name == "exec_server_client_requests_total"]
    assert {"method": "initialize", "result": "success"} in calls, calls
    assert {"method": "environment/status", "result": "success"} in calls, calls
