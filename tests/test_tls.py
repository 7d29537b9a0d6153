"""wss:// listeners: TLS with a certificate made at test time (trustme), client certificates, limits."""

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
import simple_websocket

from conftest import start_params, wait_until
from exec_server import make_server
from exec_server.cli.options import listen_options, server_parser
from exec_server.server.config import ServerConfig
from exec_server.server.tls import server_context


def client_context(pki, cert=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert))
    return context


def run_echo(ws, text: str = "over tls") -> bytes:
    """initialize, start ``printf``, and collect its output notifications (base64 decoded) until closed."""
    import base64

    def call(request_id, method, params):
        ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            message = json.loads(ws.receive(10))
            if message.get("id") == request_id:
                return message

    assert "result" in call(1, "initialize", {"clientName": "tls-test"})
    ws.send(json.dumps({"method": "initialized", "params": {}}))
    # many small writes: the server sends batches of frames, joined on a TLS socket
    script = "for i in $(seq 1 200); do printf '%%s %s\\n' \"$i\"; done" % text
    assert "result" in call(2, "process/start", start_params("p1", ["sh", "-c", script]))
    output = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        message = json.loads(ws.receive(10))
        if message.get("method") == "process/output":
            output += base64.b64decode(message["params"]["chunk"])
        if message.get("method") == "process/closed":
            break
    return output


def test_wss_serves_json_rpc(pki, tls_server):
    server = tls_server()
    assert server.url.startswith("wss://127.0.0.1:")
    ws = simple_websocket.Client.connect(server.url + "/", ssl_context=client_context(pki))
    try:
        output = run_echo(ws)
    finally:
        ws.close()
    assert output == b"".join(b"%d over tls\n" % i for i in range(1, 201))


def test_readyz_over_tls(pki, tls_server):
    server = tls_server()
    port = urlsplit(server.url).port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")


def test_a_first_frame_sent_with_the_upgrade_request_over_tls_is_answered(pki, tls_server):
    """As over plain TCP (test_http.py): the frame decrypted with the request's headers is not lost."""
    from test_http import eager_initialize

    server = tls_server()
    port = urlsplit(server.url).port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            data = eager_initialize(sock)
    assert data.startswith(b"HTTP/1.1 101") and b'{"id":1,"result":{"sessionId"' in data


def test_plain_client_on_a_tls_port_is_dropped(tls_server):
    server = tls_server()
    port = urlsplit(server.url).port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.recv(100)  # a TLS alert or nothing, then the end of the connection
        assert not answer.startswith(b"HTTP")
        assert sock.recv(100) == b""


def test_client_certificate_mode(pki, tls_server):
    server = tls_server(client_ca=pki.ca)
    port = urlsplit(server.url).port
    for cert in (None, pki.stranger):  # no certificate, or one from a CA the server does not trust
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                with client_context(pki, cert).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                    # TLS 1.3 reports the refusal on the first read
                    if not sock.recv(100):
                        raise ConnectionResetError("closed without an answer")
    ws = simple_websocket.Client.connect(server.url + "/", ssl_context=client_context(pki, pki.client))
    try:
        assert run_echo(ws, "cert").endswith(b"200 cert\n")
    finally:
        ws.close()


def test_stalled_handshake_is_dropped_without_blocking_others(pki, tls_server):
    server = tls_server(tls_handshake_timeout=0.5)
    port = urlsplit(server.url).port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
        # the accept loop is not held up by a client that never says hello
        ws = simple_websocket.Client.connect(server.url + "/", ssl_context=client_context(pki))
        ws.close()
        started = time.monotonic()
        assert silent.recv(10) == b""  # the server gave up on the handshake
        assert time.monotonic() - started < 3


def test_handshake_timeout_must_be_positive():
    with pytest.raises(ValueError, match="tls_handshake_timeout"):
        ServerConfig(tls_handshake_timeout=0)


def parse(args):
    return server_parser().parse_args(args)


def test_listen_options(pki):
    tls = ["--tls-certfile", str(pki.server_cert), "--tls-keyfile", str(pki.server_key)]
    settings = listen_options(parse(["--listen", "wss://127.0.0.1:0", *tls]))
    assert isinstance(settings.ssl_context, ssl.SSLContext) and settings.auth is None
    # client certificates count as authentication on a non-loopback address (nothing is bound here)
    settings = listen_options(parse(["--listen", "wss://0.0.0.0:0", *tls, "--tls-client-ca", str(pki.ca)]))
    assert settings.ssl_context.verify_mode == ssl.CERT_REQUIRED
    for args, message in [
        (["--listen", "wss://127.0.0.1:0"], "needs --tls-certfile"),
        (["--listen", "ws://127.0.0.1:0", *tls], "need a wss:// listen URL"),
        (["--listen", "wss://0.0.0.0:0", *tls], "websocket auth is required for non-localhost listeners"),
        (["--listen", "wss://127.0.0.1:0", "--tls-certfile", str(pki.ca)], "cannot load the TLS certificate"),
    ]:
        with pytest.raises(ValueError, match=message):
            listen_options(parse(args))
    with pytest.raises(ValueError, match="needs a TLS certificate"):
        make_server("wss://127.0.0.1:0")


def test_cli_prints_a_wss_url(pki):
    server = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "wss://127.0.0.1:0",
                               "--tls-certfile", str(pki.server_cert), "--tls-keyfile", str(pki.server_key)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        url = server.stdout.readline().decode().strip()
        assert url.startswith("wss://127.0.0.1:")
        ws = simple_websocket.Client.connect(url + "/", ssl_context=client_context(pki))
        ws.close()
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()
        server.stderr.close()
    wait_until(lambda: server.returncode is not None, 1)


