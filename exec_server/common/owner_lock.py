"""Files a server holds locked (``flock``) for its life, so that a later server can tell it is gone.

A server killed with SIGKILL (or by the OOM killer) cleans nothing up.
What it leaves on disk (an output spool, mount point files) is marked by a
file it held under an exclusive ``flock``: the kernel releases the lock
when the process dies, so a later server that can take the lock knows the
owner is gone and may remove what the file stands for.  POSIX only: where
``fcntl`` is missing (Windows) nothing is held and nothing is taken.
"""

import os
from typing import Optional

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def hold(path: str) -> int:
    """Make the file ``path`` (mode 0600) locked for this process's life; returns the descriptor to keep open.

    The file is locked under ``path + ".new"`` and then renamed, so no
    other server ever finds it unlocked while its owner lives.  Closing
    the descriptor (or the process's end) releases the lock.

    Raises:
        OSError: the file cannot be made or locked (ENOLCK on NFS without lockd), or the platform has no ``flock``.
    """
    try:
        import fcntl
    except ImportError:
        raise OSError("no flock on this platform") from None
    staging = path + ".new"
    fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: no one else holds it
        os.rename(staging, path)
    except OSError:
        os.close(fd)
        try:
            os.unlink(staging)
        except OSError:
            pass
        raise
    return fd


def take_abandoned(path: str) -> Optional[int]:
    """The descriptor of ``path`` locked by us, if the process that held it is gone; None while it lives.

    None too when the file is missing, a symlink, or cannot be opened.  Close
    the descriptor once what the file stands for is removed.
    """
    try:
        import fcntl
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # its owner lives
        os.close(fd)
        return None
    return fd
