"""Unit tests of the pure modules: JSON-RPC envelope, schemas, URIs, env policy, base64, errors."""

import json
import os

import pytest

from exec_server.protocol import b64, errors, jsonrpc, wire
from exec_server.server.process.env import child_environment
from exec_server.protocol.uris import UriError, path_to_uri, uri_to_path
from exec_server.protocol.schemas import SchemaSet

SCHEMAS = SchemaSet.load()


# ------------------------------------------------------------------- jsonrpc
def test_error_codes_are_pinned():
    assert {cls.__name__: cls.code for cls in errors.ERROR_CLASSES.values()} == {
        "InvalidRequest": -32600, "MethodNotFound": -32601, "InvalidParams": -32602,
        "InternalError": -32603, "NotFound": -32004, "SessionAlreadyAttached": -32010, "ParseError": -32700,
        "ServerOverloaded": -32001}
    assert errors.InvalidParams("x").to_dict() == {"code": -32602, "message": "x"}
    assert isinstance(errors.error_from_dict({"code": -32004, "message": "m"}), errors.NotFound)
    assert errors.error_from_dict({"code": 7, "message": "m"}).code == 7


@pytest.mark.parametrize("text, expected", [
    ('{"id":1,"method":"a","params":{"x":1}}', jsonrpc.Request(1, "a", {"x": 1})),
    ('{"jsonrpc":"2.0","id":"s","method":"a"}', jsonrpc.Request("s", "a", None)),
    ('{"method":"n"}', jsonrpc.Notification("n", None)),
    ('{"method":"n","trace":"bad"}', jsonrpc.Notification("n", None)),  # bad carrier dropped
    ('{"id":3,"result":{}}', jsonrpc.Response(3, {})),
    ('{"id":3,"error":{"code":1,"message":"m"}}', jsonrpc.ErrorResponse(3, {"code": 1, "message": "m"})),
    (b'{"id":1,"method":"a"}', jsonrpc.Request(1, "a", None)),
])
def test_parse_message(text, expected):
    parsed = jsonrpc.parse_message(text)
    assert (type(parsed), parsed) == (type(expected), expected)  # tuples: equal values alone would not tell types


def test_parse_trace_context():
    message = jsonrpc.parse_message('{"id":1,"method":"a","trace":{"traceparent":"00-a-b-01"}}')
    assert message.trace == jsonrpc.TraceContext("00-a-b-01", None)


@pytest.mark.parametrize("text, description", [
    ("[]", "expected a JSON-RPC object"),
    ("null", "expected a JSON-RPC object"),
    ('{"id":9223372036854775808,"method":"a"}', "data did not match any variant of untagged enum RequestId"),
    ('{"id":{},"method":"a"}', "data did not match any variant of untagged enum RequestId"),
    ('{"id":1,"method":"a","trace":[]}', "invalid type: sequence, expected struct W3cTraceContext"),
    ('{"id":1,"method":2}', "invalid type: number, expected a string"),
    ('{"id":1}', "missing field `error`"),
    ('{"id":1,"method":"a","x":NaN}', None),
    (b'\xff', None),
])
def test_envelope_errors(text, description):
    with pytest.raises(jsonrpc.EnvelopeError) as caught:
        jsonrpc.parse_message(text)
    if description is not None:
        assert caught.value.description == description


DEEP = "[" * 100000 + "]" * 100000  # past Python's JSON decoder's depth (~1000 levels; 3.13: tens of thousands)


@pytest.mark.parametrize("text, expected", [
    ('{"id":3,"error":"boom"}', 3),
    (b'{"id":"s","result":1,"error":null}', "s"),
    ('{"id":3,"method":"a","params":7}', None),  # a request, not an answer
    ('{"id":[3],"result":1}', None), ('{"id":true,"result":1}', None), ("[1]", None), ('"id"', None),
    ('{"id":5,"result":%s}' % DEEP, 5),  # too deep to decode: the id is read where our servers put it
    ('{"error":{"data":%s},"id":"x\\"y"}' % DEEP, 'x"y'),
    (b'{"result":%s,"id":-7}' % DEEP.encode(), -7),
    ('{"result":%s,"id":5,"x":1}' % DEEP, None),  # an id between other members is not looked for
    ('{"result":{"id":5,"x":%s}}' % DEEP, None), ('{"result":[%s,{"id":5}]}' % DEEP, None),
])
def test_answer_id(text, expected):
    """The id of an answer parse_message refused; a text too deep to decode raised RecursionError."""
    assert jsonrpc.answer_id(text) == expected


