"""A large response (a file's base64, spooled output) reaches the wire in pieces, never whole in memory.

Over WebSocket it is one text message of many frames (RFC 6455 fragmentation)
of LARGE_MESSAGE_CHARS characters each; over stdio one line written piece by
piece.  The bytes are the same as ever: checked here against the file.
"""

import base64
import json
import os
import random
import socket
import subprocess
import sys
import threading
from urllib.parse import urlsplit

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request, TextMessage

from exec_server.protocol.jsonrpc import Response, encode, encode_reply
from exec_server.protocol.wire import LARGE_MESSAGE_CHARS, RawJson

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024


@pytest.mark.parametrize("seed", range(20))
def test_fragments_are_the_text_in_order_and_of_the_size_asked(seed):
    chooser = random.Random(seed)
    parts = ["".join(chooser.choice("ab\u20acx") for _ in range(chooser.randrange(0, 40)))
             for _ in range(chooser.randrange(0, 12))]
    size = chooser.randrange(1, 30)
    pieces = list(RawJson(parts).fragments(size))
    assert "".join(pieces) == "".join(parts)
    assert all(len(piece) == size for piece in pieces[:-1])
    assert all(0 < len(piece) <= size for piece in pieces)


def test_only_a_large_response_stays_in_pieces():
    small = Response(7, RawJson(['{"a":"', "x" * 10, '"}']))
    assert encode_reply(small) == encode(small) == '{"id":7,"result":{"a":"xxxxxxxxxx"}}'
    large = Response("r", RawJson(['{"dataBase64":"', "A" * LARGE_MESSAGE_CHARS, '"}']))
    reply = encode_reply(large)
    assert isinstance(reply, RawJson) and str(reply) == encode(large)


class RawClient:
    """A wsproto client that records every frame of each text message it receives."""

    def __init__(self, url: str):
        self.sock = socket.create_connection(("127.0.0.1", urlsplit(url).port), timeout=20)
        self.protocol = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.protocol.send(Request(host="127.0.0.1", target="/")))
        self.events = []
        while not any(isinstance(event, AcceptConnection) for event in self.events):
            self._read()
        self.events = [event for event in self.events if not isinstance(event, AcceptConnection)]

    def _read(self):
        data = self.sock.recv(1 << 20)
        assert data, "connection closed"
        self.protocol.receive_data(data)
        self.events.extend(self.protocol.events())

    def send(self, message):
        self.sock.sendall(self.protocol.send(Message(data=json.dumps(message))))

    def message(self):
        """(text of the next whole message, how many frames carried it)."""
        parts, frames = [], 0
        while True:
            while not self.events:
                self._read()
            event = self.events.pop(0)
            if not isinstance(event, TextMessage):
                continue
            parts.append(event.data)
            frames += event.frame_finished
            if event.message_finished:
                return "".join(parts), frames


def test_a_large_file_arrives_as_one_message_of_many_frames(server, tmp_path):
    data = os.urandom(3 * MIB)
    (tmp_path / "big").write_bytes(data)
    client = RawClient(server.url)
    try:
        client.send({"id": 1, "method": "initialize", "params": {"clientName": "frames"}})
        assert "sessionId" in json.loads(client.message()[0])["result"]
        client.send({"method": "initialized", "params": {}})
        client.send({"id": 2, "method": "fs/readFile", "params": {"path": "file://%s/big" % tmp_path}})
        text, frames = client.message()
        assert base64.b64decode(json.loads(text)["result"]["dataBase64"]) == data
        assert frames == -(-len(text) // LARGE_MESSAGE_CHARS)  # 4 MiB of base64: 4 frames and a bit (before: 1)
        client.send({"id": 3, "method": "environment/status"})
        assert json.loads(client.message()[0]) == {"id": 3, "result": {"status": "ready"}}  # the stream goes on
    finally:
        client.sock.close()


def test_a_large_file_over_stdio_is_one_line(tmp_path):
    data = os.urandom(3 * MIB)
    (tmp_path / "big").write_bytes(data)
    child = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "stdio"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        child.stdin.write(b'{"id":1,"method":"initialize","params":{"clientName":"s"}}\n{"method":"initialized"}\n')
        child.stdin.write(json.dumps({"id": 2, "method": "fs/readFile",
                                      "params": {"path": "file://%s/big" % tmp_path}}).encode() + b"\n")
        child.stdin.write(b'{"id":3,"method":"environment/status"}\n')
        child.stdin.flush()
        replies = {}
        for _ in range(3):
            reply = json.loads(child.stdout.readline())
            replies[reply["id"]] = reply
        assert base64.b64decode(replies[2]["result"]["dataBase64"]) == data
        assert replies[3]["result"] == {"status": "ready"}
    finally:
        child.kill()
        child.wait(10)
        child.stdin.close()
        child.stdout.close()


def test_the_client_sends_a_large_message_in_frames_of_a_mebibyte():
    from exec_server.common.websocket import LARGE_TEXT_CHARS, FrameWriter

    client_side, server_side = socket.socketpair()
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="x", target="/")))
    client.receive_data(server.send(AcceptConnection()))
    list(server.events()), list(client.events())
    text = "\u20ac" + "a" * (2 * LARGE_TEXT_CHARS + 5)
    writer = FrameWriter(client_side, client, write_timeout=10)
    sender = threading.Thread(target=writer.send_texts, args=(text,))
    sender.start()
    parts, frames, finished = [], 0, False
    server_side.settimeout(10)
    while not finished:
        server.receive_data(server_side.recv(1 << 20))
        for event in server.events():
            parts.append(event.data)
            frames += event.frame_finished
            finished = event.message_finished
    sender.join(10)
    client_side.close()
    server_side.close()
    assert "".join(parts) == text
    assert frames == 3  # before: 1


