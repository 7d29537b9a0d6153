"""A write's timeout means "the peer took nothing for this long", not "the socket reported no room".

Linux reports a socket writable only once a third of its send buffer is
free; a peer reading slower than that third per timeout was dropped as
stalled although it read all along (an adversarial pass: a client reading
100 KB/s was cut after --send-timeout's 10 s with ~1 MB of a 6 MiB
``fs/readFile`` received).  Each test has a peer that reads a little every
few milliseconds (far under a third of the writer's buffer per timeout) and
one that reads nothing, for the plain write, the gathered write and TLS.
"""

import os
import socket
import ssl
import sys
import threading
import time

import pytest

from exec_server.common.websocket import send_all, send_frames

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO's acknowledged bytes"),
              pytest.mark.timeout(60)]

#: The writer's timeout (seconds), its send buffer (bytes asked; Linux doubles it) and what it writes.
TIMEOUT = 0.3
SEND_BUFFER = 16 * 1024
PAYLOAD = bytes(range(256)) * 256  # 64 KiB: twice what the send buffer and the reader's window hold
#: The slow reader: this many bytes each pause (~20 KB/s: half a third of the send buffer per timeout).
READ_BYTES, READ_PAUSE = 512, 0.025


def tcp_pair():
    """(writer, reader): a loopback TCP connection with a small receive window and a fixed send buffer."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(listener.getsockname())
        writer, _ = listener.accept()
    writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    return writer, reader


class SlowReader(threading.Thread):
    """Reads READ_BYTES every READ_PAUSE seconds until ``expected`` bytes came (or 40 s passed)."""

    def __init__(self, sock, expected: float):
        super().__init__(daemon=True)
        self.sock, self.expected, self.received = sock, expected, bytearray()
        self.sock.settimeout(5)
        self.start()

    def run(self):
        deadline = time.monotonic() + 40
        try:
            while len(self.received) < self.expected and time.monotonic() < deadline:
                chunk = self.sock.recv(READ_BYTES)
                if not chunk:
                    return
                self.received += chunk
                time.sleep(READ_PAUSE)
        except OSError:
            pass


def plain_writer():
    writer, reader = tcp_pair()
    writer.settimeout(TIMEOUT)
    return writer, reader, writer


def tls_writer(pki):
    """(TLSStream writer, the reader's TCP socket after the handshake, the writer's TCP socket).

    The reader takes the encrypted bytes off TCP itself: a TLS reader would take
    a whole record (16 KiB) at a time, too much at once for a slow peer.
    """
    from exec_server.common.tls import TLSStream
    from exec_server.server.tls import server_context

    writer, reader = tcp_pair()
    server_tls = server_context(str(pki.server_cert), str(pki.server_key)).wrap_socket(
        writer, server_side=True, do_handshake_on_connect=False)
    client_context = ssl.create_default_context(cafile=str(pki.ca))
    client_tls = client_context.wrap_socket(reader, server_hostname="127.0.0.1", do_handshake_on_connect=False)
    handshake = threading.Thread(target=server_tls.do_handshake, daemon=True)
    handshake.start()
    client_tls.do_handshake()
    handshake.join(5)
    raw = socket.socket(fileno=os.dup(client_tls.fileno()))
    client_tls.close()
    return TLSStream(server_tls), raw, writer


def write(kind, writer):
    if kind == "sendmsg":
        half = len(PAYLOAD) // 2
        send_frames(writer, [PAYLOAD[:half], PAYLOAD[half:]], TIMEOUT)
    else:
        send_all(writer, PAYLOAD, TIMEOUT)


@pytest.fixture(params=["send", "sendmsg", "tls"])
def ends(request):
    kind = request.param
    writer, reader, tcp = tls_writer(request.getfixturevalue("pki")) if kind == "tls" else plain_writer()
    yield kind, writer, reader, tcp
    reader.close()
    writer.close()


def test_a_peer_reading_slowly_gets_every_byte(ends):
    kind, writer, reader, _ = ends
    slow = SlowReader(reader, float("inf") if kind == "tls" else len(PAYLOAD))  # TLS: to the end
    start = time.monotonic()
    write(kind, writer)  # before: socket.timeout after ~TIMEOUT once the buffer was full
    took = time.monotonic() - start
    if kind == "tls":
        writer.close()  # the reader sees the end after the last record
    slow.join(45)
    if kind == "tls":  # encrypted: every byte and the records' overhead
        assert len(slow.received) >= len(PAYLOAD)
    else:
        assert bytes(slow.received) == PAYLOAD
    assert took > 2 * TIMEOUT  # the write did wait for the slow peer more than one timeout in all


def test_a_peer_that_reads_nothing_fails_the_write_after_the_timeout(ends):
    kind, writer, _, tcp = ends
    start = time.monotonic()
    with pytest.raises(socket.timeout):
        write(kind, writer)
    assert time.monotonic() - start < 10 * TIMEOUT