def test_encode_member_order_and_no_jsonrpc():
    assert jsonrpc.encode(jsonrpc.Response(1, {"a": "é"})) == '{"id":1,"result":{"a":"é"}}'
    assert jsonrpc.encode(jsonrpc.ErrorResponse(-1, {"code": -32600, "message": "m"})) == \
        '{"error":{"code":-32600,"message":"m"},"id":-1}'
    assert jsonrpc.encode(jsonrpc.Notification("process/closed", {"processId": "p", "seq": 4})) == \
        '{"method":"process/closed","params":{"processId":"p","seq":4}}'
    assert jsonrpc.encode(jsonrpc.Request(2, "m", {}, jsonrpc.TraceContext("tp"))) == \
        '{"id":2,"method":"m","params":{},"trace":{"traceparent":"tp"}}'


@pytest.mark.parametrize("process_id", ["p", "", 'quo"te\\', "ünï"])
def test_output_fast_path_equals_encoder(process_id):
    params = {"processId": process_id, "seq": 7, "stream": "stdout", "chunk": "aGkK"}
    assert wire.encode_output_notification(process_id, 7, "stdout", "aGkK") == \
        jsonrpc.encode(jsonrpc.Notification("process/output", params))


_HEAD = '{"method":"process/output","params":{"processId":"p","seq":'


@pytest.mark.parametrize("text", [
    _HEAD + '1,"stream":"stdout","chunk":"}}',  # the tail is the chunk's opening quote: no string
    _HEAD + '1,"stream":"stdout","chunk":"aGkK"}}\n',
    _HEAD + '01,"stream":"stdout","chunk":"aGkK"}}',
    _HEAD + '-1,"stream":"stdout","chunk":"aGkK"}}',
    _HEAD + '1.0,"stream":"stdout","chunk":"aGkK"}}',
    _HEAD + '1234567890123456789,"stream":"stdout","chunk":"aGkK"}}',
    _HEAD + '1,"stream":"stdout","chunk":"aGkK","trace":{}}}',
    '{"method":"process/output","params":{"processId":"p\\u0041","seq":1,"stream":"stdout","chunk":"aGkK"}}',
    '{"method":"process/output","params":{"seq":1,"processId":"p","stream":"stdout","chunk":"aGkK"}}',
    '{"method": "process/output","params":{"processId":"p","seq":1,"stream":"stdout","chunk":"aGkK"}}',
    '{"jsonrpc":"2.0","method":"process/output","params":{"processId":"p","seq":1,"stream":"stdout","chunk":"aGkK"}}',
])
def test_output_matcher_leaves_other_forms_to_the_json_parser(text):
    assert wire.match_output_notification(text) is None


@pytest.mark.parametrize("kind", [str, bytes, bytearray])
def test_output_event_from_text_of_every_transport(kind):
    """WebSocket text frames are str, stdio lines and binary frames UTF-8 bytes."""
    from exec_server.client.events import OutputEvent, output_event_from_text
    text = wire.encode_output_notification("pröc", 3, "stderr", "aGkK")
    given = text if kind is str else kind(text.encode())
    assert output_event_from_text(given) == ("pröc", OutputEvent(3, "stderr", b"hi\n"))
    assert output_event_from_text(given[:-1]) is None
    if kind is not str:
        assert output_event_from_text(kind(text.encode()[:-8] + b"\xff\"}}")) is None


def test_output_matcher_reads_the_reference_example():
    """PROTOCOL.md 5.3's example, as the reference writes it."""
    text = '{"method":"process/output","params":{"processId":"proc-1","seq":1,"stream":"stdout","chunk":"aGkK"}}'
    assert wire.match_output_notification(text) == ("proc-1", 1, "stdout", "aGkK")
    assert wire.match_output_notification(text.replace('"aGkK"', '""')) == ("proc-1", 1, "stdout", "")