def test_a_request_over_the_servers_limit_raises_request_too_large_and_the_session_goes_on(tmp_path):
    """Against a server that does not advertise its limit (the reference): the server closes the connection
    with 1009.  It raised RequestOutcomeUnknown ("may or may not have been applied"), though nothing was
    written."""
    from exec_server import Client, RequestTooLarge
    from exec_server.server.config import ServerConfig
    from conftest import start_ours

    running = start_ours(ServerConfig(max_message_bytes=MIB))
    try:
        with Client.connect(running.url) as client:
            client._endpoint.max_request_bytes = None  # as from a server without maxMessageBytes
            reader = client.start(["sh", "-c", "read line; echo got $line"], stdin=True)
            with pytest.raises(RequestTooLarge) as caught:
                client.fs.write_file(str(tmp_path / "big"), b"x" * MIB)  # 1.33 MiB of base64
            assert str(caught.value).startswith("fs/writeFile: the server closed the connection with 1009 (message "
                                                "too big) on this 1398")
            assert str(caught.value).endswith('it was not applied (write a large file in parts: '
                                              'fs.open(path, "replace"))')
            assert not (tmp_path / "big").exists()
            reader.write(b"on\n", close_stdin=True)  # waits for the recovery: the session and its process go on
            assert reader.communicate(timeout=20)[0] == b"got on\n"
            client.fs.write_file(str(tmp_path / "small"), b"y" * 1000)
            assert (tmp_path / "small").read_bytes() == b"y" * 1000
            # reconnected (a resume that meets the old connection not yet detached, -32010, takes one more)
            assert client.connection_number >= 2
    finally:
        running.stop()


@pytest.mark.parametrize("transport", ["websocket", "stdio"])
def test_a_request_over_the_advertised_limit_is_refused_unsent(tmp_path, transport):
    """The server advertises maxMessageBytes: the client refuses a larger request before sending it, with no
    reconnect (a 1009 Close cost one, and failed the mutations in flight with RequestOutcomeUnknown; over
    stdio the request waited for its timeout), and a request within the limit still goes."""
    from exec_server import Client, RequestTooLarge
    from exec_server.server.config import ServerConfig
    from conftest import start_ours

    running = None
    if transport == "websocket":
        running = start_ours(ServerConfig(max_message_bytes=MIB))
        client = Client.connect(running.url, timeout=10)
    else:
        client = Client.spawn([sys.executable, "-m", "exec_server", "--listen", "stdio", "--max-message-bytes",
                               str(MIB)], timeout=30)
    try:
        assert client.extensions["maxMessageBytes"] == MIB
        reader = client.start(["sh", "-c", "read line; echo got $line"], stdin=True)
        with pytest.raises(RequestTooLarge) as caught:
            client.fs.write_file(str(tmp_path / "big"), b"x" * MIB)  # 1.33 MiB of base64
        assert str(caught.value).startswith("fs/writeFile: this 1398")
        assert str(caught.value).endswith("request is over the server's message limit (maxMessageBytes %d); it "
                                          "was not sent (write a large file in parts: fs.open(path, \"replace\"))"
                                          % MIB)
        with pytest.raises(RequestTooLarge, match=r"^process/write: .* \(write stdin in smaller pieces"):
            reader.write(b"y" * MIB)
        assert not (tmp_path / "big").exists()
        assert client.connection_number == 1 and client.state == "connected"
        reader.write_all(b"o" * (2 * MIB) + b"n\n", close_stdin=True)  # in pieces of 1 MiB: under it as base64?
        assert reader.communicate(timeout=30)[0] == b"got " + b"o" * (2 * MIB) + b"n\n"
        client.fs.write_file(str(tmp_path / "small"), b"y" * (MIB // 2))  # within the limit
        assert (tmp_path / "small").read_bytes() == b"y" * (MIB // 2)
        assert client.connection_number == 1
    finally:
        client.close()
        if running is not None:
            running.stop()


def test_the_request_size_check_counts_utf8_bytes_against_the_limit():
    from exec_server.client.interfaces import RequestTooLarge, check_request_size

    check_request_size("m", "a" * 100, 100)
    check_request_size("m", "a" * 10 ** 6, None)  # no limit advertised
    with pytest.raises(RequestTooLarge, match="this 101-byte request"):
        check_request_size("m", "a" * 101, 100)
    check_request_size("m", "\u20ac" * 33 + "a", 100)  # 3 bytes each in UTF-8: 100
    with pytest.raises(RequestTooLarge, match="this 102-byte request"):
        check_request_size("m", "\u20ac" * 34, 100)
