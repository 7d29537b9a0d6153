"""Threads that outlive their job for a moment, so the next job needs no new thread.

A process watcher runs as long as its child; when it ends, its thread waits
up to :data:`IDLE_SECONDS` for the next process to watch before it exits.
Starting a thread costs ~100 us of the spawn path (``Thread.start`` waits for
the new thread to run); a burst of short processes reuses a few threads
instead.  No thread outlives a quiet period of :data:`IDLE_SECONDS`, so
thread counts return to their baseline (``benchmarks/soak.py``).
"""

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Tuple

log = logging.getLogger(__name__)

#: How long an idle thread waits for another job before it exits, seconds.
IDLE_SECONDS = 1.0

Job = Tuple[Callable[..., Any], Tuple[Any, ...]]


class ReusableThreads:
    """Run each job on an idle thread, or on a new one.  Thread-safe."""

    def __init__(self, name: str, idle_seconds: float = IDLE_SECONDS):
        self._name = name
        self._idle_seconds = idle_seconds
        self._changed = threading.Condition()
        self._jobs: Deque[Job] = collections.deque()
        self._idle = 0

    def run(self, function: Callable[..., Any], *args: Any) -> None:
        """Call ``function(*args)`` on another thread, soon."""
        with self._changed:
            if self._idle > len(self._jobs):  # an idle thread will take it
                self._jobs.append((function, args))
                self._changed.notify()
                return
        threading.Thread(target=self._work, args=((function, args),), name=self._name, daemon=True).start()

    def _work(self, job: Job) -> None:
        while True:
            function, args = job
            try:
                function(*args)
            except Exception:
                log.exception("%s job failed", self._name)
            del function, args, job  # drop references while idle
            with self._changed:
                self._idle += 1
                deadline = time.monotonic() + self._idle_seconds
                while not self._jobs:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
                self._idle -= 1
                if not self._jobs:
                    return
                job = self._jobs.popleft()
