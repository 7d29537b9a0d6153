"""``exec-server cp``: copy files to, from or on the server, as scp does.

A leading ``:`` marks the remote side: ``cp ./local.txt :/srv/remote.txt``
uploads, ``cp :/srv/remote.txt ./local.txt`` downloads, ``cp :/a :/b``
copies on the server.  Files of any size stream through ``fs/open`` in 1 MiB
blocks; a download is written to a temporary file and renamed into place.
A progress line is drawn on stderr when it is a terminal.
"""

import argparse
import errno
import os
import sys
import time
from typing import Callable, Optional, TextIO

from fs_helper.replacing import replace_target, write_whole

from exec_server.cli.connect import CommandError, connect, disconnected, report
from exec_server.cli.output import say
from exec_server.client.fs import BLOCK_BYTES, FileSystem
from exec_server.protocol.errors import ExecServerDisconnected, NotFound, RpcError


class Progress:
    """``\\r`` progress line on a terminal; silent otherwise."""

    def __init__(self, label: str, total: Optional[int], stream: TextIO = sys.stderr):
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream
        self.enabled = hasattr(stream, "isatty") and stream.isatty()
        self._last = 0.0
        self._started = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or (self.total is not None and self.done >= self.total)):
            self._last = now
            rate = self.done / max(now - self._started, 1e-6) / (1 << 20)
            if self.total:
                text = "%s %3d%% %.1f/%.1f MiB %.1f MiB/s" % (self.label, self.done * 100 // self.total,
                                                              self.done / (1 << 20), self.total / (1 << 20), rate)
            else:
                text = "%s %.1f MiB %.1f MiB/s" % (self.label, self.done / (1 << 20), rate)
            self.stream.write("\r" + text)
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _remote_target(fs: FileSystem, remote: str, name: str) -> str:
    """Like scp: a remote directory destination gets the source's name appended.

    Raises:
        NotADirectoryError: ``remote`` ends with ``/`` and is no directory (missing, or a file), as
            on the local side: a directory is meant (the server would drop the ``/`` and write a file).
    """
    try:
        if fs.get_metadata(remote)["isDirectory"]:
            return remote.rstrip("/") + "/" + name
    except NotFound:
        pass
    if remote.endswith("/"):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), ":" + remote)
    return remote


def upload(fs: FileSystem, local: str, remote: str, progress_factory: Callable[..., Progress] = Progress) -> int:
    """Send ``local`` to ``remote`` in blocks; returns its size in bytes.

    Atomic where the server has ``atomicReplace``: the remote file is replaced
    when complete, and an interrupted upload leaves it as it was.
    """
    if os.path.isdir(local):
        raise IsADirectoryError("%s is a directory (cp copies one file; cp :A :B copies a directory on the server)"
                                % local)
    remote = _remote_target(fs, remote, os.path.basename(local))
    size = os.path.getsize(local)
    progress = progress_factory(os.path.basename(local), size)
    with open(local, "rb") as source, fs.open(remote, "replace") as target:
        while True:
            block = source.read(BLOCK_BYTES)
            if not block:
                break
            target.write(block)
            progress.advance(len(block))
    progress.finish()
    return size


def download(fs: FileSystem, remote: str, local: str, progress_factory: Callable[..., Progress] = Progress) -> int:
    """Receive ``remote`` into ``local`` (a directory: the remote name inside it); returns its size in bytes.

    Raises:
        OSError: ``local`` names a directory that does not exist (``dir/``,
            or ``dir/name`` under a missing ``dir``), with ``local`` as its filename.
    """
    if os.path.isdir(local):
        local = os.path.join(local, os.path.basename(remote.rstrip("/")))
    elif local.endswith(("/", os.sep)):  # as cp and scp: a directory is meant, and it is not there
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), local)
    if not os.path.isdir(os.path.dirname(os.path.abspath(local))):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), local)
    total = fs.get_metadata(remote)["size"]
    progress = progress_factory(os.path.basename(remote), total)
    written = 0

    def write(target) -> None:
        nonlocal written
        with fs.open(remote, "read") as source:
            for block in source.iter_blocks():
                target.write(block)
                written += len(block)
                progress.advance(len(block))

    # a temporary file renamed when complete, with the old file's mode and owner; through a symlink; in place
    # where a rename would change what the file is (a device such as /dev/null, a FIFO, a hard link)
    target, mode = replace_target(os.path.abspath(local))
    try:
        write_whole(target, write, mode, special_files=True, truncate_last=True)  # cut last: it may be the source
    except OSError as exc:  # a local write's error (ENOSPC) names no file; the server's name theirs
        if exc.filename is None and not isinstance(exc, (TimeoutError, ExecServerDisconnected)):
            exc.filename = local
        raise
    progress.finish()
    return written


def copy(fs: FileSystem, source: str, destination: str) -> int:
    """Copy per the ``:`` convention; returns the bytes transferred (0 on the server).

    ``:A :B`` copies on the server (``fs/copy``, a directory with its tree),
    into ``B`` when it is a directory, like ``cp -r``; an upload or a
    download copies one file.
    """
    remote_source, remote_destination = source.startswith(":"), destination.startswith(":")
    if remote_source and remote_destination:  # as cp -r: into an existing directory, under the source's name
        name = source[1:].rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or source[1:]  # a Windows path too
        fs.copy(source[1:], _remote_target(fs, destination[1:], name), recursive=True)
        return 0
    if remote_destination:
        return upload(fs, source, destination[1:])
    if remote_source:
        return download(fs, source[1:], destination)
    raise CommandError("one side must be remote: mark it with a leading ':' (e.g. :/srv/file)")


def check_sides(source: str, destination: str) -> None:
    """Raise a :class:`CommandError` (exit 2) unless a side is remote (``:PATH``) and no ``:`` lacks its path."""
    if not source.startswith(":") and not destination.startswith(":"):
        raise CommandError("one side must be remote: mark it with a leading ':' (e.g. :/srv/file)")
    if ":" in (source, destination):
        raise CommandError("a remote path follows the ':' (e.g. :/srv/file)")


def copy_files(args: argparse.Namespace) -> int:
    """``exec-server cp``: 0 when the copy is done, else one line on stderr and its status (``cp --help``)."""
    if bool(args.url) == bool(args.via):
        return report("cp", CommandError("give exactly one of --url and --via (--hosts for several hosts)"))
    try:
        check_sides(args.source, args.destination)
    except CommandError as error:
        return report("cp", error)
    remote = args.source if args.source.startswith(":") else args.destination  # what a server error is about
    if args.source.startswith(":") and args.destination.startswith(":"):  # a copy on the server: either side
        remote = "%s -> %s" % (args.source, args.destination)
    try:
        with connect(args, "exec-server-cp") as client:
            try:
                copy(client.fs, args.source, args.destination)
            except KeyboardInterrupt:
                if args.source.startswith(":") and args.destination.startswith(":"):
                    say("exec-server cp: the copy on the server is one request, which goes on to its end "
                        "(the protocol cannot cancel it)")
                raise
    except CommandError as exc:
        return report("cp", exc)
    except RpcError as exc:
        return report("cp", CommandError(exc.message, remote, 1))
    except ExecServerDisconnected as exc:  # lost during the copy (an OSError too: first)
        return report("cp", disconnected(exc, args.via or args.url))
    except (OSError, ValueError) as exc:
        return report("cp", CommandError(os.strerror(exc.errno) if getattr(exc, "errno", None) else str(exc),
                                         getattr(exc, "filename", None), 1))
    return 0
