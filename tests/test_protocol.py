"""Wire behaviour, run against our server and the Codex reference (interop).

Each test drives a raw JSON-RPC peer and asserts what PROTOCOL.md specifies;
running it on both servers proves they agree on bytes, exit codes, error codes
and notification order.
"""

import base64
import os
import time

import pytest

from conftest import pid_alive, start_params, wait_until

pytestmark = pytest.mark.posix


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def ready_peer(connect, any_server):
    peer = connect(any_server.url)
    peer.initialize()
    return peer


def error_of(reply):
    assert "error" in reply, reply
    return reply["error"]["code"], reply["error"]["message"]


# ------------------------------------------------------------------ handshake
def test_initialize_result_shape(connect, any_server):
    peer = connect(any_server.url)
    result = peer.call("initialize", {"clientName": "probe", "extra": 1})
    assert len(result["sessionId"]) == 36
    info = result["environmentInfo"]
    assert info["platformOs"] == "linux"
    assert info["cwd"].startswith("file:///")
    assert list(info)[:2] == ["shell", "executorVersion"]


def test_handshake_order_errors(connect, any_server):
    peer = connect(any_server.url)
    assert error_of(peer.request("process/read", {"processId": "x"})) == (
        -32600, "client must call initialize before using exec methods")
    assert error_of(peer.request("environment/info")) == (
        -32600, "client must call initialize before using environment info methods")
    peer.call("initialize", {"clientName": "probe"})
    assert error_of(peer.request("environment/status")) == (
        -32600, "client must send initialized before using environment status methods")
    assert error_of(peer.request("initialize", {"clientName": "again"})) == (
        -32600, "initialize may only be sent once per connection")
    assert error_of(peer.request("initialize", {})) == (-32602, "missing field `clientName`")
    peer.send({"method": "initialized", "params": {}})
    assert peer.call("environment/status") == {"status": "ready"}
    peer.send({"method": "initialized"})  # a repeated initialized is accepted silently
    assert peer.call("environment/info")["platformOs"] == "linux"


def test_failed_initialize_does_not_consume_connection(connect, any_server):
    peer = connect(any_server.url)
    assert error_of(peer.request("initialize"))[0] == -32602
    assert error_of(peer.request("initialize", {"clientName": "x", "resumeSessionId": "nope"})) == (
        -32600, "unknown session id nope")
    assert peer.call("initialize", {"clientName": "x"})["sessionId"]


@pytest.mark.parametrize("method", ["no/such", "http/request", "fs/watchMissing", "initialized"])
def test_unrouted_methods(connect, any_server, method):
    if any_server.is_reference and method in ("http/request", "fs/watchMissing"):
        pytest.skip("the reference routes these (PROTOCOL.md 13)")
    peer = connect(any_server.url)
    for _ in range(2):
        reply = peer.request(method, {})
        assert error_of(reply) == (-32601, "exec-server stub does not implement `%s` yet" % method)
        peer.initialize() if "sessionId" not in str(peer.received) else None


# ------------------------------------------------------------------- envelope
@pytest.mark.parametrize("text, suffix", [
    ("{not json", None),
    ("[]", "expected a JSON-RPC object"),
    ("[{\"id\":1,\"method\":\"environment/status\"}]", "expected a JSON-RPC object"),
    ("42", "expected a JSON-RPC object"),
    ("{\"id\":null,\"method\":\"initialize\"}", "data did not match any variant of untagged enum RequestId"),
    ("{\"id\":1.5,\"method\":\"initialize\"}", "data did not match any variant of untagged enum RequestId"),
    ("{\"id\":true,\"method\":\"initialize\"}", "data did not match any variant of untagged enum RequestId"),
    ("{\"id\":[1],\"method\":\"initialize\"}", "data did not match any variant of untagged enum RequestId"),
    ("{\"id\":1,\"method\":\"initialize\",\"params\":{\"clientName\":\"x\"},\"trace\":\"x\"}",
     "invalid type: string \"x\", expected struct W3cTraceContext"),
    ("{}", "missing field `error`"),
])
def test_envelope_errors_keep_connection(connect, any_server, text, suffix):
    peer = connect(any_server.url)
    peer.send(text)
    reply = peer.recv()
    assert reply["id"] == -1
    code, message = error_of(reply)
    assert code == -32600
    assert message.startswith("failed to parse websocket JSON-RPC message from exec-server websocket 127.0.0.1:")
    if suffix is not None:
        assert message.endswith(": " + suffix)
    assert peer.call("initialize", {"clientName": "after"})["sessionId"]


