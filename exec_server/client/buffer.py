"""A process's events in seq order, with a bound on the output kept: :class:`EventBuffer`.

What a :class:`~exec_server.client.process.RemoteProcess` has received and
not yet handed to its consumer.  ``process/output``, ``process/exited`` and
``process/closed`` share one seq counter per process (PROTOCOL.md 5.3): an
event is held until every lower seq is in, one already in is a duplicate, so
live notifications and ``process/read`` results may arrive in any order.

The bound: the protocol has no flow control (a server sends output as the
child writes it), so a consumer slower than the child, or none at all (a
script that only waits), would keep all of it in memory.  Past ``limit``
bytes of output not yet consumed, the buffer drops the live event that
would pass it and every later one (it is *dropping*), and the consumer,
once it has taken what is buffered, reads the rest from the server's
retention with ``process/read`` from the last seq it has (a *refill*),
in steps of :data:`REFILL_READ_BYTES`, until a read returns nothing new.
Output the server no longer retains by then is a gap
(:class:`~exec_server.client.events.ProcessOutputGap`).  The exit code of an
``exited`` is noted as it arrives, even dropped or held behind missing
output, so ``wait()`` returns without consuming; so is the arrival of
``closed`` (the tree is gone), which a handle's ``with`` block waits for.

Sans-IO and not thread-safe: the process holds its lock around every call.
"""

import collections
from typing import Deque, Dict, Iterable, Optional

from exec_server.client.events import ClosedEvent, ExitedEvent, OutputEvent, ProcessEvent

#: Default bytes of received output a process keeps until consumed (``Client.start(max_buffered_output=)``).
MAX_BUFFERED_OUTPUT = 64 * 1024 * 1024
#: Bytes of output one refill ``process/read`` asks for (its ``maxBytes``), at most the limit; a read that
#: timed out makes the next ask a quarter as much, down to :data:`REFILL_MIN_READ_BYTES`, and each answered
#: read twice as much again (a wait with a short timeout on a slow link still makes progress).
REFILL_READ_BYTES = 1024 * 1024
REFILL_MIN_READ_BYTES = 16 * 1024
#: Seconds one refill read may take (it runs on a thread of its own, whatever the consumer's wait).
REFILL_TIMEOUT = 30.0
#: Seconds the ``process/read`` that asks for the exit code of a process closed without ``exited`` may take.
EXIT_READ_TIMEOUT = 5.0
#: Events held out of order (behind a missing seq) at most, whatever their bytes: past it live events are
#: dropped and read back, as past the limit (a server sending empty chunks ahead of a hole held ~240 bytes
#: each without end).
MAX_HELD_EVENTS = 65536


#: :class:`~exec_server.client.events.ProcessOutputGap` ``when`` of output dropped past the limit, then lost.
DROPPED = "before it was read (max_buffered_output)"


def _size(event: ProcessEvent) -> int:
    return len(event.data) if isinstance(event, OutputEvent) else 0


