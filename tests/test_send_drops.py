"""What the client was sending when its connection dropped: applied once, or reported, never silently lost.

From an adversarial pass (/work/notes/review-send-drops-2026-12-05.md): a start made while the client
was reconnecting returned a handle that had already failed; a write or start whose answer was lost
raised RequestOutcomeUnknown although sending it again is safe; ``run`` left its child running after
such an error; a retried ``RemoteFile.close`` returned as if it had committed.
"""

import os
import threading
import time

import pytest

from conftest import running_descendants, wait_until
from exec_server import Client, RequestOutcomeUnknown
from exec_server.client.process import RemoteProcess
from test_recovery import FAST, proxy_to  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.posix, pytest.mark.timeout(120)]


def recovering(client: Client, proxy) -> None:
    """Cut the link and refuse reconnects for 0.5 s: the client is ``recovering`` when this returns."""
    proxy.refuse(True)
    proxy.cut()
    wait_until(lambda: client.state == "recovering", timeout=5)
    threading.Timer(0.5, proxy.refuse, args=(False,)).start()


def test_a_start_made_while_recovering_returns_a_working_handle(any_server, proxy_to):  # noqa: F811
    proxy = proxy_to(any_server.url)
    with Client.connect(proxy.url, timeout=5, reconnect=FAST) as client:
        earlier = client.start(["/bin/sh", "-c", "sleep 0.3; echo earlier"])
        recovering(client, proxy)
        process = client.start(["/bin/sh", "-c", "echo started"], timeout=20)  # waits for the recovery
        assert process.communicate(timeout=20) == (b"started\n", b"")  # failed: "gone after reconnecting"
        assert process.returncode == 0
        assert earlier.communicate(timeout=20)[0] == b"earlier\n"
        recovering(client, proxy)
        done = client.run(["/bin/sh", "-c", "echo ran"], timeout=20)
        assert done.stdout == b"ran\n" and done.returncode == 0


def test_a_write_whose_answer_was_lost_is_sent_again_and_applied_once(any_server, proxy_to, tmp_path):  # noqa: F811
    proxy = proxy_to(any_server.url)
    received = tmp_path / "stdin"
    with Client.connect(proxy.url, timeout=5, reconnect=FAST) as client:
        process = client.start(["/bin/sh", "-c", 'cat > "$0"', str(received)], stdin=True)
        proxy.hold_downstream(True)  # the server gets the write; its answer waits in the proxy
        errors = []

        def write():
            try:
                process.write(b"exactly once\n", timeout=20)
            except Exception as exc:
                errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        wait_until(lambda: received.exists() and received.read_bytes() == b"exactly once\n", timeout=10)
        proxy.refuse(True)
        proxy.cut()  # the answer is lost with the connection
        proxy.hold_downstream(False)
        proxy.refuse(False)
        writer.join(20)
        assert not writer.is_alive() and errors == []  # was RequestOutcomeUnknown
        process.write(b"then more\n", timeout=10)
        wait_until(lambda: received.read_bytes() == b"exactly once\nthen more\n", timeout=10)
        time.sleep(0.2)
        assert received.read_bytes() == b"exactly once\nthen more\n"  # the resent write was not applied again
        process.terminate()
        process.wait(timeout=10)


def test_a_start_whose_answer_was_lost_is_not_started_twice(memory_server, tmp_path):
    server = memory_server()
    log = tmp_path / "starts"
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        outcome = server.lose_answer(  # the server starts it; the answer never reaches us
            lambda: client.start(["/bin/sh", "-c", 'echo start >> "$0"; echo out', str(log)], timeout=20),
            '"sandboxType"')
        assert len(outcome) == 1 and isinstance(outcome[0], RemoteProcess), outcome  # was RequestOutcomeUnknown
        handles = outcome
        assert handles[0].communicate(timeout=10) == (b"out\n", b"")
        assert sum(t.seen.count("process/start") for t in server.transports) == 2  # sent again ...
        assert log.read_bytes() == b"start\n"  # ... and started once
        assert handles[0].sandbox_type == "none"


def test_a_start_that_never_arrived_is_sent_again(any_server, proxy_to):  # noqa: F811
    proxy = proxy_to(any_server.url)
    with Client.connect(proxy.url, timeout=5, reconnect=FAST) as client:
        proxy.blackhole()  # the start is dropped on its way
        handles = []
        starter = threading.Thread(target=lambda: handles.append(client.start(["echo", "once"], timeout=20)))
        starter.start()
        time.sleep(0.3)
        assert not handles
        proxy.reset()  # then the connection ends
        starter.join(20)
        assert len(handles) == 1 and handles[0].communicate(timeout=10) == (b"once\n", b"")
        assert proxy.accepted >= 2  # through a reconnect (once, under load, the reference needed a second one)


def test_a_close_retried_after_an_unknown_outcome_raises_again(server, tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"old")
    with Client.connect(server.url, timeout=5) as client:
        fs = client.fs
        handle = fs.open(str(target), "replace", atomic=True)
        handle.write(b"new")
        call = fs._call

        def dropped(method, params):
            if method == "fs/close":
                raise RequestOutcomeUnknown("fs/close: the connection dropped before the answer")
            return call(method, params)

        fs._call = dropped  # the close never reaches the server, as when the link drops first
        with pytest.raises(RequestOutcomeUnknown):
            handle.close()
        with pytest.raises(RequestOutcomeUnknown):  # was a silent success
            handle.close()
        handle.__exit__(None, None, None)  # a with block's end after it: no second error
    assert target.read_bytes() == b"old"


@pytest.mark.parametrize("where", ["waiting for the start's answer", "collecting the output"])
def test_run_kills_its_child_on_any_error_not_only_a_timeout(server, monkeypatch, where):
    from exec_server.client import api

    sleeper = ["sleep", "61.5"]
    real_start_once = api.start_once

    def started():
        wait_until(lambda: running_descendants(os.getpid(), sleeper), timeout=10)
        raise KeyboardInterrupt

    if where == "collecting the output":
        monkeypatch.setattr(RemoteProcess, "communicate", lambda self, timeout=None: started())
    else:  # started; ^C comes just as the answer does
        monkeypatch.setattr(api, "start_once", lambda *args: (real_start_once(*args), started()))
    with Client.connect(server.url, timeout=5) as client:
        with pytest.raises(KeyboardInterrupt):
            client.run(sleeper, timeout=30)
        assert wait_until(lambda: not running_descendants(os.getpid(), sleeper), timeout=10)  # was left running


def test_a_start_with_my_id_whose_answer_was_lost_is_not_taken_for_an_older_one(memory_server):
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        old = client.start(["echo", "old"], process_id="job")
        assert old.communicate(timeout=10)[0] == b"old\n"
        client.forget(old)  # the server still retains it (closed) for a while
        outcome = server.lose_answer(lambda: client.start(["echo", "new"], process_id="job", timeout=20),
                                     "already exists")  # the answer is lost
        assert len(outcome) == 1 and isinstance(outcome[0], RequestOutcomeUnknown), outcome  # was the old one
        assert "process job" in str(outcome[0])
