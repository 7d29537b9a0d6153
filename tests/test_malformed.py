"""Malformed values get -32602/-32600 naming the field; never a traceback or a dropped connection (issue 15)."""

import logging
import os
import struct
from urllib.parse import urlsplit

import pytest

from conftest import start_params
from test_fuzz import _frame, _upgrade

PREFIX = "failed to parse websocket JSON-RPC message from exec-server websocket "
ENV_POLICY = {"inherit": "core", "ignoreDefaultExcludes": False, "exclude": [], "set": {}, "includeOnly": []}


@pytest.fixture
def peer(any_server, connect):
    connected = connect(any_server.url)
    connected.initialize()
    return connected


def parse_error(peer, text):
    peer.send(text)
    reply = peer.wait_for(lambda m: m.get("id") == -1)
    peer.received.remove(reply)
    return reply["error"]


@pytest.mark.parametrize("text", [
    '{"id":"\\ud800","method":"process/read","params":{"processId":"x"}}',
    '{"id":7,"method":"process/read","params":{"processId":"\\ud800"}}',
    '{"id":7,"method":"process/start","params":{"processId":"\\udc80","argv":["true"],"cwd":"file:///tmp",'
    '"env":{},"tty":false}}',
    '{"id":7,"method":"process/start","params":{"processId":"s","argv":["echo","a\\ud800"],"cwd":"file:///tmp",'
    '"env":{},"tty":false}}',
    '{"id":7,"method":"fs/readFile","params":{"path":"file:///tmp/a\\udfffb"}}',
    '{"id":7,"method":"process/write","params":{"processId":"p","chunk":"","writeId":"\\ud800"}}',
])
def test_lone_surrogate_is_a_parse_error_and_the_connection_stays(peer, text):
    error = parse_error(peer, text)
    assert error["code"] == -32600 and error["message"].startswith(PREFIX)
    reply = peer.request("process/terminate", {"processId": "none"})
    assert reply["result"] == {"running": False}


@pytest.mark.parametrize("text,name", [
    ('{"id":7,"method":"process/start","params":{"processId":"d","argv":["true"],"argv":["touch","%s"],'
     '"cwd":"file:///tmp","env":{},"tty":false}}', "argv"),
    ('{"id":7,"id":8,"method":"process/start","params":{"processId":"d","argv":["touch","%s"],'
     '"cwd":"file:///tmp","env":{},"tty":false}}', "id"),
    ('{"id":7,"method":"process/read","method":"process/start","params":{"processId":"d","argv":["touch","%s"],'
     '"cwd":"file:///tmp","env":{},"tty":false}}', "method"),
    ('{"id":7,"method":"process/start","params":{"processId":"d","argv":["touch","%s"],'
     '"cwd":"file:///tmp","env":{"A":"1","A":"2"},"tty":false}}', "A"),
])
def test_a_member_named_twice_refuses_the_message(peer, tmp_path, text, name):
    """As the reference: JSON's "last one wins" would run another command than a reader of the first sees."""
    proof = tmp_path / "ran"
    error = parse_error(peer, text % proof)
    assert error["code"] == -32600 and error["message"].startswith(PREFIX)
    assert "duplicate JSON object key `%s`" % name in error["message"]
    reply = peer.request("process/terminate", {"processId": "d"})
    assert reply["result"] == {"running": False}
    assert not proof.exists()


@pytest.mark.parametrize("method,params", [
    ("fs/readFile", {"path": "file:///tmp/a%00b"}),
    ("fs/writeFile", {"path": "file:///tmp/a%00b", "dataBase64": ""}),
    ("fs/getMetadata", {"path": "file:///tmp/a%00b"}),
    ("process/start", start_params("nul-cwd", ["true"], cwd="file:///tmp/a%00b")),
])
def test_nul_byte_in_a_path_is_invalid_params(peer, method, params):
    error = peer.request(method, params)["error"]
    assert (error["code"], error["message"]) == (-32602, "'file:///tmp/a%00b' is invalid on 'linux'")


def test_u64_extremes_are_accepted_or_named(peer, tmp_path):
    result = peer.call("process/start", start_params("long", ["sleep", "30"]))
    assert result["processId"] == "long"
    read = peer.call("process/read", {"processId": "long", "afterSeq": 2 ** 64 - 1, "maxBytes": 2 ** 64 - 1})
    assert read["exited"] is False
    too_big = peer.request("process/read", {"processId": "long", "waitMs": 2 ** 64})["error"]
    assert (too_big["code"], too_big["message"]) == (-32602, "invalid number")
    peer.call("process/terminate", {"processId": "long"})
    (tmp_path / "f").write_bytes(b"data")
    peer.call("fs/open", {"handleId": "h1", "path": "file://%s/f" % tmp_path})
    error = peer.request("fs/readBlock", {"handleId": "h1", "offset": 2 ** 64 - 1, "len": 10})["error"]
    assert error["code"] == -32600 and error["message"].endswith("(os error 22)")


