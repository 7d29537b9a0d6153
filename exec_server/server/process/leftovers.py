"""Background jobs of forgotten ``inherit``-mode commands: they end with their session.

In ``inherit`` mode a command may leave a background job behind
(``sh -c "server & echo started"``, README "Process containment"); the job
carries its command's marker (:data:`~exec_server.server.process.marked.MARKER_ENV`).
Once the command has closed and ``closed_process_retention`` has passed,
the session forgets the command's entry, and with it the only record of the
marker.  The session hands the marker to its :class:`Leftovers` then, and
its close (expiry, eviction, server shutdown) kills every process that
still carries one of them, as PROTOCOL.md 7 asks of every process group of
an ending session.
"""

from __future__ import annotations

import logging
import threading
from typing import Dict, Optional, Set

from exec_server.server.process import marked

log = logging.getLogger(__name__)

#: How many markers a session keeps before one scan of the process table drops those no living
#: process carries any more (a session that ran many commands keeps only the ones with live jobs).
LEFTOVER_MARKERS_CHECKED_AT = 256


class Leftovers:
    """The markers of a session's forgotten ``inherit``-mode commands.  Thread-safe."""

    def __init__(self, checked_at: int = LEFTOVER_MARKERS_CHECKED_AT):
        self._lock = threading.Lock()
        self._markers: Dict[str, None] = {}
        self._checked_at = checked_at
        self._closed = False
        self._pruning: Optional[threading.Thread] = None

    def add(self, marker: str) -> None:
        """Keep ``marker`` until :meth:`close` (after it, kill its processes at once).

        Past ``checked_at`` markers, a scan on a thread of its own (the caller
        is the server's scheduler: a scan takes ~0.2 ms per process on the
        host) keeps only those a living process carries; where no thread can
        be started the scan waits until the markers have doubled.
        """
        with self._lock:
            closed = self._closed
            if not closed:
                self._markers[marker] = None
                if len(self._markers) < self._checked_at or self._pruning is not None:
                    return
                self._pruning = threading.Thread(target=self._prune, args=(set(self._markers),),
                                                 name="exec-server-leftovers", daemon=True)
                try:
                    self._pruning.start()
                except RuntimeError as exc:  # no thread to be had (RLIMIT_NPROC): markers kept, scan at twice as many
                    self._pruning = None
                    self._checked_at = 2 * len(self._markers)
                    log.warning("scan of leftover markers postponed to %d markers: %s", self._checked_at, exc)
                return
        marked.kill_marked(marker)

    def _prune(self, markers: Set[str]) -> None:
        """Drop the markers that two scans in a row find on no process.

        A scan lists the PIDs first: a job that forks and exits meanwhile
        leaves a child only the next scan sees.
        """
        try:
            alive = {carried for _ in range(2) for _process, carried in marked.marked_processes(markers)}
            with self._lock:
                for gone in markers - alive:
                    self._markers.pop(gone, None)
                self._checked_at = max(self._checked_at, 2 * len(self._markers))
        except Exception:  # a failed scan drops nothing
            log.exception("scan of leftover markers failed")
        finally:
            with self._lock:
                self._pruning = None

    def pruned(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a running scan to end; whether none runs now (tests)."""
        with self._lock:
            pruning = self._pruning
        if pruning is not None:
            pruning.join(timeout)
        return not pruning.is_alive() if pruning is not None else True

    def __len__(self) -> int:
        with self._lock:
            return len(self._markers)

    def close(self) -> int:
        """SIGKILL every process carrying one of the markers; how many were found.  Later adds kill at once."""
        with self._lock:
            self._closed = True
            markers = list(self._markers)
            self._markers.clear()
        return marked.kill_marked(*markers) if markers else 0
