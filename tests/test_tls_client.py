"""The client over wss:// and with tokens that change: trust, client certificates, resume, fresh tokens."""

import re
import ssl
import subprocess
import sys
import threading
import time

import jwt
import pytest

from conftest import start_ours, wait_until
from exec_server import Client, ExecServerDisconnected, ReconnectPolicy
from exec_server.server.auth import SignedBearerToken
from faultproxy import FaultProxy
from test_tls import client_context

pytestmark = pytest.mark.posix

FAST = ReconnectPolicy(deadline=10.0, initial_backoff=0.02, max_backoff=0.2, connect_timeout=2.0)
SECRET = b"0123456789abcdefghijklmnopqrstuvwx"
LINES = "i=1; while [ $i -le 40 ]; do echo line$i; i=$((i+1)); sleep 0.05; done"
EXPECTED = b"".join(b"line%d\n" % i for i in range(1, 41))


@pytest.fixture
def proxy_to():
    proxies = []

    def factory(port: int) -> FaultProxy:
        proxy = FaultProxy(port)
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        proxy.close()


def test_wss_with_the_right_ca(pki, tls_server):
    server = tls_server()
    with Client.connect(server.url, timeout=5, ssl_context=client_context(pki)) as client:
        assert client.run(["echo", "over tls"], timeout=10).stdout == b"over tls\n"


def test_unknown_ca_is_a_clear_client_error(pki, tls_server):
    server = tls_server()
    # the system trust store (the default) does not know the test CA, nor does a context of another CA
    stranger = ssl.create_default_context()
    pki.other_ca_obj.configure_trust(stranger)
    for options in ({}, {"ssl_context": stranger}):
        with pytest.raises(ExecServerDisconnected, match="certificate verify failed") as refused:
            Client.connect(server.url, timeout=5, reconnect=None, **options)
        assert server.url in str(refused.value)


def test_client_certificate_mode(pki, tls_server):
    server = tls_server(client_ca=pki.ca)
    with pytest.raises(ExecServerDisconnected):
        Client.connect(server.url, timeout=5, reconnect=None, ssl_context=client_context(pki))
    with Client.connect(server.url, timeout=5, ssl_context=client_context(pki, pki.client)) as client:
        assert client.run(["echo", "with cert"], timeout=10).stdout == b"with cert\n"


def test_resume_across_a_tls_reconnect(pki, tls_server, proxy_to):
    server = tls_server()
    proxy = proxy_to(int(server.url.rsplit(":", 1)[1]))  # forwards the TLS bytes as they are
    url = "wss://127.0.0.1:%d" % proxy.port
    with Client.connect(url, timeout=5, reconnect=FAST, ssl_context=client_context(pki)) as client:
        process = client.start(["/bin/sh", "-c", LINES])
        for _ in range(2):
            time.sleep(0.4)
            proxy.cut()
        stdout, _stderr = process.communicate(timeout=30)
        assert stdout == EXPECTED and process.returncode == 0
        wait_until(lambda: client.state == "connected")


def test_resume_with_a_fresh_token_from_the_callable(proxy_to):
    """Each connect asks the callable; a token that expired between connects is never sent again."""
    server = start_ours(auth=SignedBearerToken(SECRET, max_clock_skew=0))
    proxy = proxy_to(int(server.url.rsplit(":", 1)[1]))
    minted = []
    lock = threading.Lock()

    def token() -> str:
        value = jwt.encode({"exp": int(time.time()) + 1}, SECRET, algorithm="HS256")
        with lock:
            minted.append(value)
        return value

    try:
        with Client.connect(proxy.url, timeout=5, reconnect=FAST, token=token) as client:
            process = client.start(["/bin/sh", "-c", "sleep 2.5; " + LINES])
            first = minted[0]
            wait_until(lambda: server_refuses(first), 5)  # the first token has expired by now
            proxy.cut()
            stdout, _stderr = process.communicate(timeout=30)
            assert stdout == EXPECTED and process.returncode == 0
            assert len(minted) >= 2 and minted[-1] != first
    finally:
        server.stop()


def server_refuses(token: str) -> bool:
    return SignedBearerToken(SECRET, max_clock_skew=0).refusal(token) == "expired websocket jwt"


