"""Several hosts for ``run`` and ``cp``: ``--url`` repeated or ``--hosts FILE``, their labels, the Group.

One ``--url`` (and no ``--hosts``) keeps the one-host path unchanged;
anything more is a group.  A host's label, printed in ``[HOST]`` prefixes
and the summary, is its URL's ``host:port`` (the whole URL when two URLs
share one).
"""

import argparse
import os
from typing import TYPE_CHECKING, Dict, List, Optional
from urllib.parse import urlsplit

from exec_server.cli.connect import CommandError, credentials
from exec_server.client.recovery import ReconnectPolicy
from exec_server.common.bearer import shown_url

if TYPE_CHECKING:  # imported by open_group alone: a one-host run does not need it
    from exec_server.client.group import Group


def group_urls(args: argparse.Namespace) -> Optional[List[str]]:
    """The URLs of a several-host command, or None for the one-host path.

    Raises:
        CommandError: an unreadable or empty hosts file, a malformed URL, a
            URL given twice, or an option that needs one host.
    """
    urls = list(getattr(args, "urls", None) or [])
    hosts_file = getattr(args, "hosts_file", None)
    if hosts_file is None and len(urls) <= 1:
        return None
    if hosts_file is not None:
        urls += read_hosts_file(hosts_file)
    if getattr(args, "via", None):
        raise CommandError("--via takes one server; leave out --hosts and the other --url")
    for option in ("tty", "stdin"):
        if getattr(args, option, False):
            raise CommandError("--%s needs a single host" % option)
    if not urls:
        raise CommandError("no hosts in the hosts file", hosts_file)
    seen = set()
    for url in urls:
        key = _server_key(url)
        if key in seen:
            raise CommandError("host given twice", url)
        seen.add(key)
    return urls


def _server_key(url: str) -> tuple:
    """What tells servers apart: scheme, host (case folded), port (80/443 when left out), path ("/" when empty).

    Raises:
        CommandError: not a ``ws://`` or ``wss://`` URL with a host (and a valid port).
    """
    try:
        parts = urlsplit(url)  # raises on a bracket left open (ws://[::1), as .port on a port out of range
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme.lower() not in ("ws", "wss") or not parts.hostname:
        raise CommandError("not a server URL, want ws://HOST:PORT or wss://HOST:PORT", url)
    scheme = parts.scheme.lower()
    return (scheme, parts.hostname, port or (443 if scheme == "wss" else 80), parts.path or "/", parts.query)


def read_hosts_file(path: str) -> List[str]:
    """One URL per line; blank lines and everything after ``#`` are ignored.

    Raises:
        CommandError: the file cannot be read, or a line is not a server URL (the file and line named).
    """
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a byte order mark (Notepad's) is no part of a URL
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = os.strerror(exc.errno) if getattr(exc, "errno", None) else str(exc)
        raise CommandError("cannot read the hosts file: %s" % reason, path) from None
    urls = []
    for number, line in enumerate(lines, 1):
        url = line.split("#", 1)[0].strip()
        if url:
            try:
                _server_key(url)
            except CommandError as exc:
                raise CommandError(exc.what, "%s line %d: %s" % (path, number, shown_url(url))) from None
            urls.append(url)
    return urls


def labels(urls: List[str]) -> Dict[str, str]:
    """label -> URL: ``host:port`` of each, or the whole URLs when two share a ``host:port``.

    A URL's user information (``user:password@``) is never part of a label (a whole URL shows it as ``***@``).
    """
    short = [urlsplit(url).netloc.rpartition("@")[2] for url in urls]
    if len(set(short)) != len(short):
        short = [shown_url(url) for url in urls]
    return dict(zip(short, urls))


def open_group(args: argparse.Namespace, urls: List[str], client_name: str,
               reconnect: Optional[ReconnectPolicy] = ReconnectPolicy()) -> "Group":
    """A :class:`Group` keyed by label, connected with the token, CA file and timeout options.

    Hosts that cannot connect keep their error in ``group.errors``.

    Raises:
        CommandError: an unreadable token, CA, certificate or key file.
    """
    token, ssl_context = credentials(args, urls)
    from exec_server.client.group import Group

    return Group(labels(urls), max_workers=args.parallel, timeout=args.timeout, token=token,
                 ssl_context=ssl_context, client_name=client_name, reconnect=reconnect)
