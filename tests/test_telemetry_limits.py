"""Telemetry against hostile or unusual input, with the OpenTelemetry API alone (no SDK needed)."""

import logging

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
