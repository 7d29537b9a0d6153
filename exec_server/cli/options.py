"""Every option of ``exec-server`` and its subcommands (their exit statuses: :mod:`exec_server.cli.statuses`).

The server options (``exec-server --listen ...`` and what ``service install``
stores) and the client options of ``run`` and ``cp`` are defined once here,
so every subcommand module and the Windows service parse them alike.
"""

import argparse
import functools
import os
import sys
from typing import Callable, NamedTuple, Optional

from exec_server.cli.logs import level_name
from exec_server.cli.statuses import CP_SEVERAL_HOSTS, RUN_EXIT_STATUSES
from exec_server.common.bearer import check_token
from exec_server.common.durations import check_seconds
from exec_server.server.budget import RESULT_COST_PER_BYTE
from exec_server.server.config import DEFAULT_MAX_CLOCK_SKEW, ServerConfig

#: ``--listen`` values that mean newline-delimited JSON on stdin/stdout.
STDIO_LISTEN = ("stdio", "stdio://")

#: Hosts worked on at once by ``run`` and ``cp`` with several hosts (``--parallel``); the API's default too
#: (``exec_server.client.group.DEFAULT_MAX_WORKERS``).
GROUP_PARALLEL = 32


def add_server_options(parser: argparse.ArgumentParser) -> None:
    defaults = ServerConfig()
    parser.add_argument("--listen", default="ws://127.0.0.1:0", metavar="URL",
                        help="ws://IP:PORT to listen on (port 0 picks a free port), wss://IP:PORT for TLS "
                             "(needs --tls-certfile), or stdio for newline-delimited JSON on stdin/stdout "
                             "(default %(default)s)")
    parser.add_argument("--ws-auth", choices=["capability-token", "signed-bearer-token"],
                        help="require Authorization: Bearer <token> on WebSocket upgrades")
    parser.add_argument("--ws-token-file", metavar="PATH", help="file holding the capability token")
    parser.add_argument("--ws-token-sha256", metavar="HEX", help="SHA-256 hex digest of the capability token "
                        "(of the token alone, without the token file's line break)")
    parser.add_argument("--ws-shared-secret-file", metavar="PATH",
                        help="HS256 secret of signed bearer tokens (UTF-8, trimmed, at least 32 bytes)")
    parser.add_argument("--ws-issuer", metavar="ISSUER", help="required iss claim of signed bearer tokens")
    parser.add_argument("--ws-audience", metavar="AUDIENCE", help="required aud claim of signed bearer tokens")
    parser.add_argument("--ws-max-clock-skew-seconds", type=_whole_seconds, metavar="SECONDS",
                        help="allowed clock difference for exp and nbf of signed bearer tokens (default %d)"
                             % DEFAULT_MAX_CLOCK_SKEW)
    parser.add_argument("--tls-certfile", metavar="PATH", help="PEM certificate chain of a wss:// listener")
    parser.add_argument("--tls-keyfile", metavar="PATH",
                        help="PEM private key of a wss:// listener (default: read from --tls-certfile)")
    parser.add_argument("--tls-client-ca", metavar="PATH",
                        help="PEM CA file; clients must present a certificate it signed")
    parser.add_argument("--tls-handshake-timeout", type=float, default=defaults.tls_handshake_timeout,
                        metavar="SECONDS", help="time a client has for the TLS handshake (default %(default)s)")
    parser.add_argument("--concurrent-requests", type=int, default=defaults.concurrent_requests, metavar="N",
                        help="requests handled at once per connection; 1 is the reference's serial order "
                             "(default %(default)s)")
    parser.add_argument("--max-queued-requests", type=int, default=defaults.max_queued_requests, metavar="N",
                        help="requests waiting per connection; one more gets -32001 (default %(default)s)")
    parser.add_argument("--max-message-bytes", type=int, default=defaults.max_message_bytes, metavar="BYTES",
                        help="largest incoming message (default %(default)s)")
    parser.add_argument("--retained-output-bytes", type=int, default=defaults.retained_output_bytes,
                        metavar="BYTES", help="output kept per process for process/read (default %(default)s)")
    parser.add_argument("--retained-output-chunks", type=int, default=defaults.retained_output_chunks,
                        metavar="N", help="output chunks kept per process (default %(default)s)")
    parser.add_argument("--spool-dir", default=defaults.spool_dir, metavar="DIR",
                        help="where the private output spool directory is made (default: the system's "
                             "temporary directory)")
    parser.add_argument("--spool-bytes-per-process", type=int, default=defaults.spool_bytes_per_process,
                        metavar="BYTES", help="output kept on disk per process past --retained-output-bytes; "
                                              "0 keeps output in memory only (default %(default)s)")
    parser.add_argument("--spool-bytes-total", type=int, default=defaults.spool_bytes_total, metavar="BYTES",
                        help="output kept on disk by all processes together (default %(default)s)")
    parser.add_argument("--spool-chunks-per-process", type=int, default=defaults.spool_chunks_per_process,
                        metavar="N", help="output chunks kept on disk per process (default %(default)s)")
    parser.add_argument("--max-read-bytes", type=int, default=defaults.max_read_bytes, metavar="BYTES",
                        help="most output bytes one process/read returns (default %(default)s)")
    parser.add_argument("--max-result-bytes-in-flight", type=int, default=defaults.max_result_bytes_in_flight,
                        metavar="BYTES", help="memory the large results of all connections (spooled process/read, "
                        "fs/readFile; %d per byte returned) may hold at once (default %%(default)s)"
                        % RESULT_COST_PER_BYTE)
    parser.add_argument("--closed-process-retention", type=float, default=defaults.closed_process_retention,
                        metavar="SECONDS", help="how long a closed process stays readable (default %(default)s)")
    parser.add_argument("--detached-session-ttl", type=float, default=defaults.detached_session_ttl,
                        metavar="SECONDS", help="how long a session outlives its connection (default %(default)s)")
    parser.add_argument("--max-processes-per-session", type=int, default=defaults.max_processes_per_session,
                        metavar="N", help="processes a session may hold (default %(default)s)")
    parser.add_argument("--max-sessions", type=int, default=defaults.max_sessions, metavar="N",
                        help="sessions kept at once (default %(default)s)")
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections, metavar="N",
                        help="WebSocket connections served at once (default %(default)s)")
    parser.add_argument("--max-pending-upgrades", type=int, default=defaults.max_pending_upgrades, metavar="N",
                        help="TCP connections not yet upgraded to a WebSocket at once; one more is closed "
                             "unread (default %(default)s)")
    parser.add_argument("--max-pending-upgrades-per-address", type=int,
                        default=defaults.max_pending_upgrades_per_address, metavar="N",
                        help="of those, from one peer address (default %(default)s)")
    parser.add_argument("--max-open-files", type=int, default=defaults.max_open_files, metavar="N",
                        help="fs/open handles per connection (default %(default)s)")
    parser.add_argument("--max-stdin-queue-bytes", type=int, default=defaults.max_stdin_queue_bytes,
                        metavar="BYTES", help="stdin bytes queued per process for a child that has not read "
                                              "them; process/write past it fails (default %(default)s)")
    parser.add_argument("--linux-sandbox-pid-namespace", choices=("inherit", "isolate"),
                        default=defaults.pid_namespace, metavar="MODE",
                        help="PID namespace of each process tree on Linux: isolate (one namespace per "
                             "process; background jobs end with the command) or inherit (the host's; trees "
                             "found by process group and an inherited marker) (default %(default)s)")
    parser.add_argument("--ping-interval", type=float, default=defaults.ping_interval, metavar="SECONDS",
                        help="WebSocket ping interval, 0 disables (default %(default)s)")
    parser.add_argument("--keepalive-timeout", type=float, default=defaults.keepalive_timeout, metavar="SECONDS",
                        help="close a WebSocket silent this long (no frame, no Pong), detaching its session; "
                             "0 never (default %(default)s)")
    parser.add_argument("--takeover-probe-timeout", type=float, default=defaults.takeover_probe_timeout,
                        metavar="SECONDS", help="a resume probes the connection holding the session and takes "
                        "over if it stays silent this long; 0 answers -32010 at once (default %(default)s)")
    parser.add_argument("--send-timeout", type=float, default=defaults.send_timeout, metavar="SECONDS",
                        help="a write whose peer takes under 4 KiB/s for this long marks the connection dead "
                        "(default %(default)s)")
    parser.add_argument("--upgrade-timeout", type=float, default=defaults.upgrade_timeout, metavar="SECONDS",
                        help="time for the HTTP upgrade request (default %(default)s)")
    parser.add_argument("--initialize-timeout", type=float, default=defaults.initialize_timeout,
                        metavar="SECONDS", help="time from the upgrade to a successful initialize, 0 no limit "
                        "(default %(default)s)")
    parser.add_argument("--evict-idle-after", type=float, default=defaults.evict_idle_after, metavar="SECONDS",
                        help="at --max-connections, a connection quiet this long with nothing running is "
                             "closed for a new one (default %(default)s)")
    parser.add_argument("--shutdown-timeout", type=float, default=defaults.shutdown_timeout, metavar="SECONDS",
                        help="upper bound of the shutdown on SIGTERM/SIGINT/SIGHUP (default %(default)s)")
    parser.add_argument("--otel", action="store_true",
                        help="configure the OpenTelemetry SDK (needs opentelemetry-sdk; OTLP when "
                             "opentelemetry-exporter-otlp is installed, else stderr)")
    parser.add_argument("--log-level", type=level_name, default=None, metavar="LEVEL",
                        help="logging level on stderr: DEBUG, INFO, WARNING, ERROR or CRITICAL (default "
                             "the EXEC_SERVER_LOG variable, else WARNING)")


