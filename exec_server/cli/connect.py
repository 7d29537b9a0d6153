"""How ``run`` and ``cp`` reach a server, and how their failures read.

Every user mistake or failure ends in one line on stderr,
``exec-server <command>: <what> (<path or URL>)``, and a documented exit
status (``exec-server run --help`` lists them); never a traceback.
"""

import argparse
import os
import shlex
from typing import List, Optional

from exec_server.cli.options import client_token
from exec_server.cli.statuses import EXIT_DISCONNECTED, EXIT_USAGE
from exec_server.cli.output import say
from exec_server.client.api import Client, ReconnectPolicy
from exec_server.common.bearer import shown_url
from exec_server.protocol.errors import ExecServerDisconnected, ExecServerTLSError, RpcError


class CommandError(Exception):
    """A failure a subcommand reports as one line and an exit status.

    Attributes:
        what: what went wrong, in words; where: the path, URL or command it
        concerns (or None); status: the exit status.
    """

    def __init__(self, what: str, where: Optional[str] = None, status: int = EXIT_USAGE):
        super().__init__(what)
        self.what = what
        self.where = where
        self.status = status

    def line(self, command: str) -> str:
        where = shown_url(self.where) if self.where and "://" in self.where else self.where  # no password
        suffix = " (%s)" % where if where else ""
        return "exec-server %s: %s%s" % (command, self.what, suffix)


def report(command: str, error: CommandError) -> int:
    """Print the error's line on stderr; returns its exit status."""
    say(error.line(command))  # bounded after an ending signal (a stderr whose reader stopped reading)
    return error.status


def credential_options(args: argparse.Namespace) -> List[str]:
    """The credential files given (``--token-file``, ``--cafile``, ``--certfile``, ``--keyfile``), as typed:
    what only a server URL uses."""
    return ["--" + name.replace("_", "-") for name in ("token_file", "cafile", "certfile", "keyfile")
            if getattr(args, name, None)]


def credentials(args: argparse.Namespace, urls: List[str]):
    """``(token, ssl_context)`` of ``--token-file``, ``--cafile``, ``--certfile`` and ``--keyfile``, for the
    servers at ``urls``.

    Raises:
        CommandError: a file cannot be read or is not what it should be, one line naming it, or TLS options
            and no ``wss://`` URL among ``urls`` (they would be ignored); exit 2.
    """
    tls = ["--" + name for name in ("cafile", "certfile", "keyfile") if getattr(args, name, None)]
    if tls and not any(url.lower().startswith("wss:") for url in urls):  # as the server's --tls-* with ws://
        raise CommandError("%s %s a wss:// server URL" % (", ".join(tls), "needs" if len(tls) == 1 else "need"))
    try:
        token = client_token(args)
    except OSError as exc:
        raise CommandError("cannot read the token file: %s" % os.strerror(exc.errno) if exc.errno else exc,
                           args.token_file) from None
    except ValueError as exc:
        raise CommandError("unusable token file: %s" % exc, args.token_file) from None
    return token, client_ssl_context(args)


def client_ssl_context(args: argparse.Namespace):
    """The ssl.SSLContext of ``--cafile``, ``--certfile`` and ``--keyfile`` (None: the system trust
    store, no client certificate).

    Raises:
        CommandError: a file cannot be read or is not what it should be, one line naming it (exit 2).
    """
    cafile, certfile, keyfile = (getattr(args, name, None) for name in ("cafile", "certfile", "keyfile"))
    if keyfile and not certfile:
        raise CommandError("--keyfile needs --certfile", keyfile)
    if not cafile and not certfile:
        return None
    import ssl

    from exec_server.server.tls import EncryptedKey, refuse_passphrase

    what, path = "CA file", cafile
    try:
        context = ssl.create_default_context(cafile=cafile or None)
        if certfile:
            for what, path in (("certificate file", certfile), ("key file", keyfile)):
                if path:
                    open(path, "rb").close()  # ssl's own error would not say which file is missing
            what, path = "certificate file", certfile
            context.load_cert_chain(certfile, keyfile or None, password=refuse_passphrase)
    except EncryptedKey:  # OpenSSL asked for its passphrase on the terminal
        raise CommandError("cannot load the key file: it is encrypted (a passphrase protects it); give the key "
                           "unencrypted", keyfile or certfile) from None
    except ssl.SSLError as exc:
        if what == "CA file":
            raise CommandError("cannot load the CA file: %s" % (exc.strerror or exc), cafile) from None
        if keyfile and "KEY_VALUES_MISMATCH" in str(exc):
            raise CommandError("cannot load the key file: not the private key of --certfile", keyfile) from None
        if keyfile:
            raise CommandError("cannot load the certificate and key files: not a PEM certificate and a PEM "
                               "private key", "%s, %s" % (certfile, keyfile)) from None
        raise CommandError("cannot load the certificate file: not a PEM certificate with its private key",
                           certfile) from None
    except OSError as exc:
        raise CommandError("cannot load the %s: %s" % (what, exc.strerror or exc), path) from None
    return context


