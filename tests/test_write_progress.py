"""A write's timeout means "the peer took nothing for this long", not "the socket reported no room".

Linux reports a socket writable only once a third of its send buffer is
free; a peer reading slower than that third per timeout was dropped as
stalled although it read all along (an adversarial pass: a client reading
100 KB/s was cut after --send-timeout's 10 s with ~1 MB of a 6 MiB
``fs/readFile`` received).  Each test has a peer that reads a little every
few milliseconds (far under a third of the writer's buffer per timeout) and
one that reads nothing, for the plain write, the gathered write and TLS;
and one that trickles, under ``MIN_SEND_RATE``.
"""

import os
import socket
import ssl
import sys
import threading
import time

import pytest

from exec_server.common import keepalive
from exec_server.common.websocket import send_all, send_frames

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO's acknowledged bytes"),
              pytest.mark.timeout(60)]

#: The writer's timeout (seconds), its send buffer (bytes asked; Linux doubles it) and what it writes.
TIMEOUT = 0.3
SEND_BUFFER = 16 * 1024
PAYLOAD = bytes(range(256)) * 256  # 64 KiB: twice what the send buffer and the reader's window hold
#: The slow reader: this many bytes each pause (~20 KB/s: half a third of the send buffer per timeout).
READ_BYTES, READ_PAUSE = 512, 0.025


def tcp_pair(receive_buffer=4096):
    """(writer, reader): a loopback TCP connection with a small receive window and a fixed send buffer."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        reader.connect(listener.getsockname())
        writer, _ = listener.accept()
    writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    return writer, reader


class SlowReader(threading.Thread):
    """Reads ``size`` bytes every ``pause`` seconds until ``expected`` bytes came (or ``until`` seconds passed)."""

    def __init__(self, sock, expected: float, size=READ_BYTES, pause=READ_PAUSE, until=40.0):
        super().__init__(daemon=True)
        self.sock, self.expected, self.received = sock, expected, bytearray()
        self.size, self.pause, self.until = size, pause, until
        self.sock.settimeout(5)
        self.start()

    def run(self):
        deadline = time.monotonic() + self.until
        try:
            while len(self.received) < self.expected and time.monotonic() < deadline:
                chunk = self.sock.recv(self.size)
                if not chunk:
                    return
                self.received += chunk
                time.sleep(self.pause)
        except OSError:
            pass


def plain_writer(timeout=TIMEOUT, receive_buffer=4096):
    writer, reader = tcp_pair(receive_buffer)
    writer.settimeout(timeout)
    return writer, reader, writer


def tls_writer(pki, receive_buffer=4096):
    """(TLSStream writer, the reader's TCP socket after the handshake, the writer's TCP socket).

    The reader takes the encrypted bytes off TCP itself: a TLS reader would take
    a whole record (16 KiB) at a time, too much at once for a slow peer.
    """
    from exec_server.common.tls import TLSStream
    from exec_server.server.tls import server_context

    writer, reader = tcp_pair(receive_buffer)
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


def write(kind, writer, timeout=TIMEOUT):
    if kind == "sendmsg":
        half = len(PAYLOAD) // 2
        send_frames(writer, [PAYLOAD[:half], PAYLOAD[half:]], timeout)
    else:
        send_all(writer, PAYLOAD, timeout)


def make_ends(request, kind, timeout=TIMEOUT, receive_buffer=4096):
    if kind == "tls":
        writer, reader, tcp = tls_writer(request.getfixturevalue("pki"), receive_buffer)
    else:
        writer, reader, tcp = plain_writer(timeout, receive_buffer)
    request.addfinalizer(reader.close)
    request.addfinalizer(writer.close)
    return kind, writer, reader, tcp


@pytest.fixture(params=["send", "sendmsg", "tls"])
def ends(request):
    return make_ends(request, request.param)


#: The trickle test's timeouts (seconds): long enough that the reader's window opens (and the writer's
#: TCP sees bytes acknowledged) within every one, with the smallest receive buffer; where acknowledged bytes
#: are unknown, long enough that the writer finds room within every one.
TRICKLE_TIMEOUTS = {"acknowledged": 1.0, "unknown": 3.0}


@pytest.fixture(params=[(kind, tcp_info) for kind in ("send", "sendmsg", "tls") for tcp_info in TRICKLE_TIMEOUTS],
                ids="-".join)
def trickle_ends(request, monkeypatch):
    """(kind, writer, reader, timeout); with ``unknown``, the kernel's acknowledged bytes are hidden."""
    kind, tcp_info = request.param
    if tcp_info == "unknown":
        monkeypatch.setattr(keepalive, "bytes_acked", lambda sock: None)
    timeout = TRICKLE_TIMEOUTS[tcp_info]
    return make_ends(request, kind, timeout, receive_buffer=1)[:3] + (timeout,)


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


def test_a_peer_that_trickles_fails_the_write_within_a_few_timeouts(trickle_ends):
    """A peer taking ~2.5 KB/s, under MIN_SEND_RATE (4 KiB/s), with bytes acknowledged within every timeout:
    before, any acknowledged byte kept the write going, so it held its send lock (and a result's budget) for
    as long as the peer liked; here it gave up only when the reader stopped, after 20 s.  Where the kernel
    does not say what was acknowledged, the bytes the socket accepted are judged instead (before: the same)."""
    kind, writer, reader, timeout = trickle_ends
    trickle = SlowReader(reader, float("inf"), size=256, pause=0.1, until=20.0)
    start = time.monotonic()
    with pytest.raises(socket.timeout):
        write(kind, writer, timeout)
    assert time.monotonic() - start < 4 * timeout
    assert trickle.is_alive()  # still reading when the write gave up
    reader.close()
    trickle.join(10)
