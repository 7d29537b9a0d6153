"""Pipe capacity and read buffer of the stdio transport, at either end (capacity: Linux).

A stdio message is one line, and a 64 KiB output chunk makes a line of
~87 KB: with a pipe's default 64 KiB the writer blocks in the middle of
every such line and the reader wakes for each piece.  Both ends ask for
:data:`PIPE_BYTES` (the client on the pipes it makes for ``Client.spawn``,
the server on its stdin and stdout, whoever made them) and read through a
:data:`STDIO_BUFFER_BYTES` buffer.  Measured with
``Client.spawn`` and ``run(head -c 256M)`` (README "Performance" (d)).
"""

import sys

#: Capacity, in bytes, asked of each stdio pipe (``F_SETPIPE_SZ``).  The kernel
#: grants unprivileged users up to /proc/sys/fs/pipe-max-size (1 MiB by default);
#: where it refuses, the pipe keeps its size, which costs speed, not data.
PIPE_BYTES = 1024 * 1024
#: Bytes of the buffer each end reads the other's lines through (one read takes up to this
#: much: with io's default 8 KiB a 64 KiB chunk's line took eleven reads).
STDIO_BUFFER_BYTES = 1024 * 1024
#: ``fcntl.F_SETPIPE_SZ`` (named by Python from 3.10 on).
_F_SETPIPE_SZ = 1031


def enlarge_pipe(fd: int, size: int = PIPE_BYTES) -> bool:
    """Ask that the pipe ``fd`` hold ``size`` bytes; False where it cannot (not Linux, not a pipe, refused)."""
    if not sys.platform.startswith("linux"):
        return False
    import fcntl

    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", _F_SETPIPE_SZ), size)
    except OSError:
        return False
    return True
