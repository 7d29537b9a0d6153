"""Tracing and metrics with the OpenTelemetry SDK's in-memory exporters (test-only dependency)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is a test dependency")

from opentelemetry import metrics, trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from conftest import Peer, start_ours, wait_until  # noqa: E402
from exec_server import Client  # noqa: E402
from exec_server.protocol.errors import InternalError  # noqa: E402

EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader()
_installed = []


@pytest.fixture(scope="module", autouse=True)
def sdk():
    if not _installed:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
        _installed.append(True)
    yield


@pytest.fixture
def traced_server():
    running = start_ours()
    EXPORTER.clear()
    yield running
    running.stop()


def spans(name=None):
    return [s for s in EXPORTER.get_finished_spans() if name is None or s.name == name]


def test_client_and_server_spans_share_one_trace(traced_server):
    tracer = trace.get_tracer("tests")
    with Client.connect(traced_server.url, timeout=5) as client:
        with tracer.start_as_current_span("script") as script:
            client.call("environment/status", timeout=5)
    wait_until(lambda: len(spans("environment/status")) == 2)
    client_span = next(s for s in spans("environment/status") if s.kind == trace.SpanKind.CLIENT)
    server_span = next(s for s in spans("environment/status") if s.kind == trace.SpanKind.SERVER)
    trace_id = script.get_span_context().trace_id
    assert client_span.context.trace_id == server_span.context.trace_id == trace_id
    assert client_span.parent.span_id == script.get_span_context().span_id
    assert server_span.parent.span_id == client_span.context.span_id
    assert server_span.attributes["method"] == "environment/status"
    assert server_span.attributes["result"] == "success"
    assert server_span.attributes["rpc.response_enqueue_offset_ns"] >= server_span.attributes["rpc.dispatch_offset_ns"]
    for span in (client_span, server_span):  # the OpenTelemetry RPC semantic conventions' names too
        assert {k: span.attributes[k] for k in ("rpc.system", "rpc.method", "rpc.jsonrpc.version")} == {
            "rpc.system": "jsonrpc", "rpc.method": "environment/status", "rpc.jsonrpc.version": "2.0"}
    assert "rpc.jsonrpc.error_code" not in server_span.attributes


def test_the_initialize_of_connect_and_of_a_resume_are_traced_calls_too(traced_server):
    """The client sent ``initialize`` without a CLIENT span or a carrier: the server's span began a trace of its
    own, apart from the script's (a newcomer's pass); the resume's ``initialize`` had no CLIENT span either."""
    from faultproxy import FaultProxy

    from exec_server import ReconnectPolicy

    tracer = trace.get_tracer("tests")
    proxy = FaultProxy(int(traced_server.url.rsplit(":", 1)[1]))
    try:
        with tracer.start_as_current_span("script") as script:
            with Client.connect(proxy.url, timeout=5, reconnect=ReconnectPolicy(
                    deadline=20.0, initial_backoff=0.02, max_backoff=0.2, connect_timeout=5.0)) as client:
                proxy.reset()  # the connection is cut: the client resumes its session
                client.call("environment/status", timeout=10)
        wait_until(lambda: len(spans("initialize")) == 4, timeout=10)  # two calls, each on both ends
    finally:
        proxy.close()
    trace_id = script.get_span_context().trace_id
    calls = [s for s in spans("initialize") if s.kind == trace.SpanKind.CLIENT]
    answers = [s for s in spans("initialize") if s.kind == trace.SpanKind.SERVER]
    assert len(calls) == len(answers) == 2
    first = min(calls, key=lambda span: span.start_time)
    assert first.context.trace_id == trace_id and first.parent.span_id == script.get_span_context().span_id
    by_id = {span.context.span_id: span for span in calls}
    for answer in answers:  # the resume's runs on the recovery thread: a trace of its own, its two ends linked
        assert by_id[answer.parent.span_id].context.trace_id == answer.context.trace_id
    assert {answer.parent.span_id for answer in answers} == set(by_id)


