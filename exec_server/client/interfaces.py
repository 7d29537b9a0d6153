"""The small interfaces the client's parts meet at, and its deadline helpers.

The parts of the client depend on these shapes, not on each other's classes:

- :class:`Caller` is what a process handle and the file system API call the
  server through (the :class:`~exec_server.client.api.Client` is one);
- :class:`ProcessHandle` is what the endpoint and the recovery need of a
  process handle (:class:`~exec_server.client.process.RemoteProcess` is one).

Timeouts are float seconds (None blocks, 0 polls, negatives rejected), turned
into one ``time.monotonic()`` deadline that is passed down.
"""

import os
import time
from typing import Any, Dict, List, Optional, Protocol, Union

#: A path on the server's host: str, ``pathlib.Path`` or a ``file://`` URI.
PathLike = Union[str, "os.PathLike[str]"]


class Caller(Protocol):
    """Sends requests to the server on behalf of a process handle or ``client.fs``."""

    def call(self, method: str, params: Any = None, timeout: Optional[float] = None) -> Any:
        """Send a request, wait for its ``result``; raises as :meth:`Client.call`."""

    def to_uri(self, path: PathLike) -> str:
        """A ``file://`` URI on the server's host for ``path``."""


class ProcessHandle(Protocol):
    """What the client's endpoint and recovery call on a process handle (client-internal)."""

    process_id: str

    @property
    def last_seq(self) -> int:
        """Highest seq published."""

    @property
    def done(self) -> bool:
        """True once ``closed`` was published or the handle failed."""

    def deliver(self, method: str, params: Dict[str, Any]) -> None:
        """Accept one ``process/*`` notification (any order, duplicates allowed)."""

    def catch_up(self, result: Dict[str, Any]) -> Optional[List[int]]:
        """Accept a ``process/read`` from :attr:`last_seq`; the lost seqs, or None."""

    def fail(self, error: BaseException) -> None:
        """Make every wait of the handle raise ``error`` (unless already closed)."""


def deadline(timeout: Optional[float]) -> Optional[float]:
    """The monotonic deadline ``timeout`` seconds from now (None: no deadline).

    Raises:
        ValueError: ``timeout`` is negative.
    """
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError("timeout must not be negative")
    return time.monotonic() + timeout


def remaining(deadline: Optional[float]) -> Optional[float]:
    """Seconds left until ``deadline`` (0.0 once passed; None for no deadline)."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