def test_huge_wait_ms_waits_for_the_process(server, connect):
    """waitMs near the u64 range (9.2e12 ms) long-polls until the state changes, no overflow."""
    peer = connect(server.url)
    peer.initialize()
    peer.call("process/start", start_params("w", ["sleep", "30"]))
    for wait_ms in (9_200_000_000_000, 2 ** 63 - 1, 2 ** 64 - 1):
        request_id = 500 + wait_ms % 97
        params = {"processId": "w", "afterSeq": 0, "waitMs": wait_ms}
        peer.send({"id": request_id, "method": "process/read", "params": params})
        assert peer.recv(0.3) is None or "error" not in peer.received[-1]
    peer.call("process/terminate", {"processId": "w"})
    replies = [peer.wait_for(lambda m, i=500 + w % 97: m.get("id") == i) for w in (9_200_000_000_000, 2 ** 63 - 1,
                                                                                   2 ** 64 - 1)]
    assert all("result" in reply for reply in replies), replies


@pytest.mark.parametrize("field,params,path", [
    ("argv[0]", {"argv": ["ec\u0000ho", "x"]}, "$.argv[0]"),
    ("argv[1]", {"argv": ["echo", "a\u0000b"]}, "$.argv[1]"),
    ("arg0", {"argv": ["echo"], "arg0": "e\u0000"}, "$.arg0"),
    ("env[A]", {"argv": ["echo"], "env": {"A": "x\u0000"}}, "$.env"),
    ("env key `A\\0`", {"argv": ["echo"], "env": {"A\u0000": "x"}}, "$.env"),
    ("envPolicy.set[A]", {"argv": ["echo"], "envPolicy": dict(ENV_POLICY, set={"A": "x\u0000"})}, "$.envPolicy.set"),
    ("envPolicy.set key `A\\0`", {"argv": ["echo"], "envPolicy": dict(ENV_POLICY, set={"A\u0000": "x"})},
     "$.envPolicy.set"),
])
def test_nul_byte_in_argv_or_env_names_the_field(server, connect, field, params, path):
    peer = connect(server.url)
    peer.initialize()
    error = peer.request("process/start", dict(start_params("n", params["argv"]), **params))["error"]
    assert error == {"code": -32602, "message": "nul byte found in provided data: " + field, "data": {"path": path}}


def test_an_env_policy_name_with_equals_is_invalid_params(server, connect):
    """As in env (it was -32603 and Python's text)."""
    peer = connect(server.url)
    peer.initialize()
    params = dict(start_params("n", ["true"]), envPolicy=dict(ENV_POLICY, set={"A=B": "1"}))
    error = peer.request("process/start", params)["error"]
    assert error == {"code": -32602, "data": {"path": "$.envPolicy.set"},
                     "message": "envPolicy.set key `A=B` contains `=`, which no environment variable name can hold"}


def test_write_block_past_the_i64_offset_limit(server, connect, tmp_path):
    peer = connect(server.url)
    peer.initialize()
    peer.call("fs/open", {"handleId": "w", "path": "file://%s/out" % tmp_path, "mode": "replace"})
    error = peer.request("fs/writeBlock", {"handleId": "w", "offset": 2 ** 64 - 1, "chunk": "eA=="})["error"]
    assert error == {"code": -32600, "message": "file write range exceeds the signed 64-bit file offset limit"}
    assert os.path.getsize(tmp_path / "out") == 0


def test_non_utf8_file_name_is_answered(server, connect, tmp_path):
    """A directory entry that is not UTF-8 is sent lossily; the connection stays."""
    os.close(os.open(os.path.join(os.fsencode(str(tmp_path)), b"bad-\xff"), os.O_CREAT | os.O_WRONLY, 0o600))
    peer = connect(server.url)
    peer.initialize()
    entries = peer.call("fs/readDirectory", {"path": "file://%s" % tmp_path})["entries"]
    assert len(entries) == 1 and entries[0]["fileName"].startswith("bad-")
    assert peer.call("process/terminate", {"processId": "x"}) == {"running": False}


def _close_code(sock) -> int:
    """The code of the Close frame the server sends first on ``sock`` (closed after); within 5 s."""
    try:
        sock.settimeout(5)
        data = b""
        while len(data) < 4:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    assert data[0] & 0x0F == 8, data[:4]  # a Close frame
    return struct.unpack("!H", data[2:4])[0]


def test_invalid_utf8_text_frame_is_closed_with_1007(server, caplog):
    caplog.set_level(logging.ERROR, logger="exec_server")
    sock = _upgrade(urlsplit(server.url).port)
    sock.sendall(_frame(1, b'{"id":1,"method":"initialize","params":{"clientName":"\xff"}}'))
    assert _close_code(sock) == 1007
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("fragment", [b"", b"xy"])
def test_a_message_of_many_tiny_fragments_is_closed_with_1009(configured_server, fragment):
    """Each fragment after the first counts FRAGMENT_OVERHEAD_BYTES against --max-message-bytes: empty or tiny
    ones cannot grow the server's memory past the limit while the payload stays below it."""
    from exec_server.server.websocket import FRAGMENT_OVERHEAD_BYTES

    limit = 65536
    running = configured_server(max_message_bytes=limit)
    sock = _upgrade(urlsplit(running.url).port)
    count = 2 * limit // FRAGMENT_OVERHEAD_BYTES  # payload 0 or 4 x count bytes: below the limit either way
    assert len(fragment) * count < limit
    sock.sendall(_frame(1, fragment, fin=False) + _frame(0, fragment, fin=False) * count)
    assert _close_code(sock) == 1009


