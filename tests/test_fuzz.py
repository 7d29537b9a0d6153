"""Fuzzing, bounded in count and time: the sans-IO layer, schemas, and a live server."""

import json
import logging
import os
import random
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema.validators import extend, validator_for

from exec_server.server.config import ServerConfig
from exec_server.server.dispatcher import Dispatcher
from exec_server.protocol.errors import InvalidParams, ProtocolViolation
from exec_server.protocol import b64, wire
from exec_server.protocol.jsonrpc import EnvelopeError, Notification, parse_message
from exec_server.server.handlers import METHODS
from exec_server.server.sessions import SessionRegistry
from exec_server.protocol import schemas as schemas_module
from exec_server.protocol.schemas import SchemaSet

SCHEMAS = SchemaSet.load()
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
METHOD_NAMES = sorted(METHODS) + ["initialize", "initialized", "no/such"]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_parse_message_never_crashes(data):
    try:
        parse_message(data)
    except EnvelopeError:
        pass


@FUZZ
@given(st.sampled_from(sorted(METHODS) + ["initialize"]), JSON)
def test_schema_validation_never_crashes(method, params):
    try:
        SCHEMAS.validate_params(method, params)
    except InvalidParams as error:
        assert error.message and isinstance(error.data, dict)


# ------------------------------------------- the client's process/output fast path
def _output_params(match):
    process_id, seq, stream, chunk = match
    return {"processId": process_id, "seq": seq, "stream": stream, "chunk": chunk}


@FUZZ
@given(st.text(max_size=12), st.integers(0, 2 ** 70), st.sampled_from(("stdout", "stderr", "pty")),
       st.binary(max_size=40))
def test_output_matcher_reads_what_the_encoder_writes(process_id, seq, stream, data):
    """What the server writes is read back exactly, or left to the JSON parser (escapes, 19+ digit seqs)."""
    chunk = b64.encode(data)
    text = wire.encode_output_notification(process_id, seq, stream, chunk)
    match = wire.match_output_notification(text)
    if json.dumps(process_id, ensure_ascii=False) == '"%s"' % process_id and seq < 10 ** 18:
        assert match == (process_id, seq, stream, chunk)
    else:
        assert match is None
    assert parse_message(text) == Notification("process/output", _output_params((process_id, seq, stream, chunk)))


_SPLICE = st.text(alphabet='"\\}{,: \n\x00\x1faA0=/+u-.e', min_size=1, max_size=4)


@settings(FUZZ, max_examples=1000)
@given(st.text(max_size=6), st.integers(0, 999), st.binary(max_size=12),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 3), _SPLICE), min_size=1, max_size=3))
def test_output_matcher_accepts_only_what_json_reads_the_same(process_id, seq, data, edits):
    """Mangled texts: whenever the matcher accepts one and its chunk decodes, the JSON parser agrees exactly.

    This is what makes the client's fast path (client/events.output_event_from_text) safe: any other text, or a chunk
    that fails the strict decode, goes to parse_message.
    """
    text = wire.encode_output_notification(process_id, seq, "stdout", b64.encode(data))
    for at, removed, inserted in edits:
        at = at % (len(text) + 1)
        text = text[:at] + inserted + text[at + removed:]
    match = wire.match_output_notification(text)
    if match is None:
        return
    try:
        b64.decode(match[3])
    except ValueError:
        return
    message = parse_message(text)
    assert message == Notification("process/output", _output_params(match))
    assert [type(value) for value in message.params.values()] == [str, int, str, str]


@pytest.fixture(scope="module")
def memory_connection():
    registry = SessionRegistry(ServerConfig(max_processes_per_session=4))
    dispatcher = Dispatcher(registry)
    yield dispatcher
    registry.close_all()


@FUZZ
@given(st.lists(st.fixed_dictionaries({"id": st.one_of(st.integers(0, 10), st.text(max_size=3)),
                                       "method": st.sampled_from(METHOD_NAMES)},
                                      optional={"params": JSON}), max_size=6))
def test_dispatcher_replies_are_well_formed(memory_connection, messages):
    sent = []
    connection = memory_connection.open_connection(lambda *texts: sent.extend(texts), "fuzz: ")
    try:
        connection.receive('{"id":0,"method":"initialize","params":{"clientName":"fuzz"}}')
        connection.receive('{"method":"initialized"}')
        for message in messages:
            try:
                connection.receive(json.dumps(message))
            except ProtocolViolation:
                break
        deadline = time.monotonic() + 5
        while len(sent) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        for text in list(sent):
            reply = json.loads(text)
            assert ("id" in reply and ("result" in reply or "error" in reply)) or "method" in reply
            if "error" in reply:
                assert isinstance(reply["error"]["code"], int) and reply["error"]["message"]
    finally:
        for session in memory_connection.registry.snapshot():
            for process in session.processes():
                process.terminate()
        connection.close(end_session=True)


