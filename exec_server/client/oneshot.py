"""``Client.run``: one command to completion, with ``subprocess.run``'s arguments and result.

Start (with the input's end of file), collect or pass on the output, wait;
on a timeout, an error or Ctrl-C the remote tree is killed, as
``subprocess.run`` kills its child.  Text mode (``text``, ``encoding``,
``errors``, ``universal_newlines``) decodes the output as ``subprocess``
does, newlines translated to ``\\n``; the encoding is UTF-8 unless given
(``subprocess`` takes the local locale's: the remote one is unknown here).
"""

import os
import subprocess
import sys
from typing import Any, Optional, Sequence, Tuple, Union

from exec_server.client.control import terminate_answered
from exec_server.client.interfaces import CallTimeout, ExtensionNotSupported, as_bytes, command_argv
from exec_server.client.interfaces import deadline as _deadline, remaining as _remaining
from exec_server.client.process import OutputEvent, RemoteProcess, StdinClosedError
from exec_server.client.recovery import FreshId
from exec_server.protocol.errors import InternalError, RpcError

KILL_GRACE = 10.0  #: seconds a timed-out run still waits for the start answer, the kill and the exit
START_TIMEOUT = 30.0  #: seconds a run without a timeout waits for the start answer (Client.start's default)
INPUT_PIECE = 1 << 20  #: bytes of ``run(input=)`` per ``process/write``
TEXT_ENCODING = "utf-8"  #: text mode's encoding when ``encoding`` is not given

Output = Union[bytes, str, None]


def run(client: Any, argv: Sequence[str], input: Union[bytes, str, None], timeout: Optional[float], check: bool,
        capture_output: bool, text: Optional[bool], encoding: Optional[str], errors: Optional[str],
        universal_newlines: Optional[bool], start_options: Any) -> "subprocess.CompletedProcess":
    """What :meth:`~exec_server.client.api.Client.run` documents; ``client`` is that Client."""
    text_mode = bool(text or universal_newlines or encoding or errors)
    encoding = encoding or TEXT_ENCODING
    errors = errors or "strict"
    if input is not None:
        if "stdin" in start_options:  # subprocess.run's words: the input is the stdin
            raise ValueError("stdin and input arguments may not both be used.")
        if text_mode != isinstance(input, str):
            raise TypeError("input must be %s in %s mode, not %s" % (
                "str" if text_mode else "bytes", "text" if text_mode else "binary", type(input).__name__))
        input = input.encode(encoding, errors) if isinstance(input, str) else as_bytes(input, "input")
    deadline = _deadline(timeout)
    argv = command_argv(argv)
    command = list(argv)
    fed = input
    if input is not None:
        if not client.supports("closeStdin"):  # head -c reads the input and exits: its pipe's end is the EOF
            if client.server_platform == "windows":
                raise ExtensionNotSupported("closeStdin", "input= on a Windows server")
            if start_options.get("arg0") is not None:  # it would name the shell, not the command
                raise ExtensionNotSupported("closeStdin", "input= with arg0= (the fallback runs it under sh)")
            command = ["/bin/sh", "-c", 'head -c "$0" | "$@"', str(len(input))] + command
            if start_options.get("tty"):  # a ^D hands head a last line without its newline (a terminal's
                fed = input + b"\x04"  # line discipline holds it until one comes), and is not counted
        start_options["stdin"] = True
    start_options.setdefault("max_buffered_output", None)
    start_timeout = _remaining(deadline) + KILL_GRACE if deadline is not None else START_TIMEOUT
    process_id = start_options.pop("process_id", None)
    if not process_id:
        process_id = FreshId("proc-" + os.urandom(16).hex())
        process_id.terminate_on_failure = False  # killed below, within the run's one grace
    try:
        process = client.start(command, timeout=start_timeout, process_id=process_id, **start_options)
    except BaseException as exc:  # no answer (even in the grace), ^C: kill what may have started, in what is left
        if not isinstance(exc, (RpcError, ValueError, TypeError)):  # those: nothing started
            grace_deadline = deadline + KILL_GRACE if deadline is not None else _deadline(KILL_GRACE)
            terminate_answered(client.call, process_id, grace_deadline)  # sent even with no time left
        if isinstance(exc, CallTimeout) and timeout is not None:  # the run's own timeout
            raise CallTimeout(argv, timeout) from None
        raise  # without one: the start's, which names its START_TIMEOUT
    try:
        if _remaining(deadline) == 0.0:
            raise CallTimeout(argv, timeout)
        if fed is not None:
            _feed(client, process, fed, deadline)
        else:  # communicate below leaves stdin as it is: a run(tty=True) without input gets no ^D, as before
            process._leave_stdin_as_is()
        if capture_output:
            stdout, stderr = process.communicate(timeout=_remaining(deadline))  # type: Tuple[Output, Output]
        else:
            stdout, stderr = _pass_on(process, deadline)
        process.wait(timeout=0)  # closed: its exit code, or InternalError if the server never reported one
    except BaseException as exc:  # as subprocess.run: the tree is killed (a lost connection, ^C, a timeout)
        grace_deadline = deadline + KILL_GRACE if deadline is not None else _deadline(KILL_GRACE)  # one grace
        try:
            process.kill(timeout=_remaining(grace_deadline))
            process.wait(timeout=_remaining(grace_deadline))
        except Exception:  # best effort: the connection may be gone, the process failed
            pass
        if isinstance(exc, subprocess.TimeoutExpired):
            raise CallTimeout(argv, timeout, *_output_so_far(process, capture_output, grace_deadline)) from None
        raise
    finally:
        client.forget(process)
    if text_mode and capture_output:  # as subprocess's text mode: decoded, then \r\n and \r made \n
        stdout, stderr = (data.decode(encoding, errors).replace("\r\n", "\n").replace("\r", "\n")  # type: ignore
                          for data in (stdout, stderr))
    done = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
    if check:
        done.check_returncode()
    return done


