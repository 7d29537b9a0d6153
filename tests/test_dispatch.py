"""The dispatcher without sockets: a list is the connection's sink."""

import json
import logging
import sys
import time

import pytest

from conftest import wait_until
from exec_server.server.config import ServerConfig
from exec_server.server.dispatcher import Dispatcher
from exec_server.protocol.errors import ProtocolViolation
from exec_server.server.sessions import SessionRegistry


@pytest.fixture
def pair():
    registry = SessionRegistry(ServerConfig())
    dispatcher = Dispatcher(registry)
    sent = []
    connection = dispatcher.open_connection(lambda *texts: sent.extend(texts), "prefix: ")
    yield dispatcher, connection, sent
    connection.close()
    registry.close_all()


def replies(sent):
    return [json.loads(text) for text in sent]


def handshake(connection):
    connection.receive('{"id":1,"method":"initialize","params":{"clientName":"mem"}}')
    connection.receive('{"method":"initialized"}')


def test_parse_error_uses_transport_prefix(pair):
    _dispatcher, connection, sent = pair
    connection.receive("{nope")
    reply = replies(sent)[0]
    assert reply["id"] == -1 and reply["error"]["code"] == -32600
    assert reply["error"]["message"].startswith("prefix: ")


def test_unexpected_exception_becomes_internal_error(pair, caplog):
    dispatcher, connection, sent = pair

    def broken(ctx, params):
        raise RuntimeError("secret detail")

    dispatcher.methods["environment/status"] = ("environment status", broken)
    handshake(connection)
    with caplog.at_level(logging.ERROR, logger="exec_server.server.connection"):
        connection.receive('{"id":2,"method":"environment/status"}')
        wait_until(lambda: len(sent) == 2)
    error = replies(sent)[1]
    assert error == {"error": {"code": -32603, "message": "internal error"}, "id": 2}
    assert "secret detail" in caplog.text  # logged on the server, never sent


def test_response_from_client_is_a_violation(pair):
    _dispatcher, connection, _sent = pair
    with pytest.raises(ProtocolViolation):
        connection.receive('{"id":5,"result":{}}')


def test_closed_connection_sends_nothing(pair):
    _dispatcher, connection, sent = pair
    handshake(connection)
    connection.receive('{"id":2,"method":"process/start","params":{"processId":"s","argv":["sleep","30"],'
                       '"cwd":"file:///tmp","env":{},"tty":false}}')
    wait_until(lambda: len(sent) == 2)
    connection.receive('{"id":3,"method":"process/read","params":{"processId":"s","waitMs":30000}}')
    time.sleep(0.1)
    count = len(sent)
    connection.close()
    time.sleep(0.3)
    assert len(sent) == count  # the aborted long poll got no reply, no notification went out


def test_method_table_names_a_handler_for_every_method():
    """Each lazily loaded entry resolves to its family's function; the fs path methods are fs_helper's."""
    from fs_helper.operations import OPERATIONS

    from exec_server.server.handlers import FS_PATH_METHODS, METHODS, LazyHandler
    from exec_server.server.handlers import fs, process

    assert set(FS_PATH_METHODS) == set(OPERATIONS)
    lazy = {method: handler for method, (_family, handler) in METHODS.items() if isinstance(handler, LazyHandler)}
    assert set(lazy) == set(fs.HANDLERS) | set(process.HANDLERS)
    for method, handler in lazy.items():
        family = fs if method.startswith("fs/") else process
        assert handler.resolve() is family.HANDLERS[method], method


def _open_fds_to(path):
    import os
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + name) == str(path):
                found.append(name)
        except OSError:
            pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