class EventBuffer:
    """Events in seq order until consumed, at most ``limit`` bytes of output (None: no limit).

    A single event larger than ``limit`` is still kept when nothing else is
    buffered, so any limit makes progress.

    Attributes:
        events: published events, in seq order, not yet consumed.
        last_seq: the highest seq published.
        exit_code, exit_seq: from ``exited``, as soon as it arrived (published, held or dropped).
        exit_published: whether the ``exited`` event itself was published.
        closed: whether ``closed`` was published (nothing follows it).
        closed_arrived: whether ``closed`` arrived (published, held or dropped).
        dropping: live events are being dropped (the limit was reached).
        refill: the consumer must read from the server before it waits.
        refill_cause: why a refill reads, for the message of a gap it meets.
    """

    def __init__(self, limit: Optional[int] = MAX_BUFFERED_OUTPUT):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError("max_buffered_output must be a positive number of bytes or None, not %r" % (limit,))
        self.limit = limit
        self.events: Deque[ProcessEvent] = collections.deque()
        self._held: Dict[int, ProcessEvent] = {}
        self.buffered = 0  # bytes of output in events and held
        self.last_seq = 0
        self.exit_code: Optional[int] = None
        self.exit_seq: Optional[int] = None
        self.exit_published = False
        self.closed = False
        self.closed_arrived = False
        self.dropping = False
        self.refill = False
        self.refill_cause = DROPPED
        self._dropped = False  # whether live events were ever dropped (a hole found later is theirs)
        self._largest_read = REFILL_READ_BYTES if limit is None else min(REFILL_READ_BYTES, limit)
        self.refill_bytes = self._largest_read  # ``maxBytes`` of the next refill read

    def refill_timed_out(self) -> None:
        """The refill read got no answer in time: the next one is made again, asking for less."""
        self.refill = True
        self.refill_bytes = min(self.refill_bytes, max(REFILL_MIN_READ_BYTES, self.refill_bytes // 4))

    def add(self, event: ProcessEvent, bounded: bool = True) -> bool:
        """Take an event from any source and publish every event now contiguous.

        ``bounded`` is False for what a refill read returned: the consumer
        asked for it (``refill_bytes`` at a time), so it is always kept.
        Returns whether this call published ``closed``.
        """
        if event.seq <= self.last_seq or self.closed:
            return False  # a duplicate
        if isinstance(event, ExitedEvent) and self.exit_code is None:
            # known even while output before it is missing or dropped: a read tells a lost chunk from the exit
            self.exit_code, self.exit_seq = event.exit_code, event.seq
        if isinstance(event, ClosedEvent):
            self.closed_arrived = True
        if bounded and self.dropping:
            return False
        size = _size(event)
        if bounded and ((size and self.limit is not None and self.buffered and self.buffered + size > self.limit)
                        or (len(self._held) >= MAX_HELD_EVENTS and event.seq != self.last_seq + 1)):
            self._start_dropping()
            return False
        previous = self._held.get(event.seq)
        if previous is not None:
            self.buffered -= _size(previous)
        self._held[event.seq] = event
        self.buffered += size
        while self.last_seq + 1 in self._held:
            ready = self._held.pop(self.last_seq + 1)
            self.last_seq = ready.seq
            self.events.append(ready)
            if isinstance(ready, ExitedEvent):
                self.exit_code, self.exit_published = ready.exit_code, True
            elif isinstance(ready, ClosedEvent):
                self.closed = True
                self._clear_held()
        if isinstance(event, ClosedEvent) and not self.closed:
            # nothing follows ``closed``: what is missing before it never comes live (dropped here, or a server
            # that skipped a seq), so the consumer reads it with ``process/read``, or meets the gap, instead of
            # waiting forever
            self.refill = True
            self.refill_cause = DROPPED if self._dropped else "missing from the server's notifications"
        return self.closed  # False on entry

    def _start_dropping(self) -> None:
        """The limit is reached: drop what is held out of order too (a refill reads it again)."""
        self._clear_held()
        self.dropping = self.refill = self._dropped = True
        self.refill_cause = DROPPED

    def _clear_held(self) -> None:
        self.buffered -= sum(_size(held) for held in self._held.values())
        self._held.clear()

    def begin_refill(self) -> int:
        """A consumer starts a refill read: live events are kept again from now on; returns its ``afterSeq``.

        Everything dropped before this call was sent before the read is
        answered, so the read (or the next ones) returns it.
        """
        self.dropping = self.refill = False
        return self.last_seq

    def end_refill(self, events: Iterable[ProcessEvent], returned_output: bool) -> bool:
        """Publish what a refill read returned; another read follows while reads return new output.

        A read whose output was all published already (live meanwhile, or a
        server repeating itself) ends the refill: everything later comes live.
        Returns whether this call published ``closed``.
        """
        before = self.last_seq
        events = list(events)
        if self.limit is not None and self._held and self.buffered + sum(
                _size(event) for event in events if event.seq > self.last_seq) > self.limit:
            self._start_dropping()  # the live events held meanwhile go, and are read again: the limit holds
        ended = False
        for event in events:
            ended = self.add(event, bounded=False) or ended
        self.refill_bytes = min(self._largest_read, self.refill_bytes * 2)
        if returned_output and not self.closed and self.last_seq > before:
            self.refill = True
        return ended

    def pop(self) -> ProcessEvent:
        """The oldest published event (IndexError if none)."""
        event = self.events.popleft()
        self.buffered -= _size(event)
        return event

    def put_back(self, events: Iterable[ProcessEvent]) -> None:
        """Return consumed events to the front, in their order (a timed-out ``communicate``)."""
        events = list(events)
        self.events.extendleft(reversed(events))
        self.buffered += sum(_size(event) for event in events)
