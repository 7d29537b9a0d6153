"""The one check of a duration setting: the server's settings, the client's recovery policy, the CLI's options.

A wait that is a setting is a finite number of seconds: NaN compares false with
every bound (a NaN timeout either never fires or fires at once, depending on
the comparison that meets it) and an infinite one is no bound at all.  Nor is
one past :data:`MAX_SECONDS`: the operating system's timers cannot hold it (a
socket timeout of 1e10 s, a ``TCP_USER_TIMEOUT`` of 1.1e6 s failed every
connection with a traceback).  The client's per-call ``timeout`` arguments are
not settings and take infinity as "no limit"
(:func:`exec_server.client.interfaces.seconds`).
"""

import threading

#: The longest duration setting, seconds: 10**9 (about 31 years), or less where a thread's wait cannot be that
#: long (``threading.TIMEOUT_MAX``: ~49.7 days on Windows).
MAX_SECONDS = float(min(10 ** 9, threading.TIMEOUT_MAX))


def check_seconds(value: float, name: str, positive: bool = False, longest: float = MAX_SECONDS) -> float:
    """``value``, a duration in seconds, if it is finite and 0 or more (more than 0 with ``positive``), and at
    most ``longest`` (a per-call wait that is not a setting passes its own bound).

    Raises:
        ValueError: naming ``name``: ``value`` is NaN, infinite, negative, 0 where ``positive``, or too long.
    """
    if not 0 <= value < float("inf"):  # NaN fails every comparison
        raise ValueError("%s must be a finite number of seconds, %s" % (name, "over 0" if positive else "0 or more"))
    if positive and not value:
        raise ValueError("%s must be a finite number of seconds, over 0" % name)
    if value > longest:
        raise ValueError("%s must be at most %d seconds" % (name, longest))
    return value