@pytest.mark.parametrize("earlier_handle", [False, True])
def test_fs_open_finishing_after_the_connection_closed_leaves_no_descriptor(pair, tmp_path, earlier_handle):
    """An fs/open still running when its connection ends must not open a handle nobody can close."""
    dispatcher, connection, sent = pair
    target = tmp_path / "file"
    target.write_bytes(b"data")
    other = tmp_path / "other"
    other.write_bytes(b"x")
    handshake(connection)
    if earlier_handle:  # the connection's handles exist before it closes
        connection.receive('{"id":2,"method":"fs/open","params":{"handleId":"a","path":"file://%s"}}' % other)
        wait_until(lambda: len(sent) == 2)
        assert "error" not in replies(sent)[1]
    family, real_open = dispatcher.methods["fs/open"]
    outcomes = []

    def open_after_close(ctx, params, **bound):  # bound: what the connection registered as it arrived
        connection.close()  # the client went away while this request ran
        try:
            outcomes.append(real_open(ctx, params, **bound))
        except Exception as exc:
            outcomes.append(exc)
            raise

    dispatcher.methods["fs/open"] = (family, open_after_close)
    connection.receive('{"id":3,"method":"fs/open","params":{"handleId":"b","path":"file://%s"}}' % target)
    wait_until(lambda: outcomes)
    assert getattr(outcomes[0], "code", None) == -32600
    assert _open_fds_to(target) == [] and _open_fds_to(other) == []


def test_a_pooled_request_no_thread_can_run_is_refused_once_and_released(pair, monkeypatch, caplog):
    """Where no request thread can start (a task limit, no memory for a stack), ThreadPoolExecutor.submit
    raises after queueing the request: it is answered -32001 at once, and the pool thread a later request
    starts neither runs nor answers it again; the admission comes back to zero."""
    import threading

    from exec_server.server.connection import REQUEST_THREAD_PREFIX

    _dispatcher, connection, sent = pair
    handshake(connection)
    starting = threading.Thread.start
    refusing = [True]

    def start(thread):
        if refusing[0] and thread.name.startswith(REQUEST_THREAD_PREFIX):
            raise RuntimeError("can't start new thread")
        starting(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    read = '{"id":%d,"method":"process/read","params":{"processId":"none","waitMs":50}}'
    with caplog.at_level(logging.WARNING, logger="exec_server.server.connection"):
        connection.receive(read % 10)
    assert replies(sent)[-1] == {"id": 10, "error": {"code": -32001, "message": "Server overloaded; retry later."}}
    assert "can't start new thread" in caplog.text
    assert connection.wait_requests(0)
    refusing[0] = False
    connection.receive(read % 11)
    wait_until(lambda: any(reply.get("id") == 11 for reply in replies(sent)))
    assert connection.wait_requests(5)
    time.sleep(0.1)
    assert [reply.get("id") for reply in replies(sent)[1:]] == [10, 11]
    assert replies(sent)[-1]["error"]["code"] == -32600  # unknown process: run by the pool thread


def test_a_slow_fs_close_no_thread_can_run_closes_on_the_connections_thread(pair, monkeypatch, tmp_path):
    """An atomic replacement's fs/close runs on a thread of its own; where none can start it runs where it
    arrived, and the file is committed (its handle was taken already: refusing would lose it)."""
    import threading

    _dispatcher, connection, sent = pair
    handshake(connection)
    target = tmp_path / "out"
    connection.receive('{"id":2,"method":"fs/open","params":{"handleId":"h","path":"file://%s","mode":"replace",'
                       '"atomic":true}}' % target)
    wait_until(lambda: len(sent) == 2)
    connection.receive('{"id":3,"method":"fs/writeBlock","params":{"handleId":"h","offset":0,"chunk":"aGk="}}')
    wait_until(lambda: len(sent) == 3)
    assert "error" not in replies(sent)[2] and not target.exists()
    starting = threading.Thread.start

    def start(thread):
        if thread.name.endswith("-fs-close"):
            raise RuntimeError("can't start new thread")
        starting(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    connection.receive('{"id":4,"method":"fs/close","params":{"handleId":"h"}}')
    assert replies(sent)[3] == {"id": 4, "result": {}}  # answered before receive returned
    assert target.read_bytes() == b"hi"
