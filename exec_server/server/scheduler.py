"""One thread that runs timed callbacks (retention expiry, session TTLs).

A heap of deadlines on the monotonic clock; callbacks run on the scheduler's
thread, outside its lock, and must be short.  Thread-safe.
"""

import heapq
import itertools
import logging
import threading
import time
from typing import Callable, List, Optional, Tuple

log = logging.getLogger(__name__)


class Timer:
    """A scheduled callback; :meth:`cancel` stops it if it has not run yet."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]):
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self, name: str = "exec-server-scheduler"):
        self._heap: List[Tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopped = False
        self._thread: Optional[threading.Thread] = None
        self._name = name

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` after ``delay`` seconds; returns its :class:`Timer`."""
        timer = Timer(callback)
        with self._wake:
            if self._stopped:
                return timer
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if self._heap[0][2] is timer:  # a new earliest deadline: the thread must wait less
                self._wake.notify()
        return timer

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped:
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wake.wait(timeout)
                if self._stopped:
                    return
                _deadline, _order, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            try:
                timer.callback()
            except Exception:
                log.exception("scheduled callback failed")

    def stop(self, timeout: float = 2.0) -> None:
        """Drop every pending callback and join the thread."""
        with self._wake:
            self._stopped = True
            self._heap.clear()
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
