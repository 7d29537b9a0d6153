"""glibc ``malloc`` tuning for a process that runs the server.

Each response of a large ``process/read`` or file read passes through several
temporary buffers of ~90 KiB (JSON text, UTF-8 bytes, the WebSocket frame).
With glibc's default trim threshold (128 KiB) every ``free`` of such a buffer
hands the top of the heap back to the kernel and the next response faults
the same pages in again: the server then spends about 60 % of a 64 KiB
``process/read`` in page faults (a 64 KiB read round trip took 610-690 us
here, 325-335 us with the threshold at 1 MiB, the reference's figure).

:func:`tune_for_server` raises the threshold with ``mallopt(M_TRIM_THRESHOLD)``.
It is called by the Windows service host, and the ``exec-server`` command
asks for it with :func:`tune_for_server_later`: the server applies it on its
first ``process/*`` or ``fs/*`` request (:func:`apply_deferred`), the first
that can answer with such buffers, so a server that only answers
``initialize`` or ``/readyz`` never imports ctypes (~2-3 ms of a cold start,
#17).  :func:`exec_server.server.make_server` never asks for it, as it
changes the whole process.  It does nothing on other C libraries, when the user has set
``MALLOC_TRIM_THRESHOLD_`` (glibc's own variable wins), or when
``EXEC_SERVER_MALLOC_TUNING=off``.
"""

import logging
import os

log = logging.getLogger(__name__)

#: Free memory, in bytes, glibc keeps at the top of a heap before returning it.
TRIM_THRESHOLD_BYTES = 1024 * 1024
#: ``mallopt`` parameter number of M_TRIM_THRESHOLD (glibc ``malloc.h``).
M_TRIM_THRESHOLD = -1


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (AttributeError, ValueError, OSError):
        return False


def tune_for_server() -> bool:
    """Apply :data:`TRIM_THRESHOLD_BYTES`; True if it was applied."""
    if os.environ.get("EXEC_SERVER_MALLOC_TUNING", "").lower() in ("off", "0", "false"):
        return False
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or not _is_glibc():
        return False
    import ctypes  # here, not at start-up: ~2 ms of a cold start

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    applied = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    log.debug("malloc trim threshold %d bytes: %s", TRIM_THRESHOLD_BYTES, "set" if applied else "refused")
    return applied


_deferred = False  # tune_for_server_later was called and apply_deferred has not run it yet


def tune_for_server_later() -> None:
    """Have :func:`apply_deferred` (at the first ``process/*`` or ``fs/*`` request) call :func:`tune_for_server`."""
    global _deferred
    _deferred = True


def apply_deferred() -> None:
    """Call :func:`tune_for_server` if :func:`tune_for_server_later` asked for it and it has not run yet.

    Cheap when there is nothing to do (a flag).  Two threads calling it at
    once may both apply it, which glibc allows (``mallopt`` takes the arena
    locks) and which sets the same value.
    """
    global _deferred
    if _deferred:
        _deferred = False
        tune_for_server()
