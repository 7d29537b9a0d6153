"""Capability-token authentication (PROTOCOL.md 1.2), on ours and the reference."""

import hashlib
import re
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest

from conftest import http_request, start_ours, start_reference, wait_until
from exec_server import Client, ExecServerDisconnected
from exec_server.server.auth import CapabilityToken

TOKEN = "s3cret-token"
UPGRADE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


@pytest.fixture(params=["ours", pytest.param("reference", marks=pytest.mark.reference)])
def authed_server(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("auth")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")  # the trailing newline is ignored
    if request.param == "ours":
        running = start_ours(auth=CapabilityToken.from_file(str(token_file)))
    else:
        running = start_reference(str(folder), ["--ws-auth", "capability-token", "--ws-token-file", str(token_file)])
    yield running
    running.stop()


def answer(server, extra: bytes) -> bytes:
    return http_request(urlsplit(server.url).port, UPGRADE + extra + b"\r\n")


@pytest.mark.parametrize("header, status, body", [
    (b"", b"401", b"missing websocket bearer token"),
    (b"Authorization: Bearer wrong\r\n", b"401", b"invalid websocket bearer token"),
    (b"Authorization: " + TOKEN.encode() + b"\r\n", b"401", b"invalid authorization header"),
    (b"Authorization: Bearer " + TOKEN.encode() + b"\r\n", b"101", b""),
    (b"Authorization: bearer " + TOKEN.encode() + b"\r\n", b"101", b""),
    (b"Sec-WebSocket-Protocol: " + TOKEN.encode() + b"\r\n", b"401", b"missing websocket bearer token"),
])
def test_upgrade_outcomes(authed_server, header, status, body):
    response = answer(authed_server, header)
    assert response.split(b" ", 2)[1] == status
    if status == b"401":
        assert response.split(b"\r\n\r\n", 1)[1] == body


def test_refused_credentials_are_told_at_the_default_level(tmp_path, caplog, monkeypatch):
    """They were logged at DEBUG alone (``GET / 401``), without the peer: a client whose token was rotated, or
    someone guessing, went unseen.  A warning with the count, at most every interval (the first at once, those
    after it by a timer, also when no later refusal comes); never the token."""
    from exec_server.server import upgrade

    monkeypatch.setattr(upgrade, "REFUSED_CREDENTIALS_INTERVAL", 0.3)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    running = start_ours(auth=CapabilityToken.from_file(str(token_file)))

    def told():
        return [record.getMessage() for record in caplog.records
                if "refused for their credentials" in record.getMessage()]

    try:
        with caplog.at_level("WARNING", logger="exec_server.server.upgrade"):
            for guess in (b"one", b"two", b"three", b"four"):
                assert answer(running, b"Authorization: Bearer guess-" + guess + b"\r\n").split(b" ", 2)[1] == b"401"
            assert answer(running, b"Authorization: Bearer " + TOKEN.encode() + b"\r\n").split(b" ", 2)[1] == b"101"
            wait_until(lambda: sum(int(line.split()[0]) for line in told()) == 4, timeout=10)
    finally:
        running.stop()
    assert told()[0].startswith("1 upgrade(s) refused")  # the first at once
    for line in told():
        assert re.match(r"^[1-4] upgrade\(s\) refused for their credentials, the latest from 127\.0\.0\.1: 401 "
                        r"Unauthorized invalid websocket bearer token \(told at most every 0\.3 s\)$", line), line
    assert "guess" not in caplog.text and TOKEN not in caplog.text


def test_a_refusal_when_no_timer_thread_starts_is_still_401_and_told_later(tmp_path, caplog, monkeypatch):
    """The warning's timer started unguarded inside the WSGI handler: where no thread could start (a task
    limit), a refused login was a 500 with a logged traceback.  Now the next refusal tells the count."""
    from exec_server.server import burst_warning, upgrade

    class NoThread(threading.Timer):
        def start(self):
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(upgrade, "REFUSED_CREDENTIALS_INTERVAL", 0.3)
    monkeypatch.setattr(burst_warning.threading, "Timer", NoThread)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    running = start_ours(auth=CapabilityToken.from_file(str(token_file)))
    try:
        with caplog.at_level("WARNING", logger="exec_server.server.upgrade"):
            for guess in (b"one", b"two", b"three"):
                assert answer(running, b"Authorization: Bearer guess-" + guess + b"\r\n").split(b" ", 2)[1] == b"401"
            time.sleep(0.4)
            assert answer(running, b"Authorization: Bearer guess-four\r\n").split(b" ", 2)[1] == b"401"
    finally:
        running.stop()
    told = [int(record.getMessage().split()[0]) for record in caplog.records
            if "refused for their credentials" in record.getMessage()]
    assert told == [1, 3]
    assert "Traceback" not in caplog.text


def test_a_head_request_gets_no_content(server):
    """``HEAD /`` was answered 405 with its 28-byte text: a HEAD response carries none (RFC 9110 9.3.2)."""
    response = http_request(urlsplit(server.url).port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, content = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405") and content == b""
    assert b"\r\nServer: exec-server\r\n" in head  # no library or interpreter versions for anyone
    get = http_request(urlsplit(server.url).port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert get.startswith(b"HTTP/1.1 400") and get.endswith(b"Connection header did not include 'upgrade'")


def test_readyz_stays_open(authed_server):
    response = http_request(urlsplit(authed_server.url).port,
                            b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200")


def test_origin_is_checked_first(authed_server):
    response = answer(authed_server, b"Origin: http://a\r\n")
    assert response.startswith(b"HTTP/1.1 403")


def test_client_token(authed_server):
    with Client.connect(authed_server.url, timeout=5, token=TOKEN) as client:
        assert client.run(["echo", "ok"], timeout=10).stdout == b"ok\n"
    with pytest.raises(ExecServerDisconnected, match="401"):
        Client.connect(authed_server.url, timeout=5, token="wrong")


def test_sha256_option_and_validation():
    check = CapabilityToken(hashlib.sha256(TOKEN.encode()).hexdigest())
    assert check.check({"HTTP_AUTHORIZATION": "Bearer " + TOKEN}) is None
    with pytest.raises(ValueError):
        CapabilityToken("not-hex")


@pytest.mark.parametrize("args, message", [
    (["--listen", "ws://0.0.0.0:0"], b"websocket auth is required for non-localhost listeners"),
    (["--ws-auth", "capability-token"], b"exactly one of --ws-token-file and --ws-token-sha256"),
    (["--ws-token-sha256", "ab" * 32], b"websocket auth flags require `--ws-auth capability-token`"),
])
def test_cli_refusals(args, message):
    done = subprocess.run([sys.executable, "-m", "exec_server", *args], capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and message in done.stderr


def test_cli_run_with_token_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0", "--ws-auth",
                               "capability-token", "--ws-token-sha256", hashlib.sha256(TOKEN.encode()).hexdigest()],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        url = server.stdout.readline().decode().strip()
        done = subprocess.run([sys.executable, "-m", "exec_server", "run", "--url", url, "--token-file",
                               str(token_file), "--", "echo", "authed"], capture_output=True, timeout=30,
                              stdin=subprocess.DEVNULL)
        assert (done.returncode, done.stdout) == (0, b"authed\n")
        denied = subprocess.run([sys.executable, "-m", "exec_server", "run", "--url", url, "--", "true"],
                                capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        assert denied.returncode == 255 and b"401" in denied.stderr
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()