@pytest.mark.parametrize("result", [
    {"chunks": [], "nextSeq": 1, "exited": False, "exitCode": None, "closed": False, "failure": None,
     "sandboxDenied": False},
    {"chunks": [{"seq": 1, "stream": "stdout", "chunk": "aGkK"}, {"seq": 2, "stream": "pty", "chunk": ""}],
     "nextSeq": 5, "exited": True, "exitCode": -1, "closed": True, "failure": None, "sandboxDenied": True},
])
def test_read_result_fast_path_equals_encoder(result):
    assert str(wire.encode_read_result(result)) == jsonrpc.dumps(result)
    assert jsonrpc.encode(jsonrpc.Response(7, wire.encode_read_result(result))) == \
        jsonrpc.encode(jsonrpc.Response(7, result))


# ---------------------------------------------------------------- validation
def test_every_routed_method_has_params_and_result_schemas():
    from exec_server.server.handlers import METHODS
    for method in list(METHODS) + ["initialize"]:
        assert SCHEMAS.has(method + ".params.json"), method
        assert SCHEMAS.has(method + ".result.json"), method


def test_schema_error_names_json_path():
    with pytest.raises(errors.InvalidParams) as caught:
        SCHEMAS.validate_params("process/start", {"processId": "a", "argv": ["x", 5], "cwd": "file:///",
                                                  "env": {}, "tty": False})
    assert caught.value.message == "invalid type: number, expected a string"
    assert caught.value.data == {"path": "$.argv[1]"}


@pytest.mark.parametrize("member, value, path", [
    ("argv", ["x", "y"] + [5] * 20000, "$.argv[2]"),
    ("env", dict({"A": "x", "B": "y"}, **{"N%d" % i: i for i in range(20000)}), "$.env.N0"),
    ("envPolicy", {"inherit": "all", "ignoreDefaultExcludes": False, "exclude": ["x"] + [1] * 20000, "set": {},
                   "includeOnly": []}, "$.envPolicy.exclude[1]"),
])
def test_many_bad_items_cost_one_error(member, value, path):
    """serde names the first bad item; jsonschema made an error object of every one (20000 numbers in argv:
    ~70 MB; a 128 MiB message of them took the server's memory), and picking one was quadratic for a map."""
    import time
    import tracemalloc

    params = {"processId": "a", "argv": ["true"], "cwd": "file:///", "env": {}, "tty": False, member: value}
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(errors.InvalidParams) as caught:
            SCHEMAS.validate_params("process/start", params)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (caught.value.message, caught.value.data) == ("invalid type: number, expected a string", {"path": path})
    assert peak < 8 << 20 and time.monotonic() - started < 5.0


def test_first_missing_field_in_declaration_order():
    with pytest.raises(errors.InvalidParams) as caught:
        SCHEMAS.validate_params("process/start", {})
    assert caught.value.message == "missing field `processId`"


def test_present_member_errors_come_before_missing_fields():
    with pytest.raises(errors.InvalidParams) as caught:
        SCHEMAS.validate_params("process/start", {"processId": 1})
    assert caught.value.message == "invalid type: number, expected a string"


def test_unknown_members_are_ignored():
    SCHEMAS.validate_params("initialize", {"clientName": "probe", "extra": 1})


# ---------------------------------------------------------------------- uris
@pytest.mark.parametrize("uri, path", [
    ("file:///tmp/a%20b", "/tmp/a b"),
    ("file:///root/..", "/"),
    ("file:///tmp/./x/../y/", "/tmp/y"),
    ("file://localhost/etc", "/etc"),
    ("FILE:///x", "/x"),
])
def test_uri_to_path(uri, path):
    assert uri_to_path(uri, windows=False) == path


