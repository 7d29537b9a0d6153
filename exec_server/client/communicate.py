"""``RemoteProcess.communicate``: input written, stdin closed and output collected together, as by ``Popen``.

:class:`ProcessCommunicate` is a base of
:class:`~exec_server.client.process.RemoteProcess`, beside
:class:`~exec_server.client.control.ProcessControl` (the requests) and the
handle's own event buffer (:meth:`~exec_server.client.process.RemoteProcess.next_event`).
The input goes in pieces (``process/write``), and between the pieces, and
while the server's stdin queue is full, the output that has arrived is
taken: a command that answers its input as it reads it (``cat``) never has
more than a piece of output waiting, whatever the input's size.
"""

import io
import os
import threading
import time
from typing import Any, List, Optional

from exec_server.client.control import ProcessControl
from exec_server.client.events import ClosedEvent, OutputEvent, StdinClosedError
from exec_server.client.interfaces import CallTimeout, ExtensionNotSupported, as_bytes
from exec_server.client.interfaces import deadline as _deadline
from exec_server.client.interfaces import remaining as _remaining
from exec_server.protocol.errors import InternalError

#: Bytes of ``communicate``'s input per ``process/write`` (fewer where the server's message limit asks).
INPUT_PIECE = 1 << 20
#: Seconds ``communicate`` waits for the output a refill reads back before it writes more input.
BEHIND_WAIT = 0.1


class _Collected:
    """What a ``communicate`` call took: stdout and stderr as they came, and the events, for a put-back.

    Written as events arrive, and BytesIO.getvalue() hands its buffer over
    without copying it: no join of every chunk after the last one came.  A
    consumed output event is remembered by where its bytes went, not kept:
    each chunk's memory is freed (and reused) as it is copied, rather than
    held twice until the end.
    """

    def __init__(self) -> None:
        self.out, self.err = io.BytesIO(), io.BytesIO()
        self.consumed: List[Any] = []  # events, or (seq, stream, start, end) of output copied to out/err
        self.closed = False

    def take(self, event: Any) -> None:
        self.consumed.append(event)  # recorded before anything else: an interrupt from here on keeps it
        if isinstance(event, OutputEvent):
            target = self.err if event.stream == "stderr" else self.out
            start = target.tell()
            target.write(event.data)
            self.consumed[-1] = (event.seq, event.stream, start, target.tell())
        elif isinstance(event, ClosedEvent):
            self.closed = True

    def events(self) -> List[Any]:
        stdout, stderr = self.out.getvalue(), self.err.getvalue()
        return [OutputEvent(item[0], item[1], (stderr if item[1] == "stderr" else stdout)[item[2]:item[3]])
                if isinstance(item, tuple) else item for item in self.consumed]


