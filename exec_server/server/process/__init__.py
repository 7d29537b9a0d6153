"""Children of ``process/start``: spawn, output log, watchers, and the process that ties them together.

:class:`ReadAborted` lives here, not with the output log that raises it, so
that the connection can catch it without loading the process code (#17).
"""


class ReadAborted(Exception):
    """A long poll was abandoned (connection gone or session taken over)."""


class WouldWait(Exception):
    """A read run on the connection's reader thread would wait for the result budget: a request thread runs it."""
