"""Detach and resume (PROTOCOL.md 7), on ours and the reference."""

import base64
import time

import pytest

from conftest import start_params, wait_until

pytestmark = pytest.mark.posix


def test_resume_keeps_processes_and_replays_with_read(connect, any_server):
    first = connect(any_server.url)
    session_id = first.initialize()["sessionId"]
    ticks = "for i in 1 2 3 4 5 6; do echo tick$i; sleep 0.1; done"
    first.call("process/start", start_params("bg", ["/bin/sh", "-c", ticks]))
    first.wait_for(lambda m: m.get("method") == "process/output")
    seen = max(m["params"]["seq"] for m in first.notifications("bg"))
    first.close()
    time.sleep(0.3)
    second = connect(any_server.url)
    result = second.call("initialize", {"clientName": "again", "resumeSessionId": session_id})
    assert result["sessionId"] == session_id
    second.send({"method": "initialized", "params": {}})
    read = wait_until(lambda: (lambda r: r if r["closed"] else None)(
        second.call("process/read", {"processId": "bg", "afterSeq": seen, "waitMs": 1000})), timeout=10)
    replayed = b"".join(base64.b64decode(c["chunk"]) for c in read["chunks"])
    live = b"".join(base64.b64decode(m["params"]["chunk"]) for m in first.notifications("bg")
                    if m["method"] == "process/output")
    assert live + replayed == b"".join(b"tick%d\n" % i for i in range(1, 7))
    assert read["exitCode"] == 0


def test_resume_errors(connect, any_server):
    first = connect(any_server.url)
    session_id = first.initialize()["sessionId"]
    second = connect(any_server.url)
    reply = second.request("initialize", {"clientName": "b", "resumeSessionId": session_id})
    assert reply["error"] == {"code": -32010,
                              "message": "session %s is already attached to another connection" % session_id}
    reply = second.request("initialize", {"clientName": "b", "resumeSessionId": ""})
    assert reply["error"] == {"code": -32600, "message": "unknown session id "}
    assert second.call("initialize", {"clientName": "b"})["sessionId"] != session_id  # connection still usable


def test_notifications_while_detached_are_dropped_not_queued(connect, any_server):
    first = connect(any_server.url)
    session_id = first.initialize()["sessionId"]
    first.call("process/start", start_params("q", ["/bin/sh", "-c", "sleep 0.3; echo while-away"]))
    first.close()
    time.sleep(0.8)
    second = connect(any_server.url)
    second.call("initialize", {"clientName": "again", "resumeSessionId": session_id})
    second.send({"method": "initialized", "params": {}})
    read = second.call("process/read", {"processId": "q"})
    assert read["closed"] and base64.b64decode(read["chunks"][0]["chunk"]) == b"while-away\n"
    time.sleep(0.2)
    second.recv(0.2)
    assert second.notifications("q") == []


def test_a_detach_that_a_resume_overtook_sets_no_expiry():
    """A connection detaches its session, then starts its TTL; a resume between the two used to leave a
    timer behind for the resumed session, which expired it early at its next short detach (review m, F4).
    The timers are fired by hand, in their order, so no sleep decides which one runs first."""
    from exec_server.server.config import ServerConfig
    from exec_server.server.scheduler import Timer
    from exec_server.server.sessions import SessionRegistry

    class HandScheduler:
        def __init__(self):
            self.timers = []

        def call_later(self, delay, callback):
            self.timers.append(Timer(callback))
            return self.timers[-1]

        def fire(self, timer):
            if not timer.cancelled:
                timer.callback()

        def stop(self, timeout):
            pass

    scheduler = HandScheduler()
    registry = SessionRegistry(ServerConfig(detached_session_ttl=0.5), scheduler=scheduler)
    try:
        first, second = object(), object()
        session = registry.create()
        assert session.attach_if_free(first, lambda *texts: None)
        assert session.detach(first)  # the first connection ends ...
        assert registry.resume(session.session_id, second, lambda *texts: None) is session  # ... overtaken
        registry.detached(session)  # ... and now starts a TTL for a session the second one holds
        stale = list(scheduler.timers)
        assert session.detach(second)  # a short blip of the second connection
        registry.detached(session)
        blip = scheduler.timers[-1]
        for timer in stale:  # the stale timer's 0.5 s pass first, within the blip's own
            scheduler.fire(timer)
        third = object()
        assert registry.resume(session.session_id, third, lambda *texts: None) is session
        scheduler.fire(blip)  # the blip's timer, cancelled by the resume, expires nothing either
        assert registry.get(session.session_id) is session and session.holder() is third
    finally:
        registry.close_all()