@pytest.mark.parametrize("request_id", [0, -7, 9007199254740993, "", "x-1"])
def test_ids_are_echoed_with_their_type(connect, any_server, request_id):
    peer = connect(any_server.url)
    peer.send({"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": {"clientName": "x"}})
    reply = peer.recv()
    assert reply["id"] == request_id and type(reply["id"]) is type(request_id)
    assert "jsonrpc" not in reply


def test_binary_frames_are_accepted(connect, any_server):
    peer = connect(any_server.url)
    peer.send(b'{"id":1,"method":"initialize","params":{"clientName":"bin"}}')
    assert "result" in peer.recv()


@pytest.mark.parametrize("message", [
    {"method": "some/notification", "params": {}},
    {"method": "environment/info"},
    {"id": 50, "result": {}},
    {"id": 50, "error": {"code": 1, "message": "x"}},
])
def test_protocol_violations_close_the_connection(connect, any_server, message):
    peer = connect(any_server.url)
    peer.initialize()
    peer.send(message)
    assert peer.is_disconnected()


def test_initialized_before_initialize_closes(connect, any_server):
    peer = connect(any_server.url)
    peer.send({"method": "initialized", "params": {}})
    assert peer.is_disconnected()


# --------------------------------------------------------------------- params
@pytest.mark.parametrize("tty,message", [(False, "missing program for pipe spawn"),
                                         (True, "missing program for PTY spawn")])
def test_an_empty_program_name_is_named(connect, any_server, tty, message):
    peer = ready_peer(connect, any_server)
    reply = peer.request("process/start", start_params("e", [""], tty=tty))
    assert error_of(reply) == (-32603, message)


