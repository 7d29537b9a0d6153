"""The dispatcher without sockets: a list is the connection's sink."""

import json
import logging
import time

import pytest

from conftest import wait_until
from exec_server.server.config import ServerConfig
from exec_server.server.connection import Dispatcher
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
