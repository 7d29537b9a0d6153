"""HTTP answers of the WebSocket listener (PROTOCOL.md 1.1), on ours and the reference."""

import socket
from urllib.parse import urlsplit

import pytest

from conftest import http_request

UPGRADE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


def port_of(server) -> int:
    return urlsplit(server.url).port


def status_line(response: bytes) -> bytes:
    return response.split(b"\r\n", 1)[0]


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


def headers_of(response: bytes) -> dict:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head)}


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_readyz(any_server, method):
    response = http_request(port_of(any_server), method + b" /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_line(response) == b"HTTP/1.1 200 OK"
    assert body_of(response) == b""


def test_readyz_other_method(any_server):
    response = http_request(port_of(any_server), b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                                 b"Connection: close\r\n\r\n")
    assert status_line(response) == b"HTTP/1.1 405 Method Not Allowed"
    assert headers_of(response)["allow"].replace(" ", "") == "GET,HEAD"


@pytest.mark.parametrize("request_head", [
    UPGRADE + b"Origin: http://example.com\r\n\r\n",
    UPGRADE + b"Origin: null\r\n\r\n",
    b"GET /readyz HTTP/1.1\r\nHost: x\r\nOrigin: http://a\r\nConnection: close\r\n\r\n",
])
def test_origin_is_forbidden(any_server, request_head):
    response = http_request(port_of(any_server), request_head)
    assert status_line(response) == b"HTTP/1.1 403 Forbidden"
    assert body_of(response) == b""


def test_root_without_upgrade(any_server):
    response = http_request(port_of(any_server), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_line(response) == b"HTTP/1.1 400 Bad Request"
    assert headers_of(response)["content-type"] == "text/plain; charset=utf-8"
    assert body_of(response) == b"Connection header did not include 'upgrade'"


@pytest.mark.parametrize("path", [b"/foo", b"/healthz"])
def test_other_paths(any_server, path):
    response = http_request(port_of(any_server), b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_line(response) == b"HTTP/1.1 404 Not Found"


@pytest.mark.parametrize("path", [b"//", b"//?a=b", b"//readyz"])
def test_a_path_of_two_slashes_is_not_the_root(any_server, path):
    """werkzeug reads a target that begins with ``//`` as an authority, so ``//`` was ``/`` and upgraded (101),
    ``//readyz`` answered 200; the reference answers 404, as for any path but ``/`` and ``/readyz``."""
    response = http_request(port_of(any_server), UPGRADE.replace(b"GET / ", b"GET " + path + b" ", 1) + b"\r\n")
    assert status_line(response) == b"HTTP/1.1 404 Not Found"


def test_upgrade_has_no_extensions_or_subprotocol(any_server):
    offered = b"Sec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
    response = http_request(port_of(any_server), UPGRADE + offered)
    assert status_line(response).startswith(b"HTTP/1.1 101")  # the reason phrase varies with h11
    headers = headers_of(response)
    assert "sec-websocket-extensions" not in headers and "sec-websocket-protocol" not in headers


@pytest.mark.parametrize("header", [b"Sec-WebSocket-Protocol: \xff", b"Sec-WebSocket-Extensions: x\xe9"])
def test_an_offer_that_is_not_ascii_is_ignored_like_any_offer(any_server, header):
    """Before authentication: it was a 500 and a logged traceback; the reference upgrades."""
    response = http_request(port_of(any_server), UPGRADE + header + b"\r\n\r\n")
    assert status_line(response).startswith(b"HTTP/1.1 101")


@pytest.mark.parametrize("header, value", [
    (b"Connection: Upgrade", b"Connection: Upgrade, \xff"),  # not ASCII: wsproto's UnicodeDecodeError
    (b"Connection: Upgrade", b"Connection: Upgrade,\x0bkeep"),  # a control character: h11's own error
    (b"Host: 127.0.0.1", b"Host: 127\x00.0.0.1"),
])
def test_a_handshake_header_that_is_not_ascii_or_has_a_control_character_is_a_400(server, caplog, header, value):
    """Before authentication: a control character was a 500 and a logged traceback."""
    raw = UPGRADE.replace(header, value) + b"\r\n"
    response = http_request(port_of(server), raw)
    assert status_line(response) == b"HTTP/1.1 400 Bad Request"
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


def test_accepted_sockets_have_tcp_nodelay(server, connect):
    import psutil
    peer = connect(server.url)
    peer.initialize()
    local_port = peer.ws.sock.getsockname()[1]
    # Find the server side of this connection among our own sockets and check the option through a dup.
    server_side = [c for c in psutil.Process().net_connections(kind="tcp")
                   if c.raddr and c.raddr.port == local_port]
    assert server_side, "server side of the connection not found"
    fd = server_side[0].fd
    dup = socket.socket(fileno=__import__("os").dup(fd))
    try:
        assert dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        dup.close()


@pytest.mark.parametrize("raw", [b"GET /readyz\r\n\r\n", b"GET /\r\n\r\n", b"GET /\r\n", b"GET /readyz\r\n",
                                 b"garbage\r\n\r\n",
                                 b"GET /readyz HTTP/9.9\r\n\r\n", b"GET /readyz HTTP/0.9\r\n\r\n",
                                 b"GET / HTTP/0.9\r\nUpgrade: websocket\r\n\r\n"],
                         ids=["readyz-without-version", "root-without-version", "http-0.9-root-alone",
                              "http-0.9-readyz-alone", "garbage", "http-9.9", "http-0.9",
                              "http-0.9-upgrade"])
def test_a_malformed_request_line_gets_a_status_line(any_server, raw):
    """An HTTP/0.9-style request line is not served (400, as the reference), and an answer to a malformed
    one has a status line and headers, not a bare body."""
    response = http_request(port_of(any_server), raw)
    line = status_line(response)
    assert line.startswith(b"HTTP/1.1 4") or line.startswith(b"HTTP/1.1 505"), response[:200]
    if raw.split(b"\r\n")[0].count(b" ") == 1 or b"HTTP/0." in raw:
        assert line.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("line", [b"GET / HTTP/2.0", b"GET / HTTP/1.2", b"GET /readyz HTTP/1.2", b"GET / HTTP/3",
                                  b"GET /readyz HTTP/2.0", b"GET / HTTP/1.10", b"GET / http/1.1", b"GET / HTTP/1.1x",
                                  b"GET / HTTP/1.1 x"])
def test_a_version_but_http_1_0_and_1_1_is_a_400_without_content(any_server, line):
    """As the reference: http.server answered 505, 426 or even 200 (``/readyz`` over "HTTP/1.2"), or an HTML
    page whose status line repeated the version given."""
    response = http_request(port_of(any_server), line + b"\r\nHost: x\r\n" + UPGRADE[len(b"GET / HTTP/1.1\r\n"):]
                            + b"\r\n")
    assert status_line(response) == b"HTTP/1.1 400 Bad Request"
    assert headers_of(response)["content-length"] == "0" and body_of(response) == b""


@pytest.mark.parametrize("target", [b"http://[::1/", b"http://[/readyz"])
def test_a_request_target_urlsplit_refuses_gets_a_400_and_no_traceback(server, capsys, target):
    """A target the URL parser refuses (an unclosed IPv6 bracket) is a 400 with a status line, as any
    malformed request line: it used to end the connection unanswered, with a traceback on stderr
    (printed, whatever the log level) for every such request of an unauthenticated peer."""
    response = http_request(port_of(server), b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_line(response) == b"HTTP/1.1 400 Bad Request", response[:200]
    assert "Traceback" not in capsys.readouterr().err


def test_a_first_frame_sent_with_the_upgrade_request_is_answered(any_server):
    """A client that sends its first frame in the same write as the upgrade request, without waiting for
    the 101 (RFC 6455 4.1 says it should wait): the frame was read with the request's headers and lost,
    and the connection closed at the initialize timeout.  The reference answers it; so do we."""
    with socket.create_connection(("127.0.0.1", port_of(any_server)), timeout=5) as sock:
        data = eager_initialize(sock)
    assert data.startswith(b"HTTP/1.1 101")
    assert b'{"id":1,"result":{"sessionId"' in data


def eager_initialize(sock) -> bytes:
    """Send the upgrade request and an ``initialize`` frame in one write; what came back, up to its answer."""
    from test_fuzz import _frame

    sock.sendall(UPGRADE + b"\r\n" + _frame(1, b'{"id":1,"method":"initialize","params":{"clientName":"eager"}}'))
    data = b""
    while b'"sessionId"' not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_a_header_block_over_max_header_bytes_is_a_431(server):
    """http.client alone allowed 100 header lines of 64 KiB: ~6 MiB held per connection before any credential
    was checked (128 such connections took a server from 230 to 828 MiB)."""
    from exec_server.server.http_request import MAX_HEADER_BYTES

    line = b"X-Big: " + b"a" * 30000 + b"\r\n"
    count = MAX_HEADER_BYTES // len(line)
    within = b"GET /readyz HTTP/1.1\r\nHost: x\r\n" + line * count + b"Connection: close\r\n\r\n"
    assert len(within) - len(b"GET /readyz HTTP/1.1\r\n") <= MAX_HEADER_BYTES
    assert http_request(port_of(server), within).startswith(b"HTTP/1.1 200 ")
    over = b"GET /readyz HTTP/1.1\r\nHost: x\r\n" + line * (count + 1) + b"Connection: close\r\n\r\n"
    for attempt in range(5):
        assert http_request(port_of(server), over).startswith(b"HTTP/1.1 431 "), attempt


def test_the_header_line_and_request_line_limits(server):
    """README "Limits": 99 header lines (431; http.client counts the empty line that ends them against its 100)
    and a request line of 64 KiB (414), the standard library's."""
    def head(lines: int) -> bytes:
        return b"GET /readyz HTTP/1.1\r\n" + b"X-A: b\r\n" * (lines - 1) + b"Connection: close\r\n\r\n"

    assert http_request(port_of(server), head(99)).startswith(b"HTTP/1.1 200 ")
    assert http_request(port_of(server), head(100)).startswith(b"HTTP/1.1 431 ")
    assert http_request(port_of(server), b"GET /readyz?" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n").startswith(
        b"HTTP/1.1 414 ")
    assert http_request(port_of(server), head(0)).startswith(b"HTTP/1.1 200 ")  # and the server goes on


@pytest.mark.parametrize("versions, answer", [
    (b"Sec-WebSocket-Version: 8, 13\r\n", b"400"),
    (b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Version: 13\r\n", b"400"),
    (b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13\r\n", b"101"),
])
def test_the_websocket_version_is_read_as_the_reference_reads_it(any_server, versions, answer):
    """The first header's value must be 13: ours took any list holding 13, and then wsproto refused it with
    ``Missing header, 'Sec-WebSocket-Version'`` (a version repeated as 13 upgrades on the reference)."""
    request = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + versions + b"\r\n")
    response = http_request(port_of(any_server), request)
    assert response.split(b" ", 2)[1] == answer, response
    if answer == b"400":
        assert response.endswith(b"`Sec-WebSocket-Version` header did not include '13'")


KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
V13 = b"Sec-WebSocket-Version: 13\r\n"
NO_UPGRADE = b"`Upgrade` header did not include 'websocket'"
NO_CONNECTION = b"Connection header did not include 'upgrade'"


@pytest.mark.parametrize("headers, answer", [
    (b"Connection: Upgrade\r\n" + KEY + V13, NO_UPGRADE),
    (b"Connection: Upgrade\r\nUpgrade: foo\r\nSec-WebSocket-Version: 8\r\n", NO_UPGRADE),
    (b"Connection: Upgrade\r\nUpgrade: foo, websocket\r\n" + KEY + V13, NO_UPGRADE),
    (b"Connection: Upgrade\r\nUpgrade: websocket\xff\r\n" + KEY + V13, NO_UPGRADE),
    (b"Upgrade: websocket\r\n" + KEY + V13, NO_CONNECTION),
    (b"Connection: Upgrade, \xff\r\nUpgrade: websocket\r\n" + KEY + V13, NO_CONNECTION),
    (b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n",
     b"`Sec-WebSocket-Key` header missing"),
    (b"Connection: Upgrade\r\nUpgrade: websocket, h2c\r\n" + KEY + V13, NO_UPGRADE),  # one header, not two joined
    (b"Connection: keep-alive\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" + KEY + V13,
     NO_CONNECTION),  # the first header alone is read
    (b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: \r\nSec-WebSocket-Version: 13, 8\r\n",
     b"`Sec-WebSocket-Version` header did not include '13'"),  # an empty key is there (then not RFC 6455's)
    (b"Connection: upgraded\r\nUpgrade: WebSocket\r\n" + KEY + V13, b""),
    (b"Connection: Upgrade, \xc3\xa9\r\nUpgrade: websocket\r\n" + KEY + V13, b""),  # UTF-8 text, not ASCII
    (b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nUpgrade: foo\r\n" + KEY + V13, b""),
])
def test_the_handshake_headers_are_checked_in_the_reference_s_order_with_its_texts(any_server, headers, answer):
    """Connection, then Upgrade (its first value, any case), then the key, then the version: ours checked the
    Upgrade header last and said ``Missing header, 'Upgrade: websocket'``; a 101 (``b""``) carries the accept
    token of RFC 6455 4.2.2."""
    response = http_request(port_of(any_server), b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    if answer:
        assert status_line(response) == b"HTTP/1.1 400 Bad Request"
        assert body_of(response) == answer
    else:
        assert status_line(response).startswith(b"HTTP/1.1 101 ")
        assert headers_of(response)["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3
        assert headers_of(response)["upgrade"].lower() == "websocket"
        assert headers_of(response)["connection"].lower() == "upgrade"


@pytest.mark.parametrize("host, status", [(b"", b"101"), (b"Host: \xff\r\n", b"101"),
                                          (b"Host: caf\xc3\xa9\r\n", b"101")])
def test_an_upgrade_needs_no_host_as_on_the_reference(any_server, host, status):
    """The server reads no Host: ours refused a request without one ("Missing mandatory Host: header") or with
    one that is not ASCII (a codec's error as the text), where the reference upgrades."""
    request = (b"GET / HTTP/1.1\r\n" + host + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert http_request(port_of(any_server), request).split(b" ", 2)[1] == status, host


@pytest.mark.parametrize("key", [b"dGhlIHNhbXBsZSBub25jZQ==", b"x"])
def test_an_upgrade_over_http_1_0_is_a_426_as_by_the_reference(any_server, key):
    """RFC 6455 4.1 asks for HTTP/1.1; ours answered 101 (and then served a WebSocket), and a 400 for a key
    that is not RFC 6455's (ours alone refuses it: after the reference's checks)."""
    request = UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0").replace(b"dGhlIHNhbXBsZSBub25jZQ==", key)
    response = http_request(port_of(any_server), request + b"\r\n")
    assert b" 426 " in status_line(response)
    assert body_of(response) == b"WebSocket request couldn't be upgraded since no upgrade state was present"


READYZ = b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("raw, status", [
    (b"\r\n" + READYZ, b"200"), (b"\n" + READYZ, b"200"), (b"\r\n" * 2000 + READYZ, b"200"),
    (b" \r\n" + READYZ, b"400"),
    (READYZ.replace(b"Host: x", b"Host: a\x01b"), b"400"),  # an upgrade too: test_an_upgrade_needs_no_host...
    (READYZ.replace(b"Host: x", b"X-A: a\x7fb"), b"400"), (READYZ.replace(b"Host: x", b"X-A: a\rb"), b"400"),
    (READYZ.replace(b"Host: x", b"X\x01A: ab"), b"400"), (READYZ.replace(b"Host: x", b"X A: ab"), b"400"),
    (READYZ.replace(b"Host: x", b"XA : ab"), b"400"), (READYZ.replace(b"Host: x", b"X\xe9A: ab"), b"400"),
    (READYZ.replace(b"Host: x", b"X-A: a\r\n b"), b"400"),  # an obsolete line folding
    (READYZ.replace(b"Host: x", b"X-A: a\tb \x80"), b"200"),  # a tab and obs-text may be in a value
], ids=["crlf-first", "lf-first", "2000-crlf-first", "blanks-first", "control-in-host", "del-in-value",
        "cr-in-value", "control-in-name", "space-in-name", "space-before-colon", "non-ascii-name", "obs-fold",
        "tab-and-obs-text"])
def test_empty_lines_before_the_request_and_malformed_fields_are_answered_as_by_the_reference(
        any_server, raw, status):
    """Empty lines before a request line ended the connection unanswered (RFC 9112 2.2: a server should skip
    one at least; the reference skips them), as did a line of blanks (the reference: 400); a header field
    with a control character or a name that is not a token was served, where the reference answers 400
    (a CR in a value even hid the fields after it: email's parser split the line there)."""
    assert http_request(port_of(any_server), raw).split(b" ", 2)[1] == status


def test_empty_lines_before_a_request_line_are_bounded(server):
    """MAX_LEADING_EMPTY_BYTES (64 KiB): past it, 400; a request line of more than 64 KiB after empty
    lines is a 414, as without them."""
    from exec_server.server.http_request import MAX_LEADING_EMPTY_BYTES

    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=10)
    try:
        sock.sendall(b"\r\n" * (MAX_LEADING_EMPTY_BYTES // 2 + 1))
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")  # answered before a request line comes
    finally:
        sock.close()
    assert http_request(port_of(server), b"\r\n" + b"GET /readyz?" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n").startswith(
        b"HTTP/1.1 414 ")
    assert http_request(port_of(server), READYZ).startswith(b"HTTP/1.1 200 ")  # and the server goes on


def test_a_close_before_the_connection_s_loop_begins_comes_after_the_101():
    """Shutdown or an eviction may close a connection admitted but whose loop has not written the 101 yet:
    the Close frame went out before the 101 (an HTTP answer no client can read); the 101 goes first."""
    from exec_server.server.config import ServerConfig
    from exec_server.server.dispatcher import Dispatcher
    from exec_server.server.sessions import SessionRegistry
    from exec_server.server.upgrade import switching_protocols
    from exec_server.server.websocket import WebSocketConnection

    config = ServerConfig()
    registry = SessionRegistry(config)
    ours, peer = socket.socketpair()
    received = b""
    try:
        connection = WebSocketConnection(ours, Dispatcher(registry, config), config, "peer", b"",
                                         switching_protocols("dGhlIHNhbXBsZSBub25jZQ=="))
        connection.close(1013, "exec-server at its connection limit", lock_timeout=1.0)
        connection.run()  # returns at once: the connection is closing
        ours.close()
        peer.settimeout(5)
        while True:
            data = peer.recv(65536)
            if not data:
                break
            received += data
    finally:
        ours.close()
        peer.close()
        registry.close_all(join_timeout=5)
    head, _, frame = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), received[:80]
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    # then one unmasked Close frame (RFC 6455 5.2, 5.5.1): its code and reason
    reason = b"exec-server at its connection limit"
    assert frame == b"\x88" + bytes([2 + len(reason)]) + (1013).to_bytes(2, "big") + reason


@pytest.mark.parametrize("fields, status", [
    (b"Content-Length: abc\r\n", b"400"), (b"Content-Length: -1\r\n", b"400"), (b"Content-Length: +1\r\n", b"400"),
    (b"Content-Length: 1, 1\r\n", b"400"), (b"Content-Length: 1\r\nContent-Length: 2\r\n", b"400"),
    (b"Content-Length: 99999999999999999999999\r\n", b"400"), (b"Transfer-Encoding: gzip\r\n", b"400"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", b"400"),
    (b"Content-Length: 1\r\nContent-Length: 1\r\n", b"200"), (b"Content-Length:  01 \r\n", b"200"),
    (b"Transfer-Encoding: gzip, Chunked\r\n", b"200"), (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"200"),
])
def test_content_that_cannot_be_delimited_is_a_400(any_server, fields, status):
    """RFC 9112 6.3, as the reference: ours answered 200 (and upgraded) whatever the Content-Length said."""
    body = b"0\r\n\r\n" if b"chunked" in fields.lower() else b"x"
    response = http_request(port_of(any_server), b"GET /readyz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n" + body)
    assert response.split(b" ", 2)[1] == status, response[:100]
    upgrade = http_request(port_of(any_server), UPGRADE + fields + b"\r\n")
    assert upgrade.split(b" ", 2)[1] == (b"101" if status == b"200" else b"400"), upgrade[:100]


@pytest.mark.parametrize("request_head, status", [
    (b"GET /readyz HTTP/1.1\r\nHost: x\r\n", b"200"), (UPGRADE, b"101"),
    (b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n", b"405"),
])
def test_expect_100_continue_gets_no_interim_answer(any_server, request_head, status):
    """werkzeug wrote "100 Continue" before the 101, which a WebSocket client takes for the answer (and
    http.server a second one before); nothing reads a request's content here, and the reference writes no
    interim answer."""
    response = http_request(port_of(any_server), request_head + b"Expect: 100-continue\r\n\r\n")
    assert b" 100 " not in response and response.split(b" ", 2)[1] == status
