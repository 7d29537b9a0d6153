"""The output log, the handshake and the fs helper owner, without a child process or socket.

:class:`OutputLog` numbers events, retains output within its budget, answers
reads and wakes long polls (PROTOCOL.md 5.3, 5.4, 6); :class:`Handshake` is
the sans-IO initialize/initialized state machine (PROTOCOL.md 4); each
server's :class:`FsHelpers` kills only its own helpers.
"""

import base64
import sys
import threading
import time

import pytest

from conftest import pid_alive, wait_until
from exec_server.protocol import handshake
from exec_server.protocol.errors import InternalError, InvalidRequest, ProtocolViolation
from exec_server.server.process import ReadAborted
from exec_server.server.process.output import Closed, Exited, OutputChunk, OutputLog


def make_log(streams=2, retained_bytes=1 << 20, retained_chunks=1024, sandboxed=False):
    events = []
    return OutputLog(streams, retained_bytes, retained_chunks, events.append, sandboxed), events


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def typed(events):
    """Events with their types: they are tuples, so equal values alone would not tell Exited from Closed."""
    return [(type(event).__name__, event) for event in events]


# ------------------------------------------------------------------ sequence
def test_events_share_one_sequence_and_closed_follows_exit_and_eof():
    log, events = make_log()
    log.output("stdout", b"a")
    log.output("stderr", b"bc")
    log.stream_ended()
    log.exit(3)
    assert not log.closed  # one stream is still open
    log.output("stdout", b"late")
    log.stream_ended()
    assert typed(events) == typed([OutputChunk(1, "stdout", b64(b"a"), 1), OutputChunk(2, "stderr", b64(b"bc"), 2),
                                   Exited(3, 3, False), OutputChunk(4, "stdout", b64(b"late"), 4), Closed(5)])
    assert log.exited and log.closed and log.exit_code == 3


def test_exit_after_every_stream_ended_emits_exited_then_closed():
    log, events = make_log(streams=1)
    log.stream_ended()
    assert events == [] and log.wait_streams_ended(0)
    log.exit(0)
    assert typed(events) == typed([Exited(1, 0, False), Closed(2)])


def test_sandbox_denial_is_read_from_retained_output():
    log, events = make_log(streams=1, sandboxed=True)
    log.output("pty", b"mkdir: Permission denied\n")
    log.exit(1)
    assert typed(events[1:2]) == typed([Exited(2, 1, True)])
    unsandboxed, events = make_log(streams=1)
    unsandboxed.output("pty", b"mkdir: Permission denied\n")
    unsandboxed.exit(1)
    assert typed(events[1:2]) == typed([Exited(2, 1, False)])


# ----------------------------------------------------------------- retention
def test_retention_evicts_oldest_chunks_by_bytes_and_by_count():
    log, events = make_log(retained_bytes=10, retained_chunks=3)
    for data in (b"aaaa", b"bbbb", b"cccc"):  # 12 bytes > 10: the first goes
        log.output("stdout", data)
    assert [c.seq for c in log.read().chunks] == [2, 3]
    log.output("stdout", b"d")
    log.output("stdout", b"e")  # four chunks > 3: the oldest goes
    assert [c.seq for c in log.read().chunks] == [3, 4, 5]
    assert len(events) == 5  # eviction never holds back a notification


def test_read_after_evicted_output_starts_at_the_oldest_retained():
    log, _ = make_log(retained_bytes=4)
    for data in (b"aaaa", b"bbbb"):
        log.output("stdout", data)
    result = log.read(after_seq=0)
    assert [(c.seq, c.chunk) for c in result.chunks] == [(2, b64(b"bbbb"))]
    assert result.next_seq == 3


# --------------------------------------------------------------------- reads
def test_read_after_seq_and_max_bytes():
    log, _ = make_log()
    for data in (b"12345", b"678", b"9", b"abcdef"):
        log.output("stdout", data)
    assert [c.seq for c in log.read(after_seq=2).chunks] == [3, 4]
    limited = log.read(after_seq=0, max_bytes=8)
    assert [c.seq for c in limited.chunks] == [1, 2]  # 5 + 3 = 8 bytes
    assert limited.next_seq == 3  # follows the last chunk returned
    assert [c.seq for c in log.read(after_seq=0, max_bytes=1).chunks] == [1]  # at least one chunk
    unlimited = log.read(after_seq=4)
    assert unlimited.chunks == [] and unlimited.next_seq == 5
    assert not unlimited.exited and unlimited.exit_code is None and not unlimited.closed


def test_read_returns_at_once_after_exit_with_later_events():
    log, _ = make_log(streams=1)
    log.output("pty", b"x")
    log.exit(0)
    started = time.monotonic()
    result = log.read(after_seq=1, wait=5)
    assert time.monotonic() - started < 1
    assert result.exited and result.exit_code == 0 and result.chunks == []