@pytest.mark.parametrize("method, params, message", [
    ("process/start", {"processId": 5, "argv": ["true"], "cwd": "file:///tmp", "env": {}, "tty": False},
     "invalid type: number, expected a string"),
    ("process/start", {"processId": "a", "argv": "x", "cwd": "file:///tmp", "env": {}, "tty": False},
     "invalid type: string \"x\", expected a sequence"),
    ("process/start", {"processId": "a", "argv": ["true"], "cwd": "file:///tmp", "env": {}},
     "missing field `tty`"),
    ("process/start", {"processId": "a", "argv": ["true"], "cwd": "file:///tmp", "env": {}, "tty": 1},
     "invalid type: number, expected a boolean"),
    ("process/start", {"processId": "a", "argv": ["true"], "cwd": "/tmp", "env": {}, "tty": False},
     "invalid URI: relative URL without a base"),
    ("process/start", {"processId": "a", "argv": ["true"], "cwd": "tmp", "env": {}, "tty": False},
     "invalid URI: relative URL without a base"),
    ("process/start", {"processId": "a", "argv": ["true"], "cwd": "http://x/tmp", "env": {}, "tty": False},
     "unsupported path URI scheme `http`"),
    ("process/start", {"processId": "a", "argv": ["true"], "cwd": "file://tmp/", "env": {}, "tty": False},
     "cwd URI `file://tmp/` is not valid on this exec-server host: 'file://tmp/' is invalid on 'linux'"),
    ("process/start", {"processId": "a", "argv": ["true"], "cwd": "file:///tmp?x", "env": {}, "tty": False},
     "query parameters are not allowed in path URIs"),
    ("process/start", {"processId": "a", "argv": ["true"], "cwd": "file:///tmp#", "env": {}, "tty": False},
     "fragments are not allowed in path URIs"),
    ("process/start", {"processId": "a", "argv": [], "cwd": "file:///tmp", "env": {}, "tty": False},
     "argv must not be empty"),
    ("process/start", {"processId": "a", "argv": ["true"], "cwd": "file:///tmp", "env": {}, "tty": False,
                       "envPolicy": {"inherit": "all"}}, "missing field `ignoreDefaultExcludes`"),
    ("process/start", {"processId": "a", "argv": ["true"], "cwd": "file:///tmp", "env": {}, "tty": False,
                       "envPolicy": {"inherit": "xx", "ignoreDefaultExcludes": True, "exclude": [], "set": {},
                                     "includeOnly": []}},
     "unknown variant `xx`, expected one of `core`, `all`, `none`"),
    ("process/start", {"processId": "a", "argv": ["true"], "cwd": "file:///tmp", "env": {}, "tty": False,
                       "enforceManagedNetwork": True}, "enforceManagedNetwork is not supported by this exec-server"),
    ("process/read", {"processId": "a", "afterSeq": -1}, "invalid number"),
    ("process/read", {"processId": "a", "afterSeq": 1.5}, "invalid number"),
    ("process/read", {"processId": "a", "afterSeq": 1.0}, "invalid number"),  # serde: a float is no integer
    ("process/read", {"processId": "a", "waitMs": 1e3}, "invalid number"),
    ("process/read", {"processId": "a", "afterSeq": "x"}, "invalid type: string \"x\", expected u64"),
    ("process/read", {"processId": "a", "maxBytes": True}, "invalid type: boolean `true`, expected usize"),
    ("process/read", {"processId": "a", "maxBytes": 1.5}, "invalid number"),
    ("process/terminate", [], "invalid length 0, expected struct TerminateParams with 1 element"),
    ("process/read", {}, "missing field `processId`"),
    ("process/signal", {"processId": "a", "signal": "kill"}, "unknown variant `kill`, expected `interrupt`"),
    ("process/write", {"processId": "a", "chunk": "aGk="}, "missing field `writeId`"),
    ("process/write", {"processId": "a", "chunk": "aGk=", "writeId": ""}, "writeId must not be empty"),
    ("process/write", {"processId": "a", "chunk": "!", "writeId": "w"}, "Invalid symbol 33, offset 0."),
    ("initialize", None, "invalid type: null, expected struct InitializeParams"),
    ("process/start", {"processId": "a", "argv": ["true"], "cwd": "file:///tmp", "env": {"A=B": "c"}, "tty": False},
     "env key `A=B` contains `=`, which no environment variable name can hold"),
    # methods without params take null, {} or nothing (serde's unit)
    ("environment/status", {"x": 1}, "invalid type: map, expected unit"),
    ("environment/status", [], "invalid type: sequence, expected unit"),
    ("environment/info", {"x": 1}, "invalid type: map, expected unit"),
    ("environment/info", "s", "invalid type: string \"s\", expected unit"),
])
def test_invalid_params(connect, any_server, method, params, message):
    if method == "process/start" and "enforceManagedNetwork" in (params or {}) and any_server.is_reference:
        pytest.skip("enforceManagedNetwork is this project's refusal (PROTOCOL.md 13)")
    if method == "process/start" and "A=B" in (params or {}).get("env", {}) and any_server.is_reference:
        pytest.skip("the reference starts it (README: an env name holding '=')")
    peer = connect(any_server.url) if method == "initialize" else ready_peer(connect, any_server)
    assert error_of(peer.request(method, params)) == (-32602, message)