def test_fixed_token_string_is_sent(proxy_to):
    server = start_ours(auth=SignedBearerToken(SECRET))
    try:
        token = jwt.encode({"exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
        with Client.connect(server.url, timeout=5, token=token) as client:
            assert client.run(["echo", "ok"], timeout=10).stdout == b"ok\n"
        with pytest.raises(ExecServerDisconnected, match="expired websocket jwt"):
            Client.connect(server.url, timeout=5, reconnect=None,
                           token=jwt.encode({"exp": int(time.time()) - 120}, SECRET, algorithm="HS256"))
    finally:
        server.stop()


def test_cli_run_with_cafile_and_token_file(pki, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    token_file = tmp_path / "token"
    token_file.write_text(jwt.encode({"exp": int(time.time()) + 300}, SECRET, algorithm="HS256") + "\n")
    server = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "wss://127.0.0.1:0",
                               "--tls-certfile", str(pki.server_cert), "--tls-keyfile", str(pki.server_key),
                               "--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", str(secret_file)],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        url = server.stdout.readline().decode().strip()
        assert url.startswith("wss://")
        done = subprocess.run([sys.executable, "-m", "exec_server", "run", "--url", url, "--cafile", str(pki.ca),
                               "--token-file", str(token_file), "--", "echo", "tls+jwt"],
                              capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        assert (done.returncode, done.stdout) == (0, b"tls+jwt\n"), done.stderr
        untrusted = subprocess.run([sys.executable, "-m", "exec_server", "run", "--url", url, "--token-file",
                                    str(token_file), "--", "true"], capture_output=True, timeout=30,
                                   stdin=subprocess.DEVNULL)
        assert untrusted.returncode == 255 and b"certificate verify failed" in untrusted.stderr
        assert b"Traceback" not in untrusted.stderr
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()


def test_token_file_is_read_at_each_connect(tmp_path):
    from exec_server.cli.options import client_token
    from argparse import Namespace

    path = tmp_path / "token"
    path.write_text("first\n")
    token = client_token(Namespace(token_file=str(path)))
    assert token() == "first"
    path.write_text("second\r\n")  # replaced while the client runs (a signed token renewed)
    assert token() == "second"
    path.unlink()
    with pytest.raises(OSError):
        client_token(Namespace(token_file=str(path)))


def test_failing_token_callable_is_a_clear_error():
    server = start_ours(auth=SignedBearerToken(SECRET))

    def broken() -> str:
        raise RuntimeError("token service unavailable")

    try:
        with pytest.raises(ExecServerDisconnected, match="cannot get a token .*token service unavailable"):
            Client.connect(server.url, timeout=5, reconnect=None, token=broken)
    finally:
        server.stop()


def test_a_client_certificate_from_the_cli_and_a_clear_error_without_one(pki, tls_server):
    """A --tls-client-ca server closes a connection without an accepted certificate right after the handshake:
    the client says so (ExecServerTLSError; it said "cannot connect: Exec format error", os.strerror of an ssl
    errno), and run/cp present one with --certfile."""
    from exec_server import ExecServerTLSError

    server = tls_server(client_ca=pki.ca)
    with pytest.raises(ExecServerTLSError, match="closed by the server|CERTIFICATE_REQUIRED"):
        Client.connect(server.url, timeout=5, reconnect=None, ssl_context=client_context(pki))
    cli = [sys.executable, "-m", "exec_server", "run", "--url", server.url, "--cafile", str(pki.ca)]
    refused = subprocess.run(cli + ["--", "true"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert refused.returncode == 255
    # the server's alert names the cause when it arrives before the connection's end; else the end does
    assert re.fullmatch(r"exec-server run: TLS [^\n]*(closed by the server|TLSV13_ALERT_CERTIFICATE_REQUIRED)"
                        r"[^\n]* \(%s\)\n" % re.escape(server.url), refused.stderr.decode()), refused.stderr
    done = subprocess.run(cli + ["--certfile", str(pki.client), "--", "echo", "with cert"], capture_output=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"with cert\n", b"")
    stranger = subprocess.run(cli + ["--certfile", str(pki.stranger), "--", "true"], capture_output=True,
                              timeout=30, stdin=subprocess.DEVNULL)
    assert stranger.returncode == 255 and b"wants a client certificate it trusts" in stranger.stderr
    broken = subprocess.run(cli + ["--certfile", str(pki.ca), "--", "true"], capture_output=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert (broken.returncode, broken.stderr.decode()) == (
        2, "exec-server run: cannot load the certificate file: not a PEM certificate with its private key (%s)\n"
        % pki.ca)


def test_a_client_certificate_and_its_key_in_two_files(pki, tls_server, tmp_path):
    """run/cp --keyfile: a certificate and key kept apart (as most CAs hand them out); each file that cannot be
    loaded is named in one line, exit 2, before connecting."""
    certificate, key, other_key = tmp_path / "client.crt", tmp_path / "client.key", tmp_path / "other.key"
    pki.client_obj.cert_chain_pems[0].write_to_path(str(certificate))
    pki.client_obj.private_key_pem.write_to_path(str(key))
    pki.stranger_obj.private_key_pem.write_to_path(str(other_key))
    server = tls_server(client_ca=pki.ca)
    cli = [sys.executable, "-m", "exec_server", "run", "--url", server.url, "--cafile", str(pki.ca)]

    def run(*options):
        done = subprocess.run(cli + list(options) + ["--", "echo", "two files"], capture_output=True, timeout=30,
                              stdin=subprocess.DEVNULL)
        return done.returncode, done.stdout, done.stderr.decode()

    assert run("--certfile", str(certificate), "--keyfile", str(key)) == (0, b"two files\n", "")
    assert run("--certfile", str(certificate), "--keyfile", str(other_key)) == (
        2, b"", "exec-server run: cannot load the key file: not the private key of --certfile (%s)\n" % other_key)
    assert run("--certfile", str(certificate), "--keyfile", str(tmp_path / "missing.key")) == (
        2, b"", "exec-server run: cannot load the key file: No such file or directory (%s)\n"
        % (tmp_path / "missing.key"))
    assert run("--certfile", str(tmp_path / "missing.crt"), "--keyfile", str(key)) == (
        2, b"", "exec-server run: cannot load the certificate file: No such file or directory (%s)\n"
        % (tmp_path / "missing.crt"))
    assert run("--keyfile", str(key)) == (2, b"", "exec-server run: --keyfile needs --certfile (%s)\n" % key)
    from test_tls import _encrypted

    _encrypted(key, tmp_path / "encrypted.key")  # OpenSSL asked for its passphrase on the terminal
    assert run("--certfile", str(certificate), "--keyfile", str(tmp_path / "encrypted.key")) == (
        2, b"", "exec-server run: cannot load the key file: it is encrypted (a passphrase protects it); give the key "
        "unencrypted (%s)\n" % (tmp_path / "encrypted.key"))
    assert run("--certfile", str(certificate))[0] == 2  # the key is in neither file given
    copy = [sys.executable, "-m", "exec_server", "cp", "--url", server.url, "--cafile", str(pki.ca)]
    copy += ["--certfile", str(certificate), "--keyfile", str(key), str(key), ":%s" % (tmp_path / "up")]
    copied = subprocess.run(copy, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "up").read_bytes() == key.read_bytes()


def test_a_scheme_that_does_not_match_the_server_says_so(pki, tls_server, server):
    """wss:// to a ws:// server said only WRONG_VERSION_NUMBER; ws:// to a wss:// server only that the
    connection closed during the handshake."""
    from exec_server import ExecServerTLSError

    with pytest.raises(ExecServerTLSError, match=r"\(the server does not speak TLS: a ws:// server\?\)$"):
        Client.connect(server.url.replace("ws://", "wss://"), timeout=10, ssl_context=client_context(pki))
    secure = tls_server()
    with pytest.raises(ExecServerDisconnected, match=r"\(a wss:// server closes a plain connection so, "):
        Client.connect(secure.url.replace("wss://", "ws://"), timeout=10)


def test_a_tls_record_cut_short_does_not_stop_the_clients_keepalive(pki):
    """A server that sends part of a TLS record and then nothing: the client's reader waited in
    ``TLSStream.recv`` for the rest without a bound (no Ping, no keepalive deadline) for as long as the TCP
    connection stayed up; it now ends the connection at ``keepalive_timeout``."""
    import socket

    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Ping, Request

    from exec_server.client.websocket import connector_for

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        raw, _ = listener.accept()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)
        ws = WSConnection(ConnectionType.SERVER)
        handshaken = False
        try:
            while True:  # the handshake, then the upgrade request
                try:
                    if not handshaken:
                        tls.do_handshake()
                        handshaken = True
                    ws.receive_data(tls.read(65536))
                    if any(isinstance(event, Request) for event in ws.events()):
                        break
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    incoming.write(raw.recv(65536))
            tls.write(ws.send(AcceptConnection()))
            raw.sendall(outgoing.read())
            tls.write(ws.send(Ping(b"")))
            record = outgoing.read()
            raw.sendall(record[:-1])  # a Ping whose TLS record lacks its last byte, then silence
            stop.wait(20)
        finally:
            raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        connector = connector_for("wss://127.0.0.1:%d" % listener.getsockname()[1], None, None, client_context(pki),
                                  ping_interval=0.3, keepalive_timeout=1.0)
        transport = connector(10)
        started = time.monotonic()
        with pytest.raises(ExecServerDisconnected, match="keepalive"):
            transport.receive()
        assert time.monotonic() - started < 5  # was: until the server's TCP connection ended (20 s here)
        transport.close()
    finally:
        stop.set()
        thread.join(30)
        listener.close()