@pytest.mark.parametrize("uri, kind, message", [
    ("/tmp", "relative", "invalid URI: relative URL without a base"),
    ("a.txt", "relative", "invalid URI: relative URL without a base"),
    ("http://x/y", "scheme", "unsupported path URI scheme `http`"),
    ("file://host/tmp/x", "host", "'file://host/tmp/x' is invalid on 'linux'"),
])
def test_uri_errors(uri, kind, message):
    with pytest.raises(UriError) as caught:
        uri_to_path(uri, windows=False)
    assert (caught.value.kind, caught.value.message) == (kind, message)


def test_windows_uris():
    assert uri_to_path("file:///C:/Users/a%20b", windows=True) == "C:\\Users\\a b"
    assert path_to_uri("C:\\Users\\x", windows=True) == "file:///C:/Users/x"


def test_path_to_uri_round_trips():
    for path in ["/tmp/a b", "/x/#?%", "/ünï/c", "/"]:
        assert uri_to_path(path_to_uri(path, windows=False), windows=False) == path
    with pytest.raises(ValueError):
        path_to_uri("relative", windows=False)


# ----------------------------------------------------------------- envpolicy
SERVER_ENV = {"HOME": "/h", "LANG": "C", "PATH": "/bin", "SHELL": "/bin/sh", "API_KEY": "k", "MY_TOKEN": "t",
              "OTHER": "o", "CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE": "1"}


def policy(**kw):
    base = {"inherit": "all", "ignoreDefaultExcludes": False, "exclude": [], "set": {}, "includeOnly": []}
    base.update(kw)
    return base


@pytest.mark.parametrize("pol, names", [
    (None, ["EXPLICIT"]),
    (policy(inherit="none", set={"A": "1"}), ["A", "EXPLICIT"]),
    (policy(inherit="core"), ["EXPLICIT", "HOME", "LANG", "PATH", "SHELL"]),
    (policy(exclude=["*"]), ["EXPLICIT"]),
    (policy(includeOnly=["home", "PATH"]), ["EXPLICIT", "HOME", "PATH"]),
    (policy(), ["EXPLICIT", "HOME", "LANG", "OTHER", "PATH", "SHELL"]),
    (policy(ignoreDefaultExcludes=True), ["API_KEY", "EXPLICIT", "HOME", "LANG", "MY_TOKEN", "OTHER", "PATH", "SHELL"]),
    (policy(exclude=["O?HER"]), ["EXPLICIT", "HOME", "LANG", "PATH", "SHELL"]),
])
def test_child_environment(pol, names):
    assert sorted(child_environment({"EXPLICIT": "yes"}, pol, SERVER_ENV)) == names


def test_env_globs_are_the_references_and_keep_nothing():
    """``*`` and ``?`` only, matched without a regular expression: fnmatch compiled each pattern and kept
    up to 32768 of them (a client's 4 MiB of patterns cost ~6 s of CPU and ~80 MiB never returned)."""
    import fnmatch

    from exec_server.server.process.env import glob_match
    cases = [("PATH", "P?TH", True), ("PATH", "*", True), ("", "*", True), ("", "?", False),
             ("[P]ATH", "[P]ATH", True), ("PATH", "[P]ATH", False), ("A\\B", "A\\B", True), ("ABAB", "*AB", True),
             ("ABA", "A*B*A", True), ("AB", "A*B*A", False), ("BB", "*B?*BB", False), ("XAYB", "*A?B", True),
             ("AAB", "A*?B", True), ("Z" + "AB" * 1000 + "C", "*" + "A?" * 1000 + "C", True),
             ("A" * 4000, "*" + "A?" * 1000 + "B*", False)]
    for name, pattern, expected in cases:
        assert glob_match(name, pattern) is expected, (name, pattern)
    before = fnmatch._compile_pattern.cache_info().currsize
    unique = "%d-%d" % (os.getpid(), id(cases))
    pol = policy(exclude=[unique + "A" * (1 << 20)], includeOnly=["*" + unique + "?"])
    assert child_environment({}, pol, SERVER_ENV) == {}
    assert fnmatch._compile_pattern.cache_info().currsize == before


def test_env_overrides_set():
    env = child_environment({"A": "env"}, policy(inherit="none", set={"A": "set"}), {})
    assert env == {"A": "env"}


