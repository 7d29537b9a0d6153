"""glibc ``malloc`` tuning for a process that runs the server.

Each response of a large ``process/read`` or file read passes through several
temporary buffers of ~90 KiB (JSON text, UTF-8 bytes, the WebSocket frame).
With glibc's default trim threshold (128 KiB) every ``free`` of such a buffer
hands the top of the heap back to the kernel and the next response faults
the same pages in again: the server then spends about 60 % of a 64 KiB
``process/read`` in page faults (a 64 KiB read round trip took 610-690 us
here, 325-335 us with the threshold at 1 MiB, the reference's figure).

:func:`tune_for_server` raises the threshold with ``mallopt(M_TRIM_THRESHOLD)``.
It is called by the ``exec-server`` command and the Windows service host,
never by :func:`exec_server.server.make_server`, as it changes the whole
process.  It does nothing on other C libraries, when the user has set
``MALLOC_TRIM_THRESHOLD_`` (glibc's own variable wins), or when
``EXEC_SERVER_MALLOC_TUNING=off``.
"""

import ctypes
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
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    applied = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    log.debug("malloc trim threshold %d bytes: %s", TRIM_THRESHOLD_BYTES, "set" if applied else "refused")
    return applied
