"""BurstWarning: events that come in bursts (connections closed unread, refused credentials) told with a count."""

import threading
import time
from typing import Any, Callable, Optional


class BurstWarning:
    """Tells events at most once every ``interval`` seconds, with how many came since the last telling.

    The first event is told at once.  Those after it are counted, and told
    together (the count and the latest event's ``detail``) by the first event
    past the interval, by a timer when none comes, or by :meth:`flush` (at
    shutdown), whichever is first.  Where no timer thread can start (a task
    limit), the next event or :meth:`flush` tells them.

    Args:
        interval: least seconds between two tellings.
        tell: ``(count, detail) -> None``, called outside the lock (it logs).
    """

    def __init__(self, interval: float, tell: Callable[[int, Any], None]):
        self.interval = interval
        self._tell = tell
        self._lock = threading.Lock()
        self._count = 0
        self._latest: Any = None
        self._told = -float("inf")  # time.monotonic() of the last telling
        self._timer: Optional[threading.Timer] = None

    def add(self, detail: Any) -> None:
        """Count one event, ``detail`` being what the telling names of the latest (a reason, a peer)."""
        with self._lock:
            self._count += 1
            self._latest = detail
            wait = self._told + self.interval - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    timer = threading.Timer(wait, self.flush)
                    timer.daemon = True
                    try:
                        timer.start()
                    except RuntimeError:  # no thread now: the next event or flush() tells
                        return
                    self._timer = timer
                return
        self.flush()

    def flush(self) -> None:
        """Tell the events counted since the last telling, if any; cancels a pending timer."""
        with self._lock:
            if self._timer is not None and self._timer is not threading.current_thread():
                self._timer.cancel()
            self._timer = None
            count, self._count, detail = self._count, 0, self._latest
            if count:
                self._told = time.monotonic()
        if count:
            self._tell(count, detail)
