"""Objects made on first use and closed with their owner.

Used for a connection's file handles, a server's fs helpers and the handler
functions of the method table (:mod:`exec_server.server.handlers`), so that
a server that serves no fs request imports no fs code (#17: cold start),
not even when it shuts down: shutdown may run in a signal handler, where an
import could find a module half loaded by the interrupted thread.
"""

import threading
from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class FirstUse(Generic[T]):
    """``make()`` on the first :meth:`get`; :meth:`close` runs ``close(value)`` on what was made.

    ``make`` may raise: nothing is kept, and the next :meth:`get` tries again.

    One made after :meth:`close` is closed at once, before :meth:`get`
    returns it, so nothing made outlives its owner.  Thread-safe: concurrent
    first calls make one value.
    """

    def __init__(self, make: Callable[[], T], close: Callable[[T], None] = lambda value: None,
                 value: Optional[T] = None):
        self._make = make
        self._close = close
        self._value = value
        self._closed = False
        self._lock = threading.Lock()

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._make()
                    if self._closed:
                        self._close(self._value)
                value = self._value
        return value

    def close(self) -> None:
        """Close the value if one was made (imports nothing); one made later is closed at once."""
        with self._lock:
            self._closed = True
            value = self._value
        if value is not None:
            self._close(value)
