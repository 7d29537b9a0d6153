"""Every option of ``exec-server`` and its subcommands, and the exit statuses.

The server options (``exec-server --listen ...`` and what ``service install``
stores) and the client options of ``run`` and ``cp`` are defined once here,
so every subcommand module and the Windows service parse them alike.
"""

import argparse
import os
from typing import Optional

from exec_server.server.config import ServerConfig

#: ``--listen`` values that mean newline-delimited JSON on stdin/stdout.
STDIO_LISTEN = ("stdio", "stdio://")

#: Exit status of ``run`` when the command could not be run at all.
EXIT_RUN_FAILED = 125
#: Exit status of ``run`` when the connection to the server was lost.
EXIT_DISCONNECTED = 255
#: Exit status of a usage mistake (argparse's own).
EXIT_USAGE = 2

RUN_EXIT_STATUSES = """exit status:
  N    the remote command's own exit status (128+N when a pipe process died of signal N)
  2    a usage mistake: a bad option, server URL or token file
  125  the server could not start the command (command or working directory not found)
  255  the connection failed, was refused (e.g. a missing or invalid token) or was lost
       before the command's exit status arrived"""


def add_server_options(parser: argparse.ArgumentParser) -> None:
    defaults = ServerConfig()
    parser.add_argument("--listen", default="ws://127.0.0.1:0", metavar="URL",
                        help="ws://IP:PORT to listen on (port 0 picks a free port), or stdio for "
                             "newline-delimited JSON on stdin/stdout (default %(default)s)")
    parser.add_argument("--ws-auth", choices=["capability-token"],
                        help="require Authorization: Bearer <token> on WebSocket upgrades")
    parser.add_argument("--ws-token-file", metavar="PATH", help="file holding the capability token")
    parser.add_argument("--ws-token-sha256", metavar="HEX", help="SHA-256 digest of the capability token")
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
    parser.add_argument("--max-open-files", type=int, default=defaults.max_open_files, metavar="N",
                        help="fs/open handles per connection (default %(default)s)")
    parser.add_argument("--ping-interval", type=float, default=defaults.ping_interval, metavar="SECONDS",
                        help="WebSocket ping interval, 0 disables (default %(default)s)")
    parser.add_argument("--otel", action="store_true",
                        help="configure the OpenTelemetry SDK (needs opentelemetry-sdk; OTLP when "
                             "opentelemetry-exporter-otlp is installed, else stderr)")
    parser.add_argument("--log-level", default=os.environ.get("EXEC_SERVER_LOG", "WARNING"),
                        help="logging level on stderr (default %(default)s)")


def server_parser() -> argparse.ArgumentParser:
    """A parser of the server options alone (what ``service install`` checks and stores)."""
    parser = argparse.ArgumentParser(prog="exec-server", description="JSON-RPC remote-execution server")
    add_server_options(parser)
    return parser


def add_client_options(parser: argparse.ArgumentParser, user: str) -> None:
    """``--url``, ``--via``, ``--token-file`` and ``--timeout`` of a client subcommand (``run``, ``cp``)."""
    parser.add_argument("--url", help="server to use" + (
        " (default: an embedded server on a free loopback port)" if user == "run" else ""))
    parser.add_argument("--via", metavar="COMMAND",
                        help='start the server as a child speaking stdio, e.g. "ssh host exec-server --listen stdio"')
    parser.add_argument("--token-file", metavar="PATH", help="capability token sent as Authorization: Bearer")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="connect timeout (default %(default)s)")


def config_from_options(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig the parsed server options ask for."""
    return ServerConfig(
        concurrent_requests=args.concurrent_requests,
        max_queued_requests=args.max_queued_requests,
        max_message_bytes=args.max_message_bytes,
        retained_output_bytes=args.retained_output_bytes,
        retained_output_chunks=args.retained_output_chunks,
        closed_process_retention=args.closed_process_retention,
        detached_session_ttl=args.detached_session_ttl,
        max_processes_per_session=args.max_processes_per_session,
        ping_interval=args.ping_interval,
        max_open_files=args.max_open_files,
        max_sessions=args.max_sessions,
        max_connections=args.max_connections,
    )


def auth_from(args: argparse.Namespace):
    """The CapabilityToken the options ask for, or None.

    Raises:
        ValueError: inconsistent options; OSError: unreadable token file.
    """
    from exec_server.server.auth import CapabilityToken

    if args.ws_auth is None:
        if args.ws_token_file or args.ws_token_sha256:
            raise ValueError("--ws-token-file and --ws-token-sha256 need --ws-auth capability-token")
        return None
    if bool(args.ws_token_file) == bool(args.ws_token_sha256):
        raise ValueError("--ws-auth capability-token needs exactly one of --ws-token-file and --ws-token-sha256")
    if args.ws_token_file:
        return CapabilityToken.from_file(args.ws_token_file)
    return CapabilityToken(args.ws_token_sha256)


def client_headers(args: argparse.Namespace) -> Optional[dict]:
    if not getattr(args, "token_file", None):
        return None
    with open(args.token_file, encoding="utf-8") as handle:
        return {"Authorization": "Bearer " + handle.read().rstrip("\r\n")}


def listen_options(args: argparse.Namespace):
    """Check the WebSocket listen options; returns the CapabilityToken or None.

    Raises:
        ValueError: a malformed listen URL, inconsistent auth options, or a
            non-loopback address without auth; OSError: unreadable token file.
    """
    from exec_server.server.app import is_loopback, parse_listen_url

    auth = auth_from(args)
    host, _port = parse_listen_url(args.listen)
    if auth is None and not is_loopback(host):
        raise ValueError("websocket auth is required for non-localhost listeners; listen on 127.0.0.1 "
                         "or ::1, or use --ws-auth capability-token")
    return auth


def add_run_parser(commands) -> None:
    run = commands.add_parser("run", help="run a command through an exec-server",
                              description="Run a command through an exec-server and stream its output.",
                              epilog=RUN_EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_client_options(run, "run")
    run.add_argument("--cwd", help="working directory on the server")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                     help="set a variable for the command (repeatable)")
    run.add_argument("--clean-env", action="store_true",
                     help="give the command only the --env variables (default: inherit the server's)")
    run.add_argument("--tty", action="store_true", help="run under a pseudo-terminal")
    run.add_argument("--stdin", action="store_true",
                     help="forward local stdin to the command, then its end of file (always on with --tty)")
    run.add_argument("--reconnect-deadline", type=float, default=None, metavar="SECONDS",
                     help="how long to try to resume the session after the connection drops; 0 disables "
                          "(default: the client's ReconnectPolicy deadline)")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- command and arguments")


def add_cp_parser(commands) -> None:
    cp = commands.add_parser("cp", help="copy files to or from an exec-server (':' marks the remote side)",
                             description="Copy a file; a leading ':' marks the remote side, as in scp.")
    add_client_options(cp, "cp")
    cp.add_argument("source")
    cp.add_argument("destination")