def _output_so_far(process: RemoteProcess, captured: bool, deadline: float) -> Tuple[Optional[bytes], Optional[bytes]]:
    """``(stdout, stderr)`` bytes a timed-out run had received (the process is killed), for its
    ``CallTimeout``, as ``subprocess.run`` gives them; None where output was not captured or is lost."""
    if not captured:
        return None, None
    try:  # what communicate had consumed went back to the process's buffer; the rest follows the kill
        return process.communicate(timeout=max(0.1, _remaining(deadline) or 0.0))
    except subprocess.TimeoutExpired as timed_out:  # not closed in time (a silent server): what had come
        return timed_out.stdout, timed_out.stderr
    except Exception:  # gone with the connection: what is buffered stays there
        return None, None


def _feed(client: Any, process: RemoteProcess, data: bytes, deadline: Optional[float]) -> None:
    try:  # in pieces, then end of file if the server can
        process.write_all(data, _remaining(deadline), close_stdin=client.supports("closeStdin"), piece=INPUT_PIECE)
    except (StdinClosedError, InternalError):
        pass  # the child exited or closed its stdin: like Popen.communicate's broken pipe


def _pass_on(process: RemoteProcess, deadline: Optional[float]) -> Tuple[None, None]:
    """``capture_output=False``: each chunk to this process's stdout or stderr as it comes, as its bytes.

    Raises:
        CallTimeout: not closed by ``deadline``; and what :meth:`RemoteProcess.next_event` raises.
    """
    for event in iter(lambda: process.next_event(_remaining(deadline)), None):
        if isinstance(event, OutputEvent):
            stream = sys.stderr if event.stream == "stderr" else sys.stdout
            binary = getattr(stream, "buffer", None)
            if binary is not None:
                stream.flush()  # what was printed before goes first
                binary.write(event.data)
                binary.flush()
            else:  # a text-only stream (a StringIO): the bytes as text, undecodable ones replaced
                stream.write(event.data.decode(TEXT_ENCODING, "replace"))
                stream.flush()
    return None, None