def _frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True, length=None) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _upgrade(port: int, receive_buffer: int = 0) -> socket.socket:
    """A raw WebSocket client socket, upgraded; ``receive_buffer`` (bytes) sets SO_RCVBUF before connecting."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(3)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 101")
    return sock


def _drain(sock: socket.socket, seconds: float) -> None:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def test_live_fuzz_leaves_the_server_serving(configured_server, caplog):
    from urllib.parse import urlsplit

    from exec_server import Client

    running = configured_server(max_message_bytes=64 * 1024)
    port = urlsplit(running.url).port
    rng = random.Random(1234)
    failures = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: failures.append(args)
    caplog.set_level(logging.ERROR, logger="exec_server")
    started = time.monotonic()
    try:
        for round_number in range(60):
            if time.monotonic() - started > 30:
                break
            sock = _upgrade(port)
            try:
                kind = round_number % 6
                if kind == 0:
                    sock.sendall(os.urandom(rng.randint(1, 300)))  # random bytes
                elif kind == 1:
                    frame = _frame(1, b'{"id":1,"method":"initialize","params":{"clientName":"x"}}')
                    sock.sendall(frame[:rng.randint(1, len(frame) - 1)])  # truncated, then gone
                elif kind == 2:
                    sock.sendall(_frame(2, b"x" * 10, length=1 << 40)[:20])  # huge length header
                elif kind == 3:
                    sock.sendall(_frame(rng.choice([3, 4, 5, 6, 7, 11, 12]), b"zz"))  # reserved opcodes
                elif kind == 4:
                    sock.sendall(_frame(1, b"x" * 70000))  # over the message limit
                else:
                    for _ in range(5):
                        message = {"id": rng.choice([1, "a", None, 2.5]), "method": rng.choice(METHOD_NAMES),
                                   "params": rng.choice([{}, None, [], {"processId": 5}, {"clientName": "x"}])}
                        sock.sendall(_frame(1, json.dumps(message).encode()))
                    sock.sendall(_frame(1, b"\xff\xfe not utf-8"))
                _drain(sock, 0.05)
            finally:
                sock.close()
        with Client.connect(running.url, timeout=5) as client:
            assert client.run(["echo", "still serving"], timeout=10).stdout == b"still serving\n"
    finally:
        threading.excepthook = previous_hook
    assert failures == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


class _PlainJsonschema(SchemaSet):
    """Schemas as written, validated by jsonschema's own classes (no inlining, no member reuse)."""

    def _inline(self, schema, name):
        return schema

    def _new_validator(self, schema):
        cls = validator_for(schema)
        serde_types = cls.TYPE_CHECKER.redefine("integer", schemas_module._serde_integer)
        return extend(cls, type_checker=serde_types)(schema, registry=self._registry)

    def compiled(self, name):
        return None  # jsonschema alone


PLAIN = _PlainJsonschema(SCHEMAS._schemas)
VALID_PARAMS = {
    "process/start": {"processId": "p", "argv": ["true"], "cwd": "file:///tmp", "env": {"PATH": "/bin"},
                      "tty": False, "pipeStdin": False, "arg0": None},
    "fs/writeFile": {"path": "file:///tmp/x", "dataBase64": "", "sandbox": None},
    "process/read": {"processId": "p", "afterSeq": 0, "maxBytes": 10, "waitMs": 0},
}


def _outcome(schemas, method, params):
    try:
        schemas.validate_params(method, params)
    except InvalidParams as error:
        return error.message, error.data
    return None


@FUZZ
@given(st.sampled_from(sorted(VALID_PARAMS)), st.data(), JSON, JSON)
def test_inlined_schemas_and_reused_members_give_the_same_errors(method, data, value, whole):
    """Validation on inlined schemas with reused member validators is exact: same acceptance,
    same message and path as jsonschema on the schemas as written (each case twice, so the
    second run goes through member validators the first one built)."""
    key = data.draw(st.sampled_from(sorted(VALID_PARAMS[method]) + ["unknownMember"]))
    mutated = dict(VALID_PARAMS[method], **{key: value})
    for params in (mutated, whole, VALID_PARAMS[method], mutated):
        assert _outcome(SCHEMAS, method, params) == _outcome(PLAIN, method, params)