def disconnected(error: ExecServerDisconnected, where: Optional[str]) -> CommandError:
    """The one line for a connection that failed or was lost."""
    text = str(error)
    if where:  # the URL or command ends the line once; not again inside it
        for url in (where, shown_url(where)):  # ws_open's messages show the URL without its user information
            text = text.replace(" with %s" % url, "").replace(" to %s" % url, "")
    if " 401" in text or text.startswith("401"):
        detail = text.split("401", 1)[1].strip(" :-") or "missing or invalid token"
        return CommandError("authentication failed (HTTP 401): %s" % detail, where, EXIT_DISCONNECTED)
    cause = error.__cause__
    if isinstance(error, ExecServerTLSError):  # its cause is an ssl.SSLError, whose errno means nothing here
        return CommandError(text, where, EXIT_DISCONNECTED)
    if isinstance(cause, OSError) and cause.errno:  # a connect's, or a send's on a connection that was up
        verb = "connection lost" if text.startswith("send failed") else "cannot connect"
        return CommandError("%s: %s" % (verb, os.strerror(cause.errno)), where, EXIT_DISCONNECTED)
    return CommandError(text, where, EXIT_DISCONNECTED)


def connect(args: argparse.Namespace, client_name: str,
            reconnect: Optional[ReconnectPolicy] = None) -> Client:
    """A connected client for ``--url`` or ``--via`` (exactly one must be given).

    Raises:
        CommandError: a malformed URL, an unreadable token file, a server
            that refuses, cannot be reached or does not answer.
    """
    if args.via is not None:
        try:
            argv = shlex.split(args.via)
        except ValueError as exc:  # an unbalanced quote, a lone trailing backslash
            raise CommandError("--via is not a command line: %s" % exc, args.via) from None
        if not argv:
            raise CommandError("--via needs a command", None)
        given = credential_options(args)
        if given:  # the command's own options reach its server
            raise CommandError("%s: for a server URL; --via's server is reached through its command" % (
                ", ".join(given)))
        try:
            return Client.spawn(argv, timeout=args.timeout, client_name=client_name)
        except TimeoutError:
            raise CommandError("the server did not answer initialize within %g s" % args.timeout, args.via,
                               EXIT_DISCONNECTED) from None
        except ExecServerDisconnected as exc:
            if isinstance(exc.__cause__, FileNotFoundError):  # the server command itself is missing
                raise CommandError("command not found", argv[0], EXIT_DISCONNECTED) from None
            raise disconnected(exc, args.via) from None
    token, ssl_context = credentials(args, [args.url])
    try:
        return Client.connect(args.url, timeout=args.timeout, client_name=client_name, reconnect=reconnect,
                              token=token, ssl_context=ssl_context)
    except ValueError:
        raise CommandError("not a server URL, want ws://HOST:PORT or wss://HOST:PORT", args.url) from None
    except TimeoutError:
        raise CommandError("the server did not answer within %g s" % args.timeout, args.url,
                           EXIT_DISCONNECTED) from None
    except ExecServerDisconnected as exc:
        raise disconnected(exc, args.url) from None
    except RpcError as exc:
        raise CommandError(exc.message, args.url, EXIT_DISCONNECTED) from None