# --------------------------------------------------------------------- base64
# Each text below is the reference server's answer to the same chunk (fs/writeBlock, process/write and
# fs/writeFile all decode with its one decoder); 3,600 random strings over "AQBgw/+=!\n é" matched too.
@pytest.mark.parametrize("text, message", [
    ("!", "Invalid symbol 33, offset 0."),
    ("aGk!", "Invalid symbol 33, offset 3."),
    ("a", "Invalid input length: 1"),
    ("aGk", "Invalid padding"),
    ("aGkK=", "Invalid symbol 61, offset 4."),
    ("é", "Invalid symbol 195, offset 0."),
    ("AB==", "Invalid last symbol 66, offset 1."),
    ("AAB=", "Invalid last symbol 66, offset 2."),
    ("AAAA====", "Invalid symbol 61, offset 4."),
    ("=", "Invalid symbol 61, offset 0."),
    ("====", "Invalid symbol 61, offset 0."),
    ("QQ===", "Invalid symbol 61, offset 2."),
    ("A===", "Invalid symbol 61, offset 1."),
    ("aGVsbG8=\n", "Invalid symbol 10, offset 8."),
    ("QQ==QQ==", "Invalid symbol 61, offset 2."),
    ("QUJDRA=", "Invalid padding"),
    ("QUJDRA==x", "Invalid symbol 61, offset 6."),
    ("QUJDR", "Invalid input length: 5"),
])
def test_base64_errors(text, message):
    with pytest.raises(ValueError) as caught:
        b64.decode(text)
    assert str(caught.value) == message


def test_base64_round_trip():
    for data in [b"", b"h", b"hi", b"hi\n", bytes(range(256))]:
        assert b64.decode(b64.encode(data)) == data
    assert b64.decode("QQ==") == b"A" and b64.decode("QUI=") == b"AB"


def test_schema_files_are_valid_json():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas")
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                assert json.load(handle)["$schema"].endswith("2020-12/schema")


def test_every_schema_passes_check_schema():
    SchemaSet.load().check_all()  # raises jsonschema.SchemaError for an invalid schema file


def test_a_broken_schema_is_reported_on_first_use(tmp_path):
    import jsonschema

    (tmp_path / "bad.params.json").write_text('{"$schema": "https://json-schema.org/draft/2020-12/schema", '
                                              '"type": "no-such-type"}')
    schemas = SchemaSet.load(str(tmp_path))
    with pytest.raises(jsonschema.SchemaError):
        schemas.validate("bad.params.json", {})


# ----------------------------------------------------------------- allocator
def test_malloc_tuning_applies_on_glibc_and_honours_opt_outs(monkeypatch):
    from exec_server.server import allocator

    if not allocator._is_glibc():
        assert allocator.tune_for_server() is False
        return
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("EXEC_SERVER_MALLOC_TUNING", "off")
    assert allocator.tune_for_server() is False
    monkeypatch.delenv("EXEC_SERVER_MALLOC_TUNING")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # the user's own setting wins
    assert allocator.tune_for_server() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    assert allocator.tune_for_server() is True


# -------------------------------------------------------------- thread_reuse
def test_reusable_threads_reuse_an_idle_thread_and_exit_when_idle():
    import threading

    from conftest import wait_until
    from exec_server.server.threads import ReusableThreads

    threads = ReusableThreads("unit-reuse", idle_seconds=0.3)
    ran = []
    done = threading.Event()

    def job(tag):
        ran.append((tag, threading.get_ident()))
        done.set()

    threads.run(job, "first")
    assert done.wait(5)
    wait_until(lambda: threads._idle == 1)  # the thread waits for another job
    done.clear()
    threads.run(job, "second")
    assert done.wait(5)
    assert [tag for tag, _ in ran] == ["first", "second"]
    assert ran[0][1] == ran[1][1]  # the same thread ran both
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == "unit-reuse"])  # gone when idle
    threads.run(lambda: 1 / 0)  # a failing job is logged, never kills the next one
    done.clear()
    threads.run(job, "third")
    assert done.wait(5)


