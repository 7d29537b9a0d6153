"""The signals that stop a server, on either transport (``exec-server`` and ``--listen stdio``)."""

import signal
from typing import List


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