# ------------------------------------------------------------------ processes
def test_pipe_notification_order(connect, any_server):
    peer = ready_peer(connect, any_server)
    script = "echo hi; sleep 0.05; echo err >&2; exit 3"
    result = peer.call("process/start", start_params("p", ["/bin/sh", "-c", script]))
    assert result == {"processId": "p", "sandboxType": "none"}
    events = peer.wait_closed("p")
    start_index = next(i for i, m in enumerate(peer.received) if m.get("result") == result)
    first_event = next(i for i, m in enumerate(peer.received) if m.get("method", "").startswith("process/"))
    if not any_server.is_reference:  # the reference itself sometimes sends output before the response
        assert start_index < first_event
    if any_server.is_reference:
        # it sometimes delivers exited early, and under load even numbers it before the last output
        events.sort(key=lambda m: m["params"]["seq"])
        assert [m["params"]["seq"] for m in events] == [1, 2, 3, 4] and events[-1]["method"] == "process/closed"
        outputs = [(m["params"]["stream"], m["params"]["chunk"]) for m in events if m["method"] == "process/output"]
        assert outputs == [("stdout", "aGkK"), ("stderr", "ZXJyCg==")]
        exited = [m["params"] for m in events if m["method"] == "process/exited"]
        assert [dict(e, seq=None) for e in exited] == [{"processId": "p", "seq": None, "exitCode": 3,
                                                        "sandboxDenied": False}]
    else:
        assert [(m["method"], m["params"]["seq"]) for m in events] == [
            ("process/output", 1), ("process/output", 2), ("process/exited", 3), ("process/closed", 4)]
        assert events[0]["params"]["stream"] == "stdout" and events[0]["params"]["chunk"] == "aGkK"
        assert events[1]["params"]["stream"] == "stderr" and events[1]["params"]["chunk"] == "ZXJyCg=="
        assert events[2]["params"] == {"processId": "p", "seq": 3, "exitCode": 3, "sandboxDenied": False}
    for message in events:
        peer.call  # schema of each notification
        from conftest import SCHEMAS
        SCHEMAS.validate(message["method"] + ".notification.json", message["params"])


def test_tty_process_uses_a_real_pty(connect, any_server):
    peer = ready_peer(connect, any_server)
    peer.call("process/start", start_params("t", ["/bin/sh", "-c", "test -t 0 && test -t 1 && echo tty; stty size"],
                                            tty=True))
    events = peer.wait_closed("t")
    output = b"".join(unb64(m["params"]["chunk"]) for m in events if m["method"] == "process/output")
    assert output == b"tty\r\n24 80\r\n"
    assert {m["params"]["stream"] for m in events if m["method"] == "process/output"} == {"pty"}
    assert [m for m in events if m["method"] == "process/exited"][0]["params"]["exitCode"] == 0


def test_read_after_close(connect, any_server):
    peer = ready_peer(connect, any_server)
    peer.call("process/start", start_params("r", ["/bin/sh", "-c", "echo hi; echo err >&2; exit 3"]))
    peer.wait_closed("r")
    full = peer.call("process/read", {"processId": "r"})
    assert full["nextSeq"] == 5 and full["exited"] and full["closed"] and full["exitCode"] == 3
    assert b"".join(unb64(c["chunk"]) for c in full["chunks"]) in (b"hi\nerr\n", b"err\nhi\n")
    one = peer.call("process/read", {"processId": "r", "afterSeq": None, "maxBytes": 1, "waitMs": 0})
    # one chunk even over budget; nextSeq follows it (seq 1 unless the reference numbered exited first)
    assert len(one["chunks"]) == 1 and one["nextSeq"] == one["chunks"][0]["seq"] + 1
    after = peer.call("process/read", {"processId": "r", "afterSeq": 2})
    if not any_server.is_reference:  # the reference sometimes numbers exited before the last output
        assert after["chunks"] == []
    assert after["nextSeq"] == 5
    assert error_of(peer.request("process/read", {"processId": "nope"})) == (-32600, "unknown process id nope")


