"""Byte budgets: how much memory requests and their results may hold at once.

Two bound what the count limits do not (README "Limits"):

* each connection's admitted requests (running or queued) together hold at
  most ``max_message_bytes`` of messages (:class:`~exec_server.server.connection.RpcConnection`);
* the large results of all connections (``process/read`` of spooled output,
  ``fs/readFile``) being built and sent hold at most
  ``max_result_bytes_in_flight`` (:meth:`RequestContext.reserve_result
  <exec_server.server.handlers.context.RequestContext.reserve_result>`).
"""

import collections
import threading
import time
from typing import Deque, Optional

#: What a large result costs while it is built and sent, per byte it returns: the bytes read and their
#: base64 text (bytes, then str; 4/3 of the bytes each, not all alive at once).  The response then goes out
#: in pieces of 1 MiB (``LARGE_MESSAGE_CHARS``), never joined into one text, its UTF-8 bytes and a frame.
#: Measured (peak RSS, VmHWM), one at a time: a 57 MiB ``fs/readFile`` +133 MiB, a 16 MiB ``process/read``
#: of spooled output +34 MiB; 3 bounds both (before the pieces: +381 and +106 MiB).
RESULT_COST_PER_BYTE = 3
#: What it costs besides, per output chunk a ``process/read`` returns (its objects: the chunk, its base64 text,
#: its JSON).  Measured: a read of ~994,000 chunks of 1 to 4 bytes (16 MiB) from the spool, +432 MiB peak RSS.
RESULT_COST_PER_CHUNK = 512


class _Waiter:
    """A reservation waiting in line."""

    __slots__ = ("size",)

    def __init__(self, size: int):
        self.size = size


class ByteBudget:
    """Bytes reserved by concurrent users against ``limit``, granted first come, first served.  Thread-safe.

    A reservation larger than ``limit`` is taken as ``limit``: it waits until
    nothing else is reserved, then runs alone.  Waiters are served in the
    order they came: a reservation that does not fit holds back those after
    it, so a large result is not starved by a steady stream of smaller ones
    that overlap (each would fit beside the others, never leaving room for it).

    One exception, so that a tiny ``fs/readFile`` does not wait behind a
    large one: a small reservation (at most ``bypass // 8`` bytes) that fits
    passes the waiters while small ones together hold at most ``bypass``
    bytes, unless the first waiter is too large to fit beside that share
    (over ``limit - bypass``): the small ones could starve it, so they wait
    in line then.  A reservation of 0 bytes never waits.  What is reserved
    never exceeds ``limit``, but for one reservation alone.
    """

    def __init__(self, limit: int, bypass: Optional[int] = None):
        """``limit`` and ``bypass`` in bytes; ``bypass`` defaults to ``limit // 8``, at most ``limit // 2``."""
        self.limit = limit
        self.bypass = min(limit // 8 if bypass is None else bypass, limit // 2)
        self.small = self.bypass // 8
        self._used = 0
        self._small_used = 0
        self._waiting: Deque[_Waiter] = collections.deque()  # oldest first
        self._changed = threading.Condition(threading.Lock())

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        with self._changed:
            return self._used

    def reserve(self, size: int, timeout: float) -> Optional[int]:
        """Reserve ``size`` bytes, waiting up to ``timeout`` seconds for them; the bytes reserved, or None.

        Pass the returned number to :meth:`release`.
        """
        if size <= 0:
            return 0
        size = min(size, self.limit)
        small = size <= self.small
        deadline = time.monotonic() + timeout
        with self._changed:
            if self._may_go(None, size, small):
                return self._take(size, small)
            waiter = _Waiter(size)
            self._waiting.append(waiter)
            try:
                while not self._may_go(waiter, size, small):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._changed.wait(remaining)
                return self._take(size, small)
            finally:
                self._waiting.remove(waiter)
                self._changed.notify_all()  # the next waiter may now be first, and fit

    def _may_go(self, waiter: Optional[_Waiter], size: int, small: bool) -> bool:
        """Whether a reservation may be granted now: first in line (or a small one passing), and fits."""
        first = self._waiting[0] if self._waiting else waiter
        if first is not waiter and not (small and self._small_used + size <= self.bypass
                                        and first.size <= self.limit - self.bypass):
            return False
        return not self._used or self._used + size <= self.limit

    def _take(self, size: int, small: bool) -> int:
        self._used += size
        if small:
            self._small_used += size
        return size

    def release(self, size: int) -> None:
        """Give back bytes :meth:`reserve` returned."""
        if size:
            with self._changed:
                self._used -= size
                if size <= self.small:
                    self._small_used -= size
                self._changed.notify_all()
