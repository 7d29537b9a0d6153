"""``exec-server cp`` with several hosts (``--url`` repeated or ``--hosts FILE``); one host goes to :mod:`cp`.

``:PATH`` means that path on every host: ``cp ./f :/srv/f`` uploads to
each, ``cp :/var/log/app.log ./logs`` downloads each host's file to
``./logs/HOST/app.log`` (HOST is ``host_port``, see
:func:`~exec_server.client.group_fs.host_dirnames`), ``cp :/a :/b`` copies on
each host.  Hosts are worked on ``--parallel`` at a time, without progress
lines.  Every failed host gets one line on stderr; the status is 0 when all
succeeded, else :data:`~exec_server.cli.statuses.EXIT_SOME_HOSTS_FAILED`.
"""

import argparse
import io
import os
from typing import List

from exec_server.cli.connect import CommandError, disconnected, report
from exec_server.cli.cp import Progress, check_sides, copy, copy_files, download, upload
from exec_server.cli.hosts import group_urls, labels, open_group
from exec_server.cli.statuses import EXIT_SOME_HOSTS_FAILED
from exec_server.cli.output import END_SIGNALS, ended_status, handle, raise_ended, restore
from exec_server.client.api import Client
from exec_server.client.group_fs import host_dirnames
from exec_server.protocol.errors import ExecServerDisconnected, RpcError
from fs_helper.replacing import discard_unfinished


def copy_command(args: argparse.Namespace) -> int:
    """``exec-server cp``: the group copy for several hosts, else :func:`exec_server.cli.cp.copy_files`.

    SIGTERM and SIGHUP end it as Ctrl-C does, with status 128 + N (they
    killed it on the spot, leaving a download's temporary file behind).
    """
    installed = handle(END_SIGNALS, raise_ended)
    try:
        urls = group_urls(args)
        if urls is None:
            return copy_files(args)
        return copy_group(args, urls)
    except CommandError as exc:
        return report("cp", exc)
    except KeyboardInterrupt as interrupted:
        # a download's temporary file, also one the interrupt came between the making and the writing of
        discard_unfinished()
        return ended_status(interrupted, "cp")  # 130 for Ctrl-C
    finally:
        restore(installed)


def _silent(label: str, total) -> Progress:
    return Progress(label, total, stream=io.StringIO())  # not a terminal: draws nothing


def copy_group(args: argparse.Namespace, urls: List[str]) -> int:
    """Copy on, to or from every host; 0 when all succeeded, else EXIT_SOME_HOSTS_FAILED.

    Raises:
        CommandError: a usage mistake (no remote side, an unreadable token
            file; status 2), or a local source that is a directory or missing
            (status 1, as for one host).
    """
    source, destination = args.source, args.destination
    remote_source, remote_destination = source.startswith(":"), destination.startswith(":")
    check_sides(source, destination)
    if remote_destination and not remote_source:
        if os.path.isdir(source):  # status 1, the copy failed, as for one host
            raise CommandError("is a directory (cp copies one file; cp :A :B copies a directory on the server)", source,
                               1)
        if not os.path.isfile(source):
            raise CommandError("no such file", source, 1)

    by_label = labels(urls)
    folders = host_dirnames(list(by_label))

    def copy_one(host: str, client: Client) -> None:
        if remote_source and remote_destination:  # as for one host: into an existing directory, as cp -r
            copy(client.fs, source, destination)
        elif remote_destination:
            upload(client.fs, source, destination[1:], _silent)
        else:
            folder = os.path.join(destination, folders[host])
            os.makedirs(folder, exist_ok=True)
            download(client.fs, source[1:], folder, _silent)

    with open_group(args, urls, "exec-server-cp") as group:
        result = group.map(copy_one)
    for host, error in result.failed.items():
        report("cp", _failure(error, host, by_label[host]))
    return 0 if result.ok else EXIT_SOME_HOSTS_FAILED


def _failure(error: BaseException, host: str, url: str) -> CommandError:
    """One line naming the host for a host's failure."""
    if isinstance(error, ExecServerDisconnected):
        what = disconnected(error, url).what
    elif isinstance(error, RpcError):  # a remote path, named as one host's line names it
        filename = getattr(error, "filename", None)
        what = "%s (:%s)" % (error.message, filename) if filename else error.message
    elif isinstance(error, OSError) and error.errno:
        what = "%s: %s" % (os.strerror(error.errno), error.filename) if error.filename else os.strerror(error.errno)
    else:
        what = "%s: %s" % (type(error).__name__, error)
    return CommandError(what, host, EXIT_SOME_HOSTS_FAILED)