def test_read_long_poll_times_out_with_current_state(connect, any_server):
    peer = ready_peer(connect, any_server)
    peer.call("process/start", start_params("idle", ["sleep", "30"]))
    started = time.monotonic()
    result = peer.call("process/read", {"processId": "idle", "waitMs": 300})
    assert time.monotonic() - started >= 0.25
    assert result == {"chunks": [], "nextSeq": 1, "exited": False, "exitCode": None, "closed": False,
                      "failure": None, "sandboxDenied": False}
    assert peer.call("process/terminate", {"processId": "idle"}) == {"running": True}
    peer.wait_closed("idle")


def test_read_long_poll_wakes_on_output(connect, any_server):
    peer = ready_peer(connect, any_server)
    peer.call("process/start", start_params("w", ["/bin/sh", "-c", "sleep 0.3; echo late"]))
    result = peer.call("process/read", {"processId": "w", "waitMs": 10000})
    if not result["chunks"] and result["exited"] and any_server.is_reference:
        # on a loaded machine the reference may wake the poll on the exit before it has recorded the output
        result = peer.call("process/read", {"processId": "w", "afterSeq": 0, "waitMs": 10000})
    assert [unb64(c["chunk"]) for c in result["chunks"]] == [b"late\n"]
    peer.wait_closed("w")


def test_write_statuses_and_idempotency(connect, any_server):
    peer = ready_peer(connect, any_server)
    peer.call("process/start", start_params("cat", ["cat"], pipeStdin=True))
    peer.call("process/start", start_params("nostdin", ["sleep", "30"]))
    write = {"processId": "cat", "chunk": b64(b"one\n"), "writeId": "w-1"}
    assert peer.call("process/write", write) == {"status": "accepted"}
    peer.wait_for(lambda m: m.get("method") == "process/output" and m["params"]["processId"] == "cat")
    assert peer.call("process/write", write) == {"status": "accepted"}  # same writeId: not written again
    assert peer.call("process/write", {"processId": "cat", "chunk": b64(b"two\n"), "writeId": "w-2"}) == {
        "status": "accepted"}
    assert peer.call("process/write", {"processId": "ghost", "chunk": "", "writeId": "w"}) == {
        "status": "unknownProcess"}
    assert peer.call("process/write", {"processId": "nostdin", "chunk": "", "writeId": "w"}) == {
        "status": "stdinClosed"}
    wait_until(lambda: b"".join(unb64(m["params"]["chunk"]) for m in peer.notifications("cat")
                                if m["method"] == "process/output") == b"one\ntwo\n" or peer.recv(0.05) and False)
    peer.call("process/terminate", {"processId": "cat"})
    events = peer.wait_closed("cat")
    assert [m for m in events if m["method"] == "process/exited"][0]["params"]["exitCode"] == 137
    reply = peer.request("process/write", {"processId": "cat", "chunk": b64(b"x"), "writeId": "w-3"})
    assert error_of(reply) == (-32603, "failed to write to process stdin")
    peer.call("process/terminate", {"processId": "nostdin"})
    peer.wait_closed("nostdin")


def test_signal_interrupt_and_terminate(connect, any_server):
    peer = ready_peer(connect, any_server)
    peer.call("process/start", start_params("s", ["sleep", "30"]))
    assert peer.call("process/signal", {"processId": "s", "signal": "interrupt"}) == {}
    events = peer.wait_closed("s")
    assert [m for m in events if m["method"] == "process/exited"][0]["params"]["exitCode"] == 130
    assert peer.call("process/signal", {"processId": "ghost", "signal": "interrupt"}) == {}
    assert peer.call("process/terminate", {"processId": "ghost"}) == {"running": False}
    assert peer.call("process/terminate", {"processId": "s"}) == {"running": False}