def test_cli_refuses_wss_without_a_certificate():
    done = subprocess.run([sys.executable, "-m", "exec_server", "--listen", "wss://127.0.0.1:0"],
                          capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and b"needs --tls-certfile" in done.stderr and b"Traceback" not in done.stderr


def test_shutdown_closes_tls_connections_with_1001(pki, tls_server):
    server = tls_server()
    ws = simple_websocket.Client.connect(server.url + "/", ssl_context=client_context(pki))
    try:
        server.shutdown()
        with pytest.raises(simple_websocket.ConnectionClosed) as closed:
            ws.receive(5)
        assert closed.value.reason == 1001  # the Close frame went out encrypted, not in the clear
    finally:
        if ws.connected:
            ws.close()


def test_tls_stream_full_duplex(pki):
    """Both ends write 8 MiB at once while reading on other threads: no corruption, no deadlock."""
    from exec_server.common.tls import TLSStream

    server_side, client_side = socket.socketpair()
    server_tls = server_context(str(pki.server_cert), str(pki.server_key)).wrap_socket(
        server_side, server_side=True, do_handshake_on_connect=False)
    client_tls = client_context(pki).wrap_socket(client_side, server_hostname="127.0.0.1",
                                                 do_handshake_on_connect=False)
    handshake = threading.Thread(target=server_tls.do_handshake)
    handshake.start()
    client_tls.do_handshake()
    handshake.join(5)
    ends = [TLSStream(server_tls), TLSStream(client_tls)]
    payloads = [bytes(range(256)) * 32768, bytes(reversed(range(256))) * 32768]  # 8 MiB each
    received = [bytearray(), bytearray()]
    errors = []

    def write(index):
        try:
            for offset in range(0, len(payloads[index]), 1 << 20):
                ends[index].sendall(payloads[index][offset:offset + (1 << 20)], timeout=20)
        except Exception as exc:  # reported below
            errors.append(exc)

    def read(index):
        try:
            while len(received[index]) < len(payloads[1 - index]):
                received[index] += ends[index].recv(65536, timeout=20)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(index,)) for target in (write, read) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert not errors and not any(thread.is_alive() for thread in threads)
        assert received[0] == payloads[1] and received[1] == payloads[0]
        ends[0].shutdown_read()
        assert ends[0].recv(10, timeout=5) == b""
    finally:
        for end in ends:
            end.close()


def test_a_tls_record_cut_short_does_not_stop_keepalive(pki, tls_server):
    """A peer that sends part of a TLS record and then nothing is closed at ``keepalive_timeout``.

    The connection's reader must not wait in ``TLSStream.recv`` for the rest of the record without a
    bound: there it sent no Ping and never saw the keepalive (or ``initialize``) deadline, so the
    connection, and the session it holds, lived for as long as the peer kept its TCP connection.
    """
    server = tls_server(ping_interval=0.3, keepalive_timeout=1.0, initialize_timeout=0)
    port = urlsplit(server.url).port
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(pki).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")

    def flush():
        data = outgoing.read()
        if data:
            raw.sendall(data)

    def pump():
        data = raw.recv(65536)
        if not data:
            raise EOFError("the server ended the connection")
        incoming.write(data)

    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                pump()
        flush()
        tls.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        flush()
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                pump()
        assert answer.startswith(b"HTTP/1.1 101")
        tls.write(b"\x89\x80\x00\x00\x00\x00")  # a masked, empty Ping ...
        record = outgoing.read()
        raw.sendall(record[:-1])  # ... whose TLS record is sent but for its last byte
        start = time.monotonic()
        raw.settimeout(10)
        try:
            while raw.recv(65536):  # Pings, then the end
                pass
        except ConnectionResetError:
            pass
        assert time.monotonic() - start < 5  # was: no Ping, and open until the 10 s timeout above
    finally:
        raw.close()


def _encrypted(key_path, target) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    target.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"passphrase")))


def test_an_encrypted_key_is_refused_without_asking_for_its_passphrase(pki, tmp_path):
    """OpenSSL asked for the passphrase on the terminal (a service's start waited there), and without one the
    start failed with ``[Errno 22] Invalid argument``; a certificate without its key said ``PEM lib``."""
    encrypted = tmp_path / "encrypted.key"
    _encrypted(pki.server_key, encrypted)
    with pytest.raises(ValueError) as caught:
        server_context(str(pki.server_cert), str(encrypted))
    assert str(caught.value).startswith("cannot load the TLS key %s: it is encrypted" % encrypted)
    with pytest.raises(ValueError) as caught:
        server_context(str(pki.server_cert))
    assert str(caught.value) == ("cannot load the TLS certificate %s: no private key in it (give --tls-keyfile)"
                                 % pki.server_cert)
    for wrong in (pki.server_key, tmp_path / "garbage.pem"):  # a key alone, or no PEM: not a missing key
        (tmp_path / "garbage.pem").write_bytes(b"not a certificate\n")
        with pytest.raises(ValueError) as caught:
            server_context(str(wrong))
        assert "no private key" not in str(caught.value) and str(caught.value).startswith(
            "cannot load the TLS certificate %s / key %s: " % (wrong, wrong))
    done = subprocess.run([sys.executable, "-m", "exec_server", "--listen", "wss://127.0.0.1:0", "--tls-certfile",
                           str(pki.server_cert), "--tls-keyfile", str(encrypted)], capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL, start_new_session=True)  # no terminal to ask on
    assert done.returncode == 2 and b"it is encrypted" in done.stderr and b"Traceback" not in done.stderr
    assert b"pass phrase" not in done.stderr + done.stdout