def test_spawn_child_span_and_error_result(traced_server):
    with Client.connect(traced_server.url, timeout=5) as client:
        client.run(["true"], timeout=10)
        with pytest.raises(InternalError):
            client.start(["no-such-program-xyz"])
    wait_until(lambda: len([s for s in spans("process/start") if s.kind == trace.SpanKind.SERVER]) == 2)
    starts = [s for s in spans("process/start") if s.kind == trace.SpanKind.SERVER]
    assert sorted(s.attributes["result"] for s in starts) == ["error", "success"]
    spawn = spans("process.spawn")
    assert spawn and spawn[0].parent.span_id in {s.context.span_id for s in starts}


def test_invalid_traceparent_starts_a_fresh_trace(traced_server, connect):
    peer = connect(traced_server.url)
    peer.send({"id": 1, "method": "initialize", "params": {"clientName": "t"},
               "trace": {"traceparent": "00-zz-not-valid-01"}})
    assert "result" in peer.recv()
    wait_until(lambda: spans("initialize"))
    assert spans("initialize")[0].parent is None


def test_valid_carrier_parents_the_server_span(traced_server, connect):
    peer = connect(traced_server.url)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    peer.send({"id": 1, "method": "initialize", "params": {"clientName": "t"}, "trace": {"traceparent": parent}})
    assert "result" in peer.recv()
    wait_until(lambda: spans("initialize"))
    span = spans("initialize")[0]
    assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(span.parent.span_id, "016x") == "b7ad6b7169203331"


def test_unrouted_method_span_is_unknown(traced_server, connect):
    peer = connect(traced_server.url)
    peer.request("no/such", {})
    wait_until(lambda: spans("unknown"))
    assert spans("unknown")[0].attributes["result"] == "error"
    assert spans("unknown")[0].attributes["rpc.jsonrpc.error_code"] == -32601


def metric_points(name):
    data = READER.get_metrics_data()
    points = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)
    return points


def value_of(name, **attributes):
    total = 0
    for point in metric_points(name):
        if all(point.attributes.get(k) == v for k, v in attributes.items()):
            total += getattr(point, "value", getattr(point, "count", 0))
    return total


def test_metrics_after_a_known_workload(traced_server):
    before_success = value_of("exec_server_requests_total", method="process/start", result="success")
    before_error = value_of("exec_server_requests_total", method="process/start", result="error")
    before_finished = value_of("exec_server_processes_finished_total", result="success")
    before_connections = value_of("exec_server_connections_total", transport="websocket")
    with Client.connect(traced_server.url, timeout=5) as client:
        for _ in range(3):
            client.run(["true"], timeout=10)
        with pytest.raises(InternalError):
            client.start(["no-such-program-xyz"])
    assert value_of("exec_server_requests_total", method="process/start", result="success") - before_success == 3
    assert value_of("exec_server_requests_total", method="process/start", result="error") - before_error == 1
    assert value_of("exec_server_processes_finished_total", result="success") - before_finished == 3
    assert value_of("exec_server_connections_total", transport="websocket") - before_connections == 1
    assert value_of("exec_server_client_requests_total", method="process/start", result="error") >= 1
    allowed = {"method", "result", "transport"}
    names = ["exec_server_requests_total", "exec_server_request_duration_seconds",
             "exec_server_request_total_duration_seconds", "exec_server_request_queue_duration_seconds",
             "exec_server_processes_finished_total", "exec_server_process_duration_seconds",
             "exec_server_connections_total", "exec_server_connections_active", "exec_server_processes_active",
             "exec_server_client_requests_total"]
    for name in names:
        points = metric_points(name)
        assert points, name
        for point in points:
            assert set(point.attributes) <= allowed, (name, point.attributes)
            assert point.attributes.get("result", "success") in {"success", "error", "disconnected", "terminated"}


NO_SDK = textwrap.dedent("""
    import sys, importlib.abc
    class BlockSdk(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry.sdk" or name.startswith("opentelemetry.sdk."):
                raise ImportError("opentelemetry-sdk hidden for this test")
            return None
    sys.meta_path.insert(0, BlockSdk())
    from exec_server import Client, make_server
    from exec_server.common import telemetry
    with make_server() as server, Client.connect(server.url, timeout=5) as client:
        assert client.run(["echo", "ok"], timeout=10).stdout == b"ok\\n"
    assert not telemetry.tracing_enabled()
    assert "opentelemetry.sdk" not in sys.modules
    print("no-op path ok")
""")


