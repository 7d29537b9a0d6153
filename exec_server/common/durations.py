"""The one check of a duration setting: the server's settings, the client's recovery policy, the CLI's options.

A wait that is a setting is a finite number of seconds: NaN compares false with
every bound (a NaN timeout either never fires or fires at once, depending on
the comparison that meets it) and an infinite one is no bound at all.  The
client's per-call ``timeout`` arguments are not settings and take infinity as
"no limit" (:func:`exec_server.client.interfaces.seconds`).
"""


def check_seconds(value: float, name: str, positive: bool = False) -> float:
    """``value``, a duration in seconds, if it is finite and 0 or more (more than 0 with ``positive``).

    Raises:
        ValueError: naming ``name``: ``value`` is NaN, infinite, negative, or 0 where ``positive``.
    """
    if not 0 <= value < float("inf"):  # NaN fails every comparison
        raise ValueError("%s must be a finite number of seconds, %s" % (name, "over 0" if positive else "0 or more"))
    if positive and not value:
        raise ValueError("%s must be a finite number of seconds, over 0" % name)
    return value