def _whole_seconds(text: str) -> int:
    """argparse type of ``--ws-max-clock-skew-seconds``: a whole number, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError("invalid value %r: a whole number of seconds, 0 or more" % text)
    return int(text)


def help_formatter(base: type = argparse.HelpFormatter) -> Callable[[str], argparse.HelpFormatter]:
    """A ``formatter_class`` of ``base`` at the terminal's width, found without argparse's import of shutil
    (with zlib, bz2, lzma: ~2 ms of every command's start-up, #17, for a width read only to print help).
    ``shutil.get_terminal_size``'s rule: ``COLUMNS``, else standard output's terminal, else 80 columns."""
    def make(prog: str) -> argparse.HelpFormatter:
        try:
            columns = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
            except (AttributeError, ValueError, OSError):
                columns = 0
        return base(prog, width=(columns or 80) - 2)  # argparse's own width is the terminal's less 2

    return make


def server_parser() -> argparse.ArgumentParser:
    """A parser of the server options alone (what ``service install`` checks and stores)."""
    parser = argparse.ArgumentParser(prog="exec-server", description="JSON-RPC remote-execution server",
                                     formatter_class=help_formatter())
    add_server_options(parser)
    return parser


def add_client_options(parser: argparse.ArgumentParser, user: str) -> None:
    """The client options of ``run`` and ``cp``: ``--url``, ``--via``, ``--token-file``, ``--cafile``,
    ``--certfile``, ``--keyfile``, ``--timeout``."""
    parser.add_argument("--url", action=_AppendUrl, help="server to use; repeat it for several hosts" + (
        " (default: a server embedded in this process, no port)" if user == "run" else ""))
    parser.add_argument("--hosts", metavar="FILE", dest="hosts_file",
                        help="file of server URLs, one per line (# starts a comment); implies several hosts")
    parser.add_argument("--parallel", type=_positive, default=GROUP_PARALLEL, metavar="N",
                        help="with several hosts, how many are worked on at once (default %(default)s)")
    parser.set_defaults(urls=None)
    parser.add_argument("--via", metavar="COMMAND",
                        help='start the server as a child speaking stdio, e.g. "ssh host exec-server --listen stdio"')
    parser.add_argument("--token-file", metavar="PATH",
                        help="token sent as Authorization: Bearer (a capability token or a signed JWT); "
                             "read again at every connect and reconnect")
    parser.add_argument("--cafile", metavar="PATH",
                        help="PEM file of the CAs trusted for a wss:// server (default: the system's)")
    parser.add_argument("--certfile", metavar="PATH",
                        help="PEM client certificate (and its key), for a server started with --tls-client-ca")
    parser.add_argument("--keyfile", metavar="PATH", help="PEM private key of --certfile (default: in --certfile)")
    parser.add_argument("--timeout", type=functools.partial(_seconds, positive=True), default=10.0, metavar="SECONDS",
                        help="connect timeout (default %(default)s)")
    # after the subcommand too; left out, the one before it (or EXEC_SERVER_LOG) stands
    parser.add_argument("--log-level", type=level_name, default=argparse.SUPPRESS, metavar="LEVEL",
                        help="logging level on stderr, as --log-level before '%s' (default EXEC_SERVER_LOG, else "
                             "WARNING)" % user)


class _AppendUrl(argparse.Action):
    """``--url`` may be repeated: ``url`` keeps the first (the one-host path), ``urls`` all of them."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.urls = list(namespace.urls or []) + [values]
        if namespace.url is None:
            namespace.url = values


def _positive(text: str) -> int:
    """argparse type of ``--parallel``: a whole number, 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("invalid value %r: a whole number, 1 or more" % text)
    return int(text)


def _seconds(text: str, positive: bool = False) -> float:
    """argparse type of ``--reconnect-deadline`` (0 or more; 0 disables) and, ``positive``, of ``--timeout``
    (over 0: a connect in 0 s cannot succeed): a finite number of seconds."""
    try:
        return check_seconds(float(text), "value", positive)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid value %r: a number of seconds, %s"
                                         % (text, "over 0" if positive else "0 or more")) from None


def config_from_options(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig the parsed server options ask for (each option sets the field of its name)."""
    given = vars(args)
    values = {name: given[name] for name in ServerConfig._fields if name in given}
    try:
        return ServerConfig(**values, pid_namespace=args.linux_sandbox_pid_namespace)
    except ValueError as exc:  # named as the user typed it: --max-sessions, not max_sessions
        name, _, rest = str(exc).partition(" ")
        if name not in values:
            raise
        raise ValueError("--%s %s" % (name.replace("_", "-"), rest)) from None


def auth_from(args: argparse.Namespace):
    """The CapabilityToken or SignedBearerToken the options ask for, or None.

    The refusals of inconsistent options are the reference's messages.

    Raises:
        ValueError: inconsistent options, or an unreadable token or shared secret file.
    """
    from exec_server.server.auth import CapabilityToken, SignedBearerToken

    capability = args.ws_token_file is not None or args.ws_token_sha256 is not None
    signed = (args.ws_shared_secret_file is not None or args.ws_issuer is not None
              or args.ws_audience is not None or args.ws_max_clock_skew_seconds is not None)
    if args.ws_auth is None:
        if capability or signed:
            raise ValueError("websocket auth flags require `--ws-auth capability-token` or "
                             "`--ws-auth signed-bearer-token`")
        return None
    if args.ws_auth == "signed-bearer-token":
        if capability:
            raise ValueError("`--ws-token-file` and `--ws-token-sha256` require `--ws-auth capability-token`, "
                             "not `signed-bearer-token`")
        if args.ws_shared_secret_file is None:
            raise ValueError("`--ws-shared-secret-file` is required when `--ws-auth signed-bearer-token` is set")
        settings = {"issuer": args.ws_issuer, "audience": args.ws_audience}
        if args.ws_max_clock_skew_seconds is not None:
            settings["max_clock_skew"] = args.ws_max_clock_skew_seconds
        return SignedBearerToken.from_file(args.ws_shared_secret_file, **settings)
    if signed:
        raise ValueError("`--ws-shared-secret-file`, `--ws-issuer`, `--ws-audience`, and "
                         "`--ws-max-clock-skew-seconds` require `--ws-auth signed-bearer-token`")
    if bool(args.ws_token_file) == bool(args.ws_token_sha256):
        raise ValueError("--ws-auth capability-token needs exactly one of --ws-token-file and --ws-token-sha256")
    if args.ws_token_file:
        return CapabilityToken.from_file(args.ws_token_file)
    return CapabilityToken(args.ws_token_sha256)


def client_token(args: argparse.Namespace) -> Optional[Callable[[], str]]:
    """A callable that reads ``--token-file`` (each time: a signed token may be
    replaced while the client runs), or None without the option.

    Raises:
        OSError: the file cannot be read now (checked once up front).
        ValueError: its token could never be sent (:func:`~exec_server.common.bearer.check_token`: empty,
            two lines, not ASCII...), now or at a later read.
    """
    path = getattr(args, "token_file", None)
    if not path:
        return None

    def read() -> str:
        with open(path, "rb") as handle:
            data = handle.read()
        return check_token(data.decode("ascii", "replace").rstrip("\r\n"))  # U+FFFD: refused as non-ASCII

    read()
    return read


def tls_from(args: argparse.Namespace):
    """The server's ssl.SSLContext for a ``wss://`` listen URL, or None for ``ws://``.

    Raises:
        ValueError: ``wss://`` without ``--tls-certfile``, TLS options with
            ``ws://``, or a certificate, key or CA file that cannot be loaded.
    """
    from urllib.parse import urlsplit

    from exec_server.server.tls import server_context

    given = [name for name, value in (("--tls-certfile", args.tls_certfile), ("--tls-keyfile", args.tls_keyfile),
                                      ("--tls-client-ca", args.tls_client_ca)) if value is not None]
    if urlsplit(args.listen).scheme != "wss":
        if given:
            raise ValueError("%s %s a wss:// listen URL" % (", ".join(given), "needs" if len(given) == 1 else "need"))
        return None
    if args.tls_certfile is None:
        raise ValueError("a wss:// listener needs --tls-certfile (and --tls-keyfile unless the key is in it)")
    return server_context(args.tls_certfile, args.tls_keyfile, args.tls_client_ca)


class ListenSettings(NamedTuple):
    """What a WebSocket listener needs besides its URL and limits."""
    auth: object  # CapabilityToken, SignedBearerToken or None
    ssl_context: object  # ssl.SSLContext or None


def listen_options(args: argparse.Namespace) -> ListenSettings:
    """Check the WebSocket listen options; returns the auth check and TLS context.

    Raises:
        ValueError: a malformed listen URL, inconsistent auth or TLS options,
            an unusable secret, certificate or key, or a non-loopback address
            with neither auth nor client certificates; OSError: unreadable
            token file.
    """
    from exec_server.server.app import is_loopback, parse_listen_url

    host, _port = parse_listen_url(args.listen)
    auth = auth_from(args)
    ssl_context = tls_from(args)
    if auth is None and args.tls_client_ca is None and not is_loopback(host):
        raise ValueError("websocket auth is required for non-localhost listeners; listen on 127.0.0.1 "
                         "or ::1, or use --ws-auth capability-token, --ws-auth signed-bearer-token "
                         "or --tls-client-ca")
    return ListenSettings(auth, ssl_context)


def add_run_parser(commands) -> None:
    run = commands.add_parser("run", help="run a command through an exec-server",
                              description="Run a command through an exec-server and stream its output.",
                              epilog=RUN_EXIT_STATUSES,
                              formatter_class=help_formatter(argparse.RawDescriptionHelpFormatter))
    add_client_options(run, "run")
    run.add_argument("--cwd", help="working directory on the server, an absolute path (default: the server's own)")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                     help="set a variable for the command (repeatable)")
    run.add_argument("--clean-env", action="store_true",
                     help="give the command only the --env variables (default: inherit the server's)")
    run.add_argument("--tty", action="store_true", help="run under a pseudo-terminal")
    run.add_argument("--stdin", action="store_true",
                     help="forward local stdin to the command, then its end of file (always on with --tty)")
    run.add_argument("--reconnect-deadline", type=_seconds, default=None, metavar="SECONDS",
                     help="how long to try to resume the session after the connection drops; 0 disables "
                          "(default: ReconnectPolicy's deadline, 25)")
    run.add_argument("--group-output", action="store_true",
                     help="with several hosts, print each host's output as one block when it ends "
                          "(default: each line as it comes, prefixed with [HOST])")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- command and arguments")


def add_cp_parser(commands) -> None:
    cp = commands.add_parser("cp", help="copy files to or from an exec-server (':' marks the remote side)",
                             description="Copy a file; a leading ':' marks the remote side, as in scp.",
                             epilog=CP_SEVERAL_HOSTS,
                             formatter_class=help_formatter(argparse.RawDescriptionHelpFormatter))
    add_client_options(cp, "cp")
    cp.add_argument("source", help="a local path, or :PATH on the server (--url, --via or --hosts names it)")
    cp.add_argument("destination", help="a local path, or :PATH on the server; one of the two is remote")
