"""The signals that stop a server, on either transport (``exec-server`` and ``--listen stdio``)."""

import signal
from typing import Any, Callable, List


def stop_signals() -> List[int]:
    """SIGTERM, SIGINT, and SIGHUP unless it is ignored (``nohup``): the signal numbers a server stops on.

    SIGHUP (its terminal closed) stops it as SIGTERM does, with the cleanup
    of its processes, rather than the default death without any; a server
    started under ``nohup`` keeps running.  Windows has no SIGHUP.
    """
    signums = [signal.SIGTERM, signal.SIGINT]
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signums.append(signal.SIGHUP)
    return signums


def handle_stop_signals(handler: Callable[[int, Any], None]) -> None:
    """``handler`` for each of :func:`stop_signals` (main thread only), which are also unblocked: a server
    started by a parent that blocks SIGTERM (the mask is inherited across exec) could not be stopped by it."""
    signums = stop_signals()
    for signum in signums:
        signal.signal(signum, handler)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)