class _TrickleSocket:
    """Accepts at most ``step`` bytes per ``sendmsg`` call, like a full socket buffer would."""

    def __init__(self, step):
        self.step = step
        self.received = bytearray()
        self.calls = 0

    def sendmsg(self, buffers):
        self.calls += 1
        budget = self.step
        for buffer in buffers:
            taken = bytes(buffer[:budget])
            self.received += taken
            budget -= len(taken)
            if budget == 0:
                break
        return self.step - budget


@pytest.mark.parametrize("step", [1, 3, 7, 1 << 20])
def test_gathered_frame_writes_survive_partial_sends(step):
    from exec_server.server.websocket import _send_frames

    frames = [b"first-frame", b"", b"x" * 50, b"last"]
    sock = _TrickleSocket(step)
    _send_frames(sock, frames)
    assert bytes(sock.received) == b"".join(frames)
    assert sock.calls == max(1, -(-len(b"".join(frames)) // step))


def test_session_ids_are_random_version_4_uuids():
    import uuid

    from exec_server.server.sessions import random_uuid
    ids = {random_uuid() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
    assert {text[14] for text in ids} == {"4"} and {text[19] for text in ids} == set("89ab")
    for position in range(36):  # random bits everywhere else
        if position not in (8, 13, 14, 18, 19, 23):
            assert len({text[position] for text in ids}) == 16, position


def test_first_use_makes_one_value_and_closes_what_it_made():
    import threading

    from exec_server.server.first_use import FirstUse
    made, closed = [], []

    def make():
        made.append(object())
        return made[-1]

    slot = FirstUse(make, closed.append)
    slot.close()  # nothing made yet: nothing to close, and nothing made
    assert (made, closed) == ([], [])
    value = slot.get()  # made after the close: closed before it is handed out
    assert made == [value] and closed == [value] and slot.get() is value

    made.clear(), closed.clear()
    slot = FirstUse(make, closed.append)
    barrier = threading.Barrier(8)
    values = []

    def first_use():
        barrier.wait(timeout=10)
        values.append(slot.get())

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(made) == 1 and values == made * 8 and closed == []
    slot.close()
    assert closed == made


def test_first_use_tries_again_after_a_failed_make():
    from exec_server.server.first_use import FirstUse
    attempts = []

    def make():
        attempts.append(1)
        if len(attempts) == 1:
            raise ImportError("half installed")
        return "made"

    slot = FirstUse(make)
    with pytest.raises(ImportError):
        slot.get()
    assert slot.get() == "made" and slot.get() == "made" and len(attempts) == 2


def test_message_limits_count_utf8_bytes():
    """What --max-message-bytes and the admitted-requests bound count (they counted characters: 4x looser)."""
    assert jsonrpc.utf8_size("ascii") == 5
    assert jsonrpc.utf8_size("\u20ac\U0001F600") == 3 + 4
    assert jsonrpc.utf8_size(b"\xe2\x82\xac") == 3
    assert jsonrpc.utf8_size("\ud800") == 3  # a lone surrogate (refused later, with its own error) still counts


def test_utf8_size_of_a_large_message_copies_a_slice_at_a_time():
    """It encoded the whole message: a second copy of up to --max-message-bytes per message, counted nowhere."""
    import tracemalloc

    text = "\u00e9" * (8 * jsonrpc.UTF8_SIZE_SLICE) + "\U0001F600"  # 16 MiB and 4 bytes of UTF-8
    tracemalloc.start()
    try:
        size = jsonrpc.utf8_size(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size == 16 * jsonrpc.UTF8_SIZE_SLICE + 4
    assert peak < 8 * jsonrpc.UTF8_SIZE_SLICE  # a slice and its bytes (before: 16 MiB)


def test_a_start_failure_whose_cwd_probe_fails_or_times_out_keeps_the_servers_error():
    """start_failure asks fs/getMetadata about cwd within PROBE_TIMEOUT: no answer in time, a lost connection or
    an unrelated refusal leave the server's error as it came; a missing-file answer names the working directory."""
    from exec_server.client.interfaces import CallTimeout
    from exec_server.client.start_errors import PROBE_TIMEOUT, ProgramNotFound, WorkingDirectoryNotFound, start_failure

    class Probed:
        def __init__(self, outcome):
            self.outcome, self.timeouts = outcome, []

        def to_uri(self, path):
            return "file://" + path

        def call(self, method, params, timeout=None):
            self.timeouts.append(timeout)
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

    refused = errors.InternalError("No such file or directory (os error 2)")
    for outcome in (CallTimeout("fs/getMetadata", PROBE_TIMEOUT), errors.ExecServerDisconnected("gone"),
                    errors.ServerOverloaded("Server overloaded; retry later.")):
        client = Probed(outcome)
        assert start_failure(client, refused, "prog", "/work") is refused
        assert client.timeouts == [PROBE_TIMEOUT]
    missing = start_failure(Probed(errors.InternalError("No such file or directory (os error 2)")), refused, "prog",
                            "/gone")
    assert isinstance(missing, WorkingDirectoryNotFound) and not missing.exists and missing.path == "/gone"
    assert isinstance(start_failure(Probed({"isDirectory": True}), refused, "prog", "/work"), ProgramNotFound)
    assert start_failure(Probed({}), errors.InvalidParams("bad"), "prog", "/work").message == "bad"


def test_stdin_writer_keeps_writing_to_its_own_descriptor_when_the_pty_number_is_reused(tmp_path):
    """The PTY master closed while a write waited, its number reused by another file: the queued bytes went on
    to that file (another session's, say).  The writer now has a descriptor of its own."""
    import threading
    import time

    from exec_server.server.process.stdin import StdinWriter

    read_end, master = os.pipe()  # a pipe stands in for the PTY master: the writer blocks once it is full
    writer = StdinWriter("p", "test-stdin", 1 << 24, lambda: False, None, lambda: os.dup(master),
                         lambda fd, count: None)
    writer.write(b"x" * (1 << 20), "w1")  # far more than the pipe holds: the writer waits
    writer.write(b"SECRET", "w2")
    import select
    # the writer thread took its descriptor and filled the pipe (a sleep here lost to a slow thread start)
    assert select.select([read_end], [], [], 10)[0]
    os.close(master)  # the process's own descriptor closed, and its number taken by another file
    other = os.open(str(tmp_path / "other"), os.O_WRONLY | os.O_CREAT)
    if other != master:
        os.dup2(other, master)
        os.close(other)
    received = bytearray()
    reader = threading.Thread(target=lambda: [received.extend(chunk) for chunk in iter(
        lambda: os.read(read_end, 1 << 16), b"")])
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while len(received) < (1 << 20) + 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bytes(received).endswith(b"SECRET") and len(received) == (1 << 20) + 6
        assert (tmp_path / "other").read_bytes() == b""
    finally:
        writer.stop()
        reader.join(10)  # the writer closes its descriptor at its end: the pipe's end of file
        os.close(master)
        os.close(read_end)
    assert not reader.is_alive()


def test_a_catch_up_waits_past_the_probe_for_a_dead_connection_to_end():
    """A catch-up read at the smallest size timed out; the probe that timeout started ends the dead connection
    probe_timeout later and the reader declares it lost just after: the catch-up, which waited exactly
    probe_timeout, failed the process for good instead of leaving it to the next recovery."""
    import threading
    import time

    from exec_server.client.catch_up import CATCH_UP_MIN_READ_BYTES, CatchUp
    from exec_server.client.endpoint import CONNECTED
    from exec_server.client.interfaces import CallTimeout

    class Process:
        process_id, last_seq, started, done, failed = "p1", 0, True, False, None

        def fail(self, error):
            self.failed = error

    class DeadConnection:
        generation, state, process = 1, CONNECTED, Process()

        def open_processes(self):
            return [self.process]

        def call_on(self, generation, method, params, timeout):
            time.sleep(timeout)
            threading.Timer(0.5 + 0.02, self.lost).start()  # the probe's 0.5 s, then the reader's moment
            raise CallTimeout(method, timeout)

        def lost(self):
            self.state = "recovering"

    endpoint = DeadConnection()
    assert CatchUp(endpoint, 1, CATCH_UP_MIN_READ_BYTES, timeout=0.2, probe_timeout=0.5).run() is False
    assert endpoint.process.failed is None