def test_terminate_kills_the_whole_tree(connect, any_server_inherit, tmp_path):
    any_server = any_server_inherit  # PIDs read from the child (isolate: tests/test_containment.py)
    peer = ready_peer(connect, any_server)
    pid_file = tmp_path / "grandchild.pid"
    # one background job in the group, one descendant that left it with setsid
    script = "sleep 300 & echo $! > %s; setsid sleep 301 & echo $! >> %s; wait" % (pid_file, pid_file)
    peer.call("process/start", start_params("tree", ["/bin/sh", "-c", script], tty=False))
    pids = wait_until(lambda: [int(x) for x in pid_file.read_text().split()] if pid_file.exists()
                      and len(pid_file.read_text().split()) == 2 else None)
    assert all(pid_alive(pid) for pid in pids)
    if any_server.is_reference:
        # the reference kills the process group only; the setsid grandchild survives it
        os.kill(pids[1], 9)
    assert peer.call("process/terminate", {"processId": "tree"}) == {"running": True}
    events = peer.wait_closed("tree")
    assert [m for m in events if m["method"] == "process/exited"][0]["params"]["exitCode"] == 137
    wait_until(lambda: not any(pid_alive(pid) for pid in pids))


def test_duplicate_and_failed_spawn(connect, any_server):
    peer = ready_peer(connect, any_server)
    peer.call("process/start", start_params("dup", ["sleep", "30"]))
    assert error_of(peer.request("process/start", start_params("dup", ["true"]))) == (
        -32600, "process dup already exists")
    code, message = error_of(peer.request("process/start", start_params("missing", ["no-such-program-xyz"])))
    assert code == -32603 and message.endswith("(os error 2)")
    code, message = error_of(peer.request("process/start", dict(start_params("nocwd", ["true"]),
                                                                cwd="file:///no/such/dir")))
    assert code == -32603 and message.endswith("(os error 2)")
    code, message = error_of(peer.request("process/start", dict(start_params("pathless", ["true"]),
                                                                env={"PATH": "/nonexistent"})))
    assert (code, message) == (-32603, "No such file or directory (os error 2)")
    # a failed spawn does not reserve the id
    peer.call("process/start", start_params("missing", ["true"]))
    peer.wait_closed("missing")
    peer.call("process/terminate", {"processId": "dup"})
    peer.wait_closed("dup")


def test_env_is_exact_without_policy_and_arg0(connect, any_server):
    peer = ready_peer(connect, any_server)
    peer.call("process/start", {"processId": "env", "argv": ["/usr/bin/env"], "cwd": "file:///tmp",
                                "env": {"FOO": "bar"}, "tty": False})
    events = peer.wait_closed("env")
    output = b"".join(unb64(m["params"]["chunk"]) for m in events if m["method"] == "process/output")
    assert output == b"FOO=bar\n"
    peer.call("process/start", start_params("a0", ["/bin/sh", "-c", "echo $0"], arg0="renamed"))
    events = peer.wait_closed("a0")
    assert b"".join(unb64(m["params"]["chunk"]) for m in events if m["method"] == "process/output") == b"renamed\n"


@pytest.mark.parametrize("policy, expected", [
    ({"inherit": "none", "set": {"A": "1"}}, ["A", "EXPLICIT"]),
    ({"inherit": "all", "exclude": ["*"]}, ["EXPLICIT"]),
    ({"inherit": "all", "includeOnly": ["HOME", "PATH"]}, ["EXPLICIT", "HOME", "PATH"]),
    # globs have `*` and `?` only: `[` is itself, as in the reference's wildmatch (fnmatch read a class)
    ({"inherit": "all", "exclude": ["[P]ATH"], "includeOnly": ["PATH", "[HL]OME", "HOM?"]},
     ["EXPLICIT", "HOME", "PATH"]),
])
def test_env_policy(connect, any_server, policy, expected):
    full = {"inherit": "all", "ignoreDefaultExcludes": False, "exclude": [], "set": {}, "includeOnly": []}
    full.update(policy)
    peer = ready_peer(connect, any_server)
    peer.call("process/start", {"processId": "e", "argv": ["/usr/bin/env"], "cwd": "file:///tmp",
                                "env": {"EXPLICIT": "yes"}, "tty": False, "envPolicy": full})
    events = peer.wait_closed("e")
    output = b"".join(unb64(m["params"]["chunk"]) for m in events if m["method"] == "process/output")
    names = sorted(line.split("=", 1)[0] for line in output.decode().splitlines() if "=" in line)
    assert names == expected