# ---------------------------------------------------------------- malformed values (issue 15)
WEIRD_TEXT = st.one_of(
    st.text(max_size=8),
    st.lists(st.sampled_from(["a", "/", "\x00", "\ud800", "\udfff", "\udc80", "%00", "%ff", "\ufffd"]),
             max_size=8).map("".join),
)
HUGE = st.one_of(st.integers(-2 ** 66, 2 ** 66), st.sampled_from([2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 2 ** 64,
                                                                  9_200_000_000_000, -1]))
MISSING_DIR = "file:///nonexistent-exec-server-fuzz-dir"


def _path(text):
    return st.sampled_from(["file:///tmp/", "file:///nonexistent-exec-server-fuzz-dir/", ""]).map(lambda p: p + text)


MALFORMED = st.one_of(
    st.fixed_dictionaries({"method": st.just("process/read"),
                           "params": st.fixed_dictionaries({"processId": WEIRD_TEXT, "afterSeq": HUGE,
                                                            "maxBytes": HUGE, "waitMs": HUGE})}),
    st.fixed_dictionaries({"method": st.just("process/write"),
                           "params": st.fixed_dictionaries({"processId": WEIRD_TEXT, "chunk": st.just("eA=="),
                                                            "writeId": WEIRD_TEXT})}),
    st.fixed_dictionaries({"method": st.just("process/start"),
                           "params": st.fixed_dictionaries({
                               "processId": WEIRD_TEXT, "argv": st.lists(WEIRD_TEXT, min_size=1, max_size=3),
                               "cwd": st.one_of(st.just(MISSING_DIR), WEIRD_TEXT.flatmap(_path)),
                               "env": st.dictionaries(WEIRD_TEXT, WEIRD_TEXT, max_size=2), "tty": st.booleans(),
                               "arg0": st.one_of(st.none(), WEIRD_TEXT)})}),
    st.fixed_dictionaries({"method": st.sampled_from(["fs/readFile", "fs/getMetadata", "fs/readDirectory",
                                                      "fs/canonicalize"]),
                           "params": st.fixed_dictionaries({"path": WEIRD_TEXT.flatmap(_path)})}),
    st.fixed_dictionaries({"method": st.just("fs/readBlock"),
                           "params": st.fixed_dictionaries({"handleId": WEIRD_TEXT, "offset": HUGE, "len": HUGE})}),
    st.fixed_dictionaries({"method": st.just("process/terminate"),
                           "params": st.fixed_dictionaries({"processId": WEIRD_TEXT})}),
)


@settings(FUZZ, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(MALFORMED, min_size=1, max_size=5), st.sampled_from([True, False]))
def test_malformed_values_are_answered_without_traceback(memory_connection, caplog, messages, escaped):
    """Out-of-range integers, NUL bytes, lone surrogates in ids, paths and argv: every request is
    answered (a parse error with id -1 counts), never with the generic internal error, never a
    traceback in the log.  Surrogates are sent escaped (``\\ud800``) or raw in the text."""
    sent = []
    caplog.set_level(logging.ERROR, logger="exec_server")
    caplog.clear()  # the fixture is shared by the examples: each starts with an empty log
    connection = memory_connection.open_connection(lambda *texts: sent.extend(texts), "fuzz: ")
    try:
        connection.receive('{"id":0,"method":"initialize","params":{"clientName":"fuzz"}}')
        connection.receive('{"method":"initialized"}')
        for number, message in enumerate(messages, 1):
            text = json.dumps(dict(message, id=number), ensure_ascii=escaped)
            connection.receive(text if escaped else text.encode("utf-8", "surrogatepass"))
        wait_until_answered = time.monotonic() + 10
        while len(sent) < len(messages) + 1 and time.monotonic() < wait_until_answered:
            time.sleep(0.01)
        replies = [json.loads(text) for text in sent[1:]]
        assert len(replies) == len(messages), replies
        for reply in replies:
            if "error" in reply:
                assert reply["error"]["code"] in (-32600, -32602, -32603, -32004), reply
                assert reply["error"]["message"] != "internal error", reply
    finally:
        for session in memory_connection.registry.snapshot():
            for process in session.processes():
                process.terminate()
        connection.close(end_session=True)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
