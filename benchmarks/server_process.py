"""Start and stop a server subprocess for the benchmark scripts.

:func:`running_server` starts ``exec-server --listen ws://127.0.0.1:0`` (or
any command that prints its ``ws://`` URL as its first stdout line), yields
``(process, url)`` and stops the process by PID afterwards: SIGTERM, then
SIGKILL after 5 s.
"""

import subprocess
import sys
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

#: Our server on a free loopback port.
OURS = [sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0"]


@contextmanager
def running_server(extra_args: Sequence[str] = (), command: Optional[List[str]] = None,
                   env: Optional[Dict[str, str]] = None) -> Iterator[Tuple["subprocess.Popen[bytes]", str]]:
    """Run ``command`` (default :data:`OURS` plus ``extra_args``) until the block ends.

    Raises:
        RuntimeError: the first stdout line is not a ``ws://`` URL.
    """
    argv = list(command) if command is not None else OURS + list(extra_args)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                               env=env)
    try:
        url = process.stdout.readline().decode().strip()
        if not url.startswith("ws://"):
            raise RuntimeError("server did not start: %r" % argv)
        yield process, url
    finally:
        stop(process)
        process.stdout.close()


def stop(process: "subprocess.Popen[bytes]") -> None:
    """SIGTERM ``process`` (by its PID), then SIGKILL after 5 s; returns once it is reaped."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