def test_eight_mib_arrive_complete_and_in_order(connect, any_server):
    peer = ready_peer(connect, any_server)
    size = 8 * 1024 * 1024
    peer.call("process/start", start_params("big", ["head", "-c", str(size), "/dev/urandom"]))
    events = peer.wait_closed("big", timeout=60)
    seqs = [m["params"]["seq"] for m in events]
    assert sorted(seqs) == list(range(1, len(seqs) + 1))
    total = sum(len(unb64(m["params"]["chunk"])) for m in events if m["method"] == "process/output")
    assert total == size


def test_fifty_processes_at_once(connect, any_server):
    peer = ready_peer(connect, any_server)
    for i in range(50):
        peer.call("process/start", start_params("n%d" % i, ["/bin/sh", "-c", "echo %d" % i]))
    for i in range(50):
        events = peer.wait_closed("n%d" % i, timeout=30)
        output = b"".join(unb64(m["params"]["chunk"]) for m in events if m["method"] == "process/output")
        assert output == b"%d\n" % i
        seqs = [m["params"]["seq"] for m in events]
        if any_server.is_reference:
            seqs.sort()  # the reference sometimes delivers exited before the last output
        assert seqs == list(range(1, len(events) + 1))


def test_exited_precedes_output_of_a_descendant_holding_stdout(connect, any_server_inherit):
    # under isolate the background job ends with the shell (README "Process containment")
    any_server = any_server_inherit
    peer = ready_peer(connect, any_server)
    # the shell exits at once; its background job keeps stdout open and writes later
    peer.call("process/start", start_params("held", ["/bin/sh", "-c", "(sleep 1; echo late) & echo early"]))
    events = peer.wait_closed("held")
    kinds = [(m["method"], unb64(m["params"]["chunk"]) if m["method"] == "process/output" else None)
             for m in events]
    expected = [("process/output", b"early\n"), ("process/exited", None), ("process/output", b"late\n"),
                ("process/closed", None)]
    if any_server.is_reference:  # the reference sometimes delivers exited before the last output
        assert sorted(kinds[:2], key=repr) == sorted(expected[:2], key=repr) and kinds[2:] == expected[2:]
    else:
        assert kinds == expected
        assert [m["params"]["seq"] for m in events] == [1, 2, 3, 4]
    assert [m for m in events if m["method"] == "process/exited"][0]["params"]["exitCode"] == 0


def test_a_held_pipe_after_exit_costs_no_cpu(connect, server):
    import psutil

    peer = ready_peer(connect, server)
    peer.call("process/start", start_params("held", ["/bin/sh", "-c", "sleep 2 & exit 0"]))
    peer.wait_for(lambda m: m.get("method") == "process/exited")
    me = psutil.Process()  # the server runs in this process
    before = sum(me.cpu_times()[:2])
    time.sleep(1)
    assert sum(me.cpu_times()[:2]) - before < 0.3  # no thread polls in a loop while the pipe stays open
    peer.wait_closed("held")


def test_an_integer_too_long_to_convert_is_an_invalid_number(connect, any_server):
    """Thousands of digits (past Python's int conversion limit): the reference's errors, not Python's advice."""
    peer = ready_peer(connect, any_server)
    digits = "9" * 5000
    peer.ws.send('{"id":7,"method":"process/read","params":{"processId":"a","afterSeq":%s}}' % digits)
    assert error_of(peer.wait_for(lambda m: m.get("id") == 7)) == (-32602, "invalid number")
    peer.ws.send('{"id":%s,"method":"environment/status","params":{}}' % digits)
    code, message = error_of(peer.wait_for(lambda m: m.get("id") == -1))
    assert (code, message.split(": ")[-1]) == (-32600, "data did not match any variant of untagged enum RequestId")