# ----------------------------------------------------------------- wake-ups
def test_long_poll_wakes_on_output():
    log, _ = make_log()
    results = []
    reader = threading.Thread(target=lambda: results.append(log.read(after_seq=0, wait=10)))
    reader.start()
    time.sleep(0.1)
    started = time.monotonic()
    log.output("stdout", b"hi")
    reader.join(5)
    assert time.monotonic() - started < 2
    assert [c.chunk for c in results[0].chunks] == [b64(b"hi")]


def test_long_poll_times_out_empty():
    log, _ = make_log()
    started = time.monotonic()
    result = log.read(wait=0.2)
    assert 0.15 <= time.monotonic() - started < 2
    assert result.chunks == [] and result.next_seq == 1


def test_wake_ends_an_aborted_long_poll():
    log, _ = make_log()
    abort = threading.Event()
    errors = []

    def read():
        try:
            log.read(wait=10, aborted=lambda: ReadAborted("gone") if abort.is_set() else None)
        except ReadAborted as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.1)
    abort.set()
    log.wake()
    reader.join(5)
    assert not reader.is_alive() and len(errors) == 1


def test_events_are_emitted_in_seq_order_from_many_threads():
    log, events = make_log(streams=4)

    def write(stream):
        for _ in range(200):
            log.output(stream, b"x")
        log.stream_ended()

    writers = [threading.Thread(target=write, args=("s%d" % i,)) for i in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(10)
    log.exit(0)
    assert [event.seq for event in events] == list(range(1, 802)) + [802]
    assert isinstance(events[-1], Closed)


# ----------------------------------------------------------------- handshake
def test_handshake_states_and_errors():
    shake = handshake.Handshake()
    assert shake.request_error("exec", False).message == "client must call initialize before using exec methods"
    with pytest.raises(ProtocolViolation):
        shake.receive_initialized(True)  # initialized before initialize
    shake.start_initialize()
    assert shake.state == handshake.NEW  # until the handler succeeds
    shake.initialize_succeeded()
    assert shake.request_error("filesystem", True).message == \
        "client must send initialized before using filesystem methods"
    with pytest.raises(InvalidRequest) as caught:
        shake.start_initialize()
    assert caught.value.message == "initialize may only be sent once per connection"
    with pytest.raises(ProtocolViolation):
        shake.receive_initialized(False)  # taken over meanwhile
    shake.receive_initialized(True)
    assert shake.state == handshake.READY
    assert shake.request_error("exec", True) is None
    error = shake.request_error("exec", False)
    assert (error.code, error.message) == (-32600, handshake.TAKEN_OVER)


# ---------------------------------------------------------------- fs helpers
@pytest.mark.posix
def test_stopping_one_server_leaves_another_servers_helper_running():
    from exec_server.server.app import make_server
    from exec_server.server.fs.sandbox import parse_sandbox

    policy = parse_sandbox({"permissions": {"type": "managed", "network": "restricted", "file_system": {
        "type": "restricted", "entries": [{"path": {"type": "path", "path": "file:///tmp"}, "access": "write"}]}},
        "windowsSandboxLevel": "disabled"})
    first = make_server().start()
    second = make_server().start()
    outcome = []

    def run_helper():
        try:
            first.dispatcher.fs_helpers.run("fs/readFile", {"path": "file:///x"}, policy, timeout=30,
                                            command=[sys.executable, "-c", "import time; time.sleep(30)"])
        except InternalError as exc:
            outcome.append(exc.message)

    runner = threading.Thread(target=run_helper)
    runner.start()
    try:
        wait_until(lambda: first.dispatcher.fs_helpers.running())
        helper = first.dispatcher.fs_helpers.running()[0]
        second.shutdown()
        time.sleep(0.2)
        assert helper.poll() is None and pid_alive(helper.pid)  # the other server's shutdown left it alone
    finally:
        first.shutdown()
        runner.join(10)
    assert not runner.is_alive()
    assert outcome and outcome[0].startswith("fs sandbox helper failed with status signal: 9")


# ---------------------------------------------------------------- the edge
@pytest.mark.parametrize("process_id", ["p", 'quo"te', "ünï"])
def test_session_encodes_events_as_the_generic_encoder_would(process_id):
    from exec_server.protocol.jsonrpc import Notification, encode
    from exec_server.server.session import encode_events

    events = [OutputChunk(1, "stderr", b64(b"hi"), 2), Exited(2, 137, True), Closed(3)]
    assert encode_events(process_id, events) == [
        encode(Notification("process/output", {"processId": process_id, "seq": 1, "stream": "stderr",
                                               "chunk": b64(b"hi")})),
        encode(Notification("process/exited", {"processId": process_id, "seq": 2, "exitCode": 137,
                                               "sandboxDenied": True})),
        encode(Notification("process/closed", {"processId": process_id, "seq": 3})),
    ]