class ProcessCommunicate(ProcessControl):
    """``communicate`` of a :class:`~exec_server.client.process.RemoteProcess` (which gives ``next_event``,
    ``_changed`` and ``_buffer``)."""

    _input: Any = False  # communicate's input to write (False: no communicate yet; None: none, or all written)
    _input_lock = threading.Lock()  # held by the one thread writing that input (RemoteProcess gives each its own)

    def communicate(self, input: Optional[bytes] = None, timeout: Optional[float] = None):
        """Send ``input``, close stdin, collect output until ``closed``; returns ``(stdout, stderr)`` bytes.

        As ``Popen.communicate``: ``input`` (bytes-like) is written on the
        first call only, while the output is collected, then a writable stdin
        is closed (``closeStdin``; on a server without it, stdin is left
        open), once writes of other threads through this handle are answered;
        a call after a timeout writes what was left, each piece once.  Calls
        of several threads: the first call sets the input (input in a later
        one is the ValueError), one thread at a time writes it, and the output
        goes to whichever call takes it.  A call after one that returned gets
        only what came since (``Popen``'s returns the same bytes again).  A
        PTY's output counts as stdout.

        Raises:
            CallTimeout: not closed within ``timeout``; its ``stdout`` and
                ``stderr`` are the bytes so far (which stay buffered too).
            ValueError, TypeError, StdinClosedError, ExtensionNotSupported: ``input`` after a first call, not
                bytes-like, to a process without a writable stdin, or to a server without ``closeStdin``;
                raised before anything is sent.
            ExecServerDisconnected, ProcessOutputGap: as for :meth:`next_event`.
            Whatever interrupts it (``KeyboardInterrupt``) also leaves the
            output so far buffered, as the events it came in, beyond
            ``max_buffered_output`` if need be: a later call returns it.
        """
        deadline = _deadline(timeout)
        state = self._input_to_send(input)
        collected = _Collected()
        try:
            if state is not None:
                self._send_input(state, deadline, timeout, collected)
            while not collected.closed:
                event = self.next_event(_remaining(deadline))  # type: ignore[attr-defined]
                if event is None:
                    break
                collected.take(event)
        except BaseException as interrupted:  # a timeout, Ctrl-C, a gap: what was consumed is not lost
            events = collected.events()  # built before the lock
            with self._changed:  # type: ignore[attr-defined]  # the output so far stays buffered, as it came
                self._buffer.put_back(events)  # type: ignore[attr-defined]
                self._changed.notify_all()  # type: ignore[attr-defined]  # another consumer may wait for them
            if isinstance(interrupted, CallTimeout):  # and a timeout says what it was, as subprocess.run's
                interrupted.stdout, interrupted.stderr = collected.out.getvalue(), collected.err.getvalue()
                interrupted.timeout, interrupted.args = timeout, (interrupted.cmd, timeout)  # not the last wait's
            raise
        return collected.out.getvalue(), collected.err.getvalue()

    def _input_to_send(self, data: Any) -> Optional[list]:
        """What is left to write: ``[input, bytes written, the writeIds' stem]``, or None (nothing, not even
        the end of file); the first call sets it.  Refuses ``input`` before anything is sent: ValueError
        (input after a first call, as ``Popen``), TypeError (not bytes-like), StdinClosedError (no writable
        stdin), ExtensionNotSupported (no ``closeStdin``: its end of file could not be sent, and a reader
        would wait for it)."""
        if isinstance(data, str):
            raise TypeError("input must be bytes, not str: encode it (text.encode())")
        given = data is not None and len(as_bytes(data, "input")) > 0
        writable = self.stdin_writable
        closing = writable and self.client.supports("closeStdin")  # asked before the lock (no I/O)
        with self._writes_lock:  # one step: the first call of any thread sets the input; a later one's is refused
            if given and self._input is not False:
                raise ValueError("Cannot send input after starting communication")  # Popen's words (b"" passes)
            if self._input is False:
                if data is not None and not writable:
                    raise StdinClosedError("process %s has no writable stdin (start it with stdin=True)"
                                           % self.process_id)
                if data is not None and not closing:
                    raise ExtensionNotSupported("closeStdin", "communicate(input=)")
                self._input = [memoryview(as_bytes(data, "input") if given else b""), 0, os.urandom(16).hex()] \
                    if closing else None
            return self._input

    def _leave_stdin_as_is(self) -> None:
        """Make ``communicate`` write nothing and leave stdin open (``run`` without input: a PTY gets no ^D)."""
        with self._writes_lock:
            self._input = None

    def _send_input(self, state: list, deadline: Optional[float], timeout: Optional[float],
                    collected: _Collected) -> None:
        """The input left in ``state`` (see :meth:`_input_to_send`), then end of file, taking the output that
        arrives meanwhile into ``collected``; a process that exited or closed its stdin takes no more (as a
        broken pipe for ``Popen``)."""

        def take_ready() -> None:
            """The output that has arrived; while the handle is behind (it dropped output past its
            ``max_buffered_output``), what its refill reads back within :data:`BEHIND_WAIT`, before more
            input makes more output (a refill that finds nothing new ends the wait: the rest awaits input)."""
            while not collected.closed:
                with self._changed:  # type: ignore[attr-defined]
                    behind = self._buffer.refill  # type: ignore[attr-defined]
                wait = min(BEHIND_WAIT, _remaining(deadline) or 0.0) if behind else 0
                try:
                    event = self.next_event(wait)  # type: ignore[attr-defined]
                except CallTimeout:
                    return
                if event is None:
                    return
                collected.take(event)

        def wrote(offset: int) -> None:  # a piece is in: where a later call resumes; then the output so far
            state[1] = offset
            take_ready()

        take_ready()  # the output here already: a timeout during the first piece tells it too, as Popen's
        # other threads' writes first (the end of file goes after them), and one thread writes the input
        while self._writes_in_flight or not self._input_lock.acquire(blocking=False):
            take_ready()
            if _remaining(deadline) == 0.0:
                raise CallTimeout(self.args, timeout)
            time.sleep(min(0.01, _remaining(deadline) or 0.01))
        try:
            if self._input is not state:  # another thread's call wrote it all meanwhile
                return
            try:
                self._write_pieces(state[0], deadline, timeout, True, INPUT_PIECE, state[2], state[1],
                                   written=wrote, idle=take_ready)
            except (StdinClosedError, InternalError):
                pass  # the process exited or closed its stdin: like Popen.communicate's broken pipe
            self._input = None
        finally:
            self._input_lock.release()