def test_one_frame_arriving_in_many_tcp_segments_is_one_fragment(configured_server):
    """A frame just under --max-message-bytes that arrives 1 KB at a time is one message, not many fragments:
    answered, not closed with 1009 (wsproto reports each piece of a frame as it arrives)."""
    import json
    import socket
    import time

    limit = 65536
    running = configured_server(max_message_bytes=limit)
    sock = _upgrade(urlsplit(running.url).port)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    text = json.dumps({"id": 1, "method": "initialize", "params": {"clientName": "x" * (limit - 2000)}}).encode()
    frame = _frame(1, text)
    try:
        for start in range(0, len(frame), 1024):
            sock.sendall(frame[start:start + 1024])
            time.sleep(0.001)
        sock.settimeout(10)
        data = b""
        while b"sessionId" not in data:
            chunk = sock.recv(65536)
            assert chunk, data[:64]
            data += chunk
    finally:
        sock.close()
    assert data[0] == 0x81  # a text frame: the initialize response, not a Close


def _junk(count: int, value: str = "0") -> str:
    """A process/terminate request whose params hold an array of ``count`` times ``value``."""
    return '{"id":5,"method":"process/terminate","params":{"processId":"x","junk":[%s]}}' % ",".join([value] * count)


def test_a_request_of_more_json_values_than_the_limit_is_refused_undecoded(server, connect):
    """Decoded, each ``[],`` became ~64 bytes of objects (16 MiB of them: ~420 MiB more, 120 MiB: 3.3 GiB) and
    the decode held every other connection: now a request that may hold more than MAX_REQUEST_VALUES is refused
    (-32600) before it is decoded, and the connection goes on; one within it is decoded and answered."""
    from exec_server.protocol.jsonrpc import MAX_REQUEST_VALUES

    assert MAX_REQUEST_VALUES == 1_000_000
    peer = connect(server.url)
    peer.initialize()
    peer.send(_junk(MAX_REQUEST_VALUES - 5))  # 6 commas, brackets and braces around them, + 1
    refusal = peer.wait_for(lambda m: m.get("id") == 5, timeout=30)  # its id, read undecoded at its start
    peer.received.remove(refusal)
    error = refusal["error"]
    assert error["code"] == -32600 and error["message"].startswith(PREFIX)
    assert error["message"].endswith(": a message of more than 1000000 commas, brackets and braces is refused "
                                     "(MAX_REQUEST_VALUES)")
    peer.send(_junk(MAX_REQUEST_VALUES - 6))  # at the limit
    reply = peer.wait_for(lambda m: m.get("id") == 5, timeout=30)
    assert reply["result"] == {"running": False}  # decoded and answered (an unknown member is ignored, as by serde)
    assert peer.request("process/terminate", {"processId": "none"})["result"] == {"running": False}


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM, the peak RSS, from /proc")
def test_a_request_of_many_tiny_values_does_not_blow_up_the_servers_memory():
    """16 MiB of ``[],`` over stdio: the server's peak RSS grew by ~420 MiB; now by about the line's size."""
    import json
    import subprocess
    import sys

    def peak_mib(pid: int) -> float:
        with open("/proc/%d/status" % pid) as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024

    child = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "stdio"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        child.stdin.write(b'{"id":1,"method":"initialize","params":{"clientName":"t"}}\n')
        child.stdin.flush()
        assert json.loads(child.stdout.readline())["id"] == 1
        before = peak_mib(child.pid)
        child.stdin.write(_junk((16 << 20) // 3, "[]").encode() + b"\n")
        child.stdin.flush()
        assert json.loads(child.stdout.readline())["error"]["code"] == -32600
        assert peak_mib(child.pid) - before < 100
    finally:
        child.stdin.close()
        child.wait(30)
        child.stdout.close()


def test_a_request_refused_past_the_value_limit_is_answered_with_its_id(server):
    """Commas inside strings count too: a start with ~1 MiB of commas in its arguments was refused with id -1,
    so the client waited for its answer to the end of its timeout (70 s); the refusal names the request's id now,
    and the call fails at once."""
    import time

    from exec_server import Client, RpcError

    with Client.connect(server.url, timeout=10) as client:
        began = time.monotonic()
        with pytest.raises(RpcError) as refused:
            client.start(["true"] + ["," * 131000] * 8, timeout=60)
        assert time.monotonic() - began < 20
        assert refused.value.code == -32600 and "(MAX_REQUEST_VALUES)" in refused.value.message
        assert client.run(["echo", "ok"], timeout=30).stdout == b"ok\n"  # the connection goes on
