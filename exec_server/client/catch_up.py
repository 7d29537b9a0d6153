"""The catch-up after a reconnect: every open process read from its last published seq with ``process/read``.

It runs once the session is resumed, on a thread of its own
(:class:`~exec_server.client.recovery.Recovery` starts it), so calls go on
meanwhile; a process's events wait for its own catch-up (its live ones held
behind it, duplicates dropped by seq).  The processes take turns, one read
each, so one with much missed output, or a server that keeps answering for
it, does not hold up the others.  Each read is sized to the link
(:func:`next_read_bytes`) and must end within ``connect_timeout``: one that
does not is made again a quarter as large for that process (its timeout
also has the connection probed, so a dead one ends and recovers); one of
:data:`CATCH_UP_MIN_READ_BYTES` without an answer, on a connection that
still stands ``probe_timeout`` (and :data:`PROBE_MARGIN`) later, fails that
process, as a refill does.  A read refused as overloaded (-32001) is made
again after each of ``OVERLOAD_RETRY_DELAYS``, as a call is, then smaller;
at the smallest, that process fails.
"""

import time
from typing import Dict, Optional

from exec_server.client.endpoint import CONNECTED, OVERLOAD_RETRY_DELAYS, Endpoint
from exec_server.client.interfaces import ProcessHandle
from exec_server.client.process import ProcessOutputGap
from exec_server.protocol.errors import ExecServerDisconnected, ExecServerError, RpcError, ServerOverloaded

#: Most decoded bytes one ``process/read`` of a catch-up asks for: the server
#: may hold far more than fits one message (output spooled to disk), so the
#: client reads in budgeted steps until it meets the live notifications.
CATCH_UP_READ_BYTES = 1024 * 1024
#: Decoded bytes the first catch-up read of a recovery asks for; each later
#: read is sized to the link by :func:`next_read_bytes`.
CATCH_UP_FIRST_READ_BYTES = 64 * 1024
#: Fewest decoded bytes a catch-up read asks for.  A read always returns at
#: least one whole chunk (up to 64 KiB from our server, 8 KiB from the
#: reference), so with the default 5 s the link must carry ~18 KB/s (~4.4 from the reference).
CATCH_UP_MIN_READ_BYTES = 16 * 1024
#: Share of ``ReconnectPolicy.connect_timeout`` (each read's timeout) one catch-up read aims to take.
CATCH_UP_READ_SHARE = 0.25
#: Seconds past ``probe_timeout`` a catch-up waits for a timed-out call's probe to end the connection before
#: it takes the silence for the server's, not the link's (the probe's own wait ends at ``probe_timeout``).
PROBE_MARGIN = 1.0


def next_read_bytes(asked: int, got: int, elapsed: float, timeout: float, full: bool) -> int:
    """The ``maxBytes`` (decoded bytes) of the next catch-up read, from how the last one went.

    Each read aims at :data:`CATCH_UP_READ_SHARE` of its ``timeout``
    (seconds): the next asks for what the link carried in that share, at
    most four times as much as this one, and more only after a ``full``
    read (one its budget cut short: the output went on).  Always within
    :data:`CATCH_UP_MIN_READ_BYTES` and :data:`CATCH_UP_READ_BYTES`.

    Args:
        asked: the last read's ``maxBytes``.
        got: decoded bytes it returned.
        elapsed: seconds it took.
        timeout: seconds each read may take.
        full: whether the budget, not the end of the output, ended it.
    """
    target = timeout * CATCH_UP_READ_SHARE
    carried = got * target / elapsed if elapsed > 0 else float("inf")  # in the share, at this read's rate
    if elapsed > target:
        size = carried
    elif full:
        size = min(asked * 4, carried)
    else:
        size = asked
    return int(max(CATCH_UP_MIN_READ_BYTES, min(CATCH_UP_READ_BYTES, size)))