def test_without_the_sdk_everything_is_a_no_op():
    done = subprocess.run([sys.executable, "-c", NO_SDK], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == b"no-op path ok"


SDK_FIRST = textwrap.dedent("""
    # The SDK is configured before the package is imported, as a script would.
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    from exec_server import Client, make_server
    with make_server() as server, Client.connect(server.url, timeout=5) as client:
        assert client.run(["echo", "ok"], timeout=10).stdout == b"ok\\n"
    kinds = {(s.name, s.kind.name) for s in exporter.get_finished_spans()}
    assert ("process/start", "CLIENT") in kinds and ("process/start", "SERVER") in kinds, kinds
    assert ("process.spawn", "INTERNAL") in kinds, kinds
    names = {m.name for rm in reader.get_metrics_data().resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics}
    assert {"exec_server_client_requests_total", "exec_server_requests_total"} <= names, names
    print("sdk-first ok")
""")


def test_an_sdk_configured_before_the_import_is_used():
    done = subprocess.run([sys.executable, "-c", SDK_FIRST], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == b"sdk-first ok"


def _json_documents(text: str):
    """Every JSON object printed by the console exporters, in order."""
    decoder = json.JSONDecoder()
    position = text.find("{")
    while position != -1:
        try:
            document, end = decoder.raw_decode(text, position)
        except ValueError:
            position = text.find("{", position + 1)
            continue
        yield document
        position = text.find("{", end)


def test_server_under_opentelemetry_instrument_exports_spans_and_metrics(tmp_path):
    launcher = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")
    if not os.path.exists(launcher):
        pytest.skip("opentelemetry-instrument (opentelemetry-distro, a test dependency) is not installed")
    env = dict(os.environ, OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="console",
               OTEL_LOGS_EXPORTER="none", OTEL_METRIC_EXPORT_INTERVAL="200", OTEL_SERVICE_NAME="exec-server")
    with open(tmp_path / "stdout", "w+b") as out, open(tmp_path / "stderr", "wb") as err:
        server = subprocess.Popen([launcher, sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0"],
                                  stdout=out, stderr=err, env=env)
        documents = _exported(server, out)
    spans = [d for d in documents if d.get("kind") == "SpanKind.SERVER" and d.get("name") == "initialize"]
    assert spans, (tmp_path / "stderr").read_text()
    assert spans[0]["context"]["trace_id"] == "0x" + TRACE_ID
    assert spans[0]["parent_id"] == "0x" + PARENT_ID
    metric_names = {m["name"] for d in documents for rm in d.get("resource_metrics", ())
                    for sm in rm["scope_metrics"] for m in sm["metrics"]}
    assert "exec_server_requests_total" in metric_names, metric_names


TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def _exported(server, out):
    """Send one traced initialize to the server, stop it, and return what its exporters printed."""
    try:
        wait_until(lambda: out.seek(0) == 0 and b"\n" in out.read(), timeout=30)
        out.seek(0)
        url = out.readline().decode().strip()
        peer = Peer(url)
        reply = peer.request("initialize", {"clientName": "t"},
                             trace={"traceparent": "00-%s-%s-01" % (TRACE_ID, PARENT_ID)})
        assert "result" in reply, reply
        peer.close()
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0
    out.seek(0)
    return list(_json_documents(out.read().decode()))


def test_a_request_the_reader_thread_hands_on_leaves_its_context_behind_on_neither_thread():
    """A small spooled process/read begins on the reader thread; finding the result budget taken, it goes to a
    request thread (``WouldWait``): the context its first dispatch attached must be detached there, on the
    reader thread, else every later request of the connection would run inside that span."""
    import threading
    import time

    from exec_server.common import telemetry

    EXPORTER.clear()
    span = telemetry.ServerRequestSpan("process/read", None, time.monotonic())
    span.dispatched()
    assert trace.get_current_span() is span.span
    span.requeued()
    assert trace.get_current_span() is trace.INVALID_SPAN
    seen = []

    def request_thread():
        span.dispatched()
        seen.append(trace.get_current_span())
        span.finish(telemetry.SUCCESS)
        seen.append(trace.get_current_span())

    worker = threading.Thread(target=request_thread)
    worker.start()
    worker.join(10)
    assert seen == [span.span, trace.INVALID_SPAN]
    assert [s.attributes["result"] for s in spans("process/read")] == ["success"]