class CatchUp:
    """One catch-up on connection ``generation`` of ``endpoint``: :meth:`run` it once.

    Args:
        first_read_bytes: ``maxBytes`` of each process's first read.
        timeout: seconds each read may take (``ReconnectPolicy.connect_timeout``).
        probe_timeout: seconds a timed-out call's probe of the connection takes at most.
    """

    def __init__(self, endpoint: Endpoint, generation: int, first_read_bytes: int, timeout: float,
                 probe_timeout: float):
        self._endpoint = endpoint
        self._generation = generation
        self._timeout = timeout
        self._probe_timeout = probe_timeout
        self._sizes: Dict[str, int] = {}  # processId -> maxBytes of its next read
        self._refused: Dict[str, int] = {}  # processId -> its reads refused as overloaded (-32001) in a row
        self._first = first_read_bytes
        #: ``maxBytes`` the last read that was answered would have asked next: where the next recovery starts.
        self.read_bytes = first_read_bytes

    def run(self) -> bool:
        """Read every open process until caught up; False if the connection dropped meanwhile."""
        pending = list(self._endpoint.open_processes())
        while pending:
            for process in list(pending):
                step = self._step(process)
                if step is None:
                    return False
                if not step:
                    pending.remove(process)
        return True

    def _step(self, process: ProcessHandle) -> Optional[bool]:
        """One read of ``process``: True if another should follow, False once it is caught up (or failed),
        None if the connection dropped."""
        endpoint, timeout = self._endpoint, self._timeout
        before, asked = process.last_seq, self._sizes.get(process.process_id, self._first)
        params = {"processId": process.process_id, "afterSeq": before, "maxBytes": asked, "waitMs": 0}
        started = time.monotonic()
        try:
            result = endpoint.call_on(self._generation, "process/read", params, timeout)
        except ExecServerDisconnected:
            return None
        except TimeoutError:
            if self._smaller(process.process_id, asked):
                return True
            if self._connection_ends():  # the probe found it dead: the next recovery reads again
                return None
            process.fail(ExecServerDisconnected("process %s: no answer to a process/read of %d bytes within %g s "
                                                "after reconnecting" % (process.process_id, asked, timeout)))
            return False
        except ServerOverloaded:  # refused before it ran (the server's result budget): again, as a call does
            refused = self._refused[process.process_id] = self._refused.get(process.process_id, 0) + 1
            if refused <= len(OVERLOAD_RETRY_DELAYS):
                time.sleep(OVERLOAD_RETRY_DELAYS[refused - 1])
                return True
            self._refused[process.process_id] = 0
            if self._smaller(process.process_id, asked):  # a smaller result may fit the budget
                return True
            process.fail(ExecServerDisconnected("process %s: exec-server refused its catch-up reads as overloaded"
                                                % process.process_id))
            return False
        except RpcError as exc:
            if process.started:  # else its start is not answered yet: the server may not know it
                process.fail(ExecServerDisconnected("process %s is gone after reconnecting: %s"
                                                    % (process.process_id, exc.message)))
            return False
        try:
            missing = process.catch_up(result)
        except ValueError as exc:  # the server's answer cannot be published: like a gap
            failure: Optional[BaseException] = ExecServerDisconnected(
                "process %s cannot be recovered: exec-server sent a %s" % (process.process_id, exc))
        else:
            failure = ProcessOutputGap(process.process_id, missing) if missing else None
        if failure is not None:
            process.fail(failure)
            try:
                endpoint.call("process/terminate", {"processId": process.process_id}, timeout)
            except (ExecServerError, TimeoutError, RpcError):
                pass
            return False
        self._refused.pop(process.process_id, None)
        chunks = result.get("chunks")
        sizes = [len(chunk.get("chunk") or "") * 3 // 4 for chunk in chunks or ()]  # decoded, about
        got = sum(sizes)
        full = bool(sizes) and got + max(sizes) > asked  # a chunk like these would have passed the budget
        self._sizes[process.process_id] = self.read_bytes = next_read_bytes(
            asked, got, time.monotonic() - started, timeout, full)
        # nothing new (a server repeating itself ends it too), or it joined the live notifications
        return not (not chunks or process.done or process.last_seq > chunks[-1]["seq"] or process.last_seq <= before)

    def _smaller(self, process_id: str, asked: int) -> bool:
        """Make ``process_id``'s next read a quarter of ``asked``; False if ``asked`` was the smallest already."""
        if asked <= CATCH_UP_MIN_READ_BYTES:
            return False
        smaller = self._sizes[process_id] = max(CATCH_UP_MIN_READ_BYTES, asked // 4)
        self.read_bytes = min(self.read_bytes, smaller)
        return True

    def _connection_ends(self) -> bool:
        """Whether this connection is declared lost within ``probe_timeout`` and :data:`PROBE_MARGIN` (a
        timed-out call probes it)."""
        endpoint, deadline = self._endpoint, time.monotonic() + self._probe_timeout + PROBE_MARGIN
        while True:
            if endpoint.generation != self._generation or endpoint.state != CONNECTED:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
