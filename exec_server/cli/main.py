"""Command line: ``exec-server [--listen URL]`` serves; ``exec-server run`` runs a command.

    exec-server --listen ws://127.0.0.1:8765     # prints the bound URL once ready
    exec-server run -- python -c "print('hi')"   # embedded server, real WebSocket
    exec-server run --url ws://127.0.0.1:8765 --env A=1 --cwd /tmp -- sh -c 'echo $A'

``run`` streams the remote stdout and stderr to the local ones as they arrive,
exits with the remote exit status (128 + N when a pipe process died of signal
N), and turns Ctrl-C into ``process/signal interrupt``.
"""

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from typing import TYPE_CHECKING, List, Optional, Sequence

from exec_server import __version__
from exec_server.server.config import ServerConfig
from exec_server.protocol.errors import ExecServerDisconnected, RpcError
from exec_server.server.app import is_loopback, make_server, parse_listen_url

if TYPE_CHECKING:  # the client side is imported only by the commands that use it
    from exec_server.client.api import Client

#: ``--listen`` values that mean newline-delimited JSON on stdin/stdout.
STDIO_LISTEN = ("stdio", "stdio://")

log = logging.getLogger("exec_server")

#: Exit status of ``run`` when the command could not be run at all.
EXIT_RUN_FAILED = 125
#: Exit status of ``run`` when the connection to the server was lost.
EXIT_DISCONNECTED = 255


def _server_options(parser: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exec-server", description="JSON-RPC remote-execution server")
    parser.add_argument("--version", action="version", version="exec-server " + __version__)
    _server_options(parser)
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run a command through an exec-server",
                              description="Run a command through an exec-server and stream its output.")
    run.add_argument("--url", help="server to use (default: an embedded server on a free loopback port)")
    run.add_argument("--via", metavar="COMMAND",
                     help='start the server as a child speaking stdio, e.g. "ssh host exec-server --listen stdio"')
    run.add_argument("--token-file", metavar="PATH", help="capability token sent as Authorization: Bearer")
    run.add_argument("--cwd", help="working directory on the server")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                     help="set a variable for the command (repeatable)")
    run.add_argument("--clean-env", action="store_true",
                     help="give the command only the --env variables (default: inherit the server's)")
    run.add_argument("--tty", action="store_true", help="run under a pseudo-terminal")
    run.add_argument("--stdin", action="store_true",
                     help="forward local stdin to the command (always on with --tty)")
    run.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                     help="connect timeout (default %(default)s)")
    run.add_argument("--reconnect-deadline", type=float, default=None, metavar="SECONDS",
                     help="how long to try to resume the session after the connection drops; 0 disables "
                          "(default: the client's ReconnectPolicy deadline)")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- command and arguments")
    cp = commands.add_parser("cp", help="copy files to or from an exec-server (':' marks the remote side)",
                             description="Copy a file; a leading ':' marks the remote side, as in scp.")
    cp.add_argument("--url", help="server to use")
    cp.add_argument("--via", metavar="COMMAND", help="start the server as a stdio child")
    cp.add_argument("--token-file", metavar="PATH", help="capability token sent as Authorization: Bearer")
    cp.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="connect timeout")
    cp.add_argument("source")
    cp.add_argument("destination")
    service = commands.add_parser("service", help="run the server as a Windows service (Windows-only)",
                                  description="Install, start, stop or remove the Windows service; server "
                                              "options for install go after --.")
    service.add_argument("action", choices=["install", "start", "stop", "remove"])
    service.add_argument("server_arguments", nargs=argparse.REMAINDER)
    return parser


def copy_files(args: argparse.Namespace) -> int:
    from exec_server.client.api import Client
    from exec_server.cli.cp import copy

    if bool(args.url) == bool(args.via):
        print("exec-server cp: give exactly one of --url and --via", file=sys.stderr)
        return 2
    try:
        if args.via:
            client = Client.spawn(shlex.split(args.via), timeout=args.timeout, client_name="exec-server-cp")
        else:
            client = Client.connect(args.url, timeout=args.timeout, client_name="exec-server-cp",
                                    headers=_client_headers(args))
        with client:
            copy(client.fs, args.source, args.destination)
    except (RpcError, OSError, ValueError, ExecServerDisconnected) as exc:
        print("exec-server cp: %s" % (exc.message if isinstance(exc, RpcError) else exc), file=sys.stderr)
        return 1
    return 0


def _parse_env(pairs: List[str]) -> dict:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit("exec-server run: --env wants NAME=VALUE, got %r" % pair)
        env[name] = value
    return env


def _auth_from(args: argparse.Namespace):
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


def _client_headers(args: argparse.Namespace) -> Optional[dict]:
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
    auth = _auth_from(args)
    host, _port = parse_listen_url(args.listen)
    if auth is None and not is_loopback(host):
        raise ValueError("websocket auth is required for non-localhost listeners; listen on 127.0.0.1 "
                         "or ::1, or use --ws-auth capability-token")
    return auth


def serve(args: argparse.Namespace) -> int:
    from exec_server.server.allocator import tune_for_server

    tune_for_server()
    if args.listen in STDIO_LISTEN:
        from exec_server.server.stdio import serve_stdio

        return serve_stdio(config_from_options(args))
    try:
        auth = listen_options(args)
    except (ValueError, OSError) as exc:
        print("exec-server: %s" % exc, file=sys.stderr)
        return 2
    try:
        server = make_server(args.listen, config_from_options(args), auth)
    except OSError as exc:
        print("exec-server: cannot listen on %s: %s" % (args.listen, exc), file=sys.stderr)
        return 1

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, name="exec-server-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.write(server.url + "\n")
    sys.stdout.flush()
    server.serve_forever()
    return 0


class _RawTerminal:
    """Local terminal in raw mode for ``run --tty`` (restored on exit)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.saved = None

    def __enter__(self) -> "_RawTerminal":
        if os.isatty(self.fd):
            import termios
            import tty

            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def _forward_stdin(process) -> None:
    fd = sys.stdin.fileno()
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        try:
            process.write(data)
        except (RpcError, ExecServerDisconnected, OSError, TimeoutError):
            return


def run_command(args: argparse.Namespace) -> int:
    from exec_server.client.api import Client, ReconnectPolicy
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("exec-server run: no command given (exec-server run -- COMMAND ...)", file=sys.stderr)
        return 2
    env = _parse_env(args.env)
    if args.url and args.via:
        print("exec-server run: give --url or --via, not both", file=sys.stderr)
        return 2
    server = None
    url = args.url
    if url is None and args.via is None:
        # An in-process server starts in a few milliseconds; a stdio child
        # needs a new interpreter (~0.3 s here), so the embedded default is
        # the in-process WebSocket server (README.rst, "Run a command").
        server = make_server("ws://127.0.0.1:0", ServerConfig()).start()
        url = server.url
    try:
        if args.via is not None:
            client = Client.spawn(shlex.split(args.via), timeout=args.timeout, client_name="exec-server-run")
        else:
            deadline = ReconnectPolicy().deadline if args.reconnect_deadline is None else args.reconnect_deadline
            policy = ReconnectPolicy(deadline=deadline) if deadline > 0 else None
            client = Client.connect(url, timeout=args.timeout, client_name="exec-server-run", reconnect=policy,
                                    headers=_client_headers(args))
        with client:
            return _stream(client, argv, env, args)
    except ExecServerDisconnected as exc:
        print("exec-server run: %s" % exc, file=sys.stderr)
        return EXIT_DISCONNECTED
    except RpcError as exc:
        print("exec-server run: %s" % exc.message, file=sys.stderr)
        return EXIT_RUN_FAILED
    finally:
        if server is not None:
            server.shutdown()


def _stream(client: "Client", argv: List[str], env: dict, args: argparse.Namespace) -> int:
    from exec_server.client.process import ClosedEvent, ExitedEvent, OutputEvent
    forward = args.stdin or (args.tty and sys.stdin is not None and os.isatty(sys.stdin.fileno()))
    process = client.start(argv, cwd=args.cwd, env=env, inherit_env=not args.clean_env,
                           tty=args.tty, stdin=bool(forward))
    interrupts = []

    def on_interrupt(signum, frame):
        interrupts.append(signum)
        action = process.send_interrupt if len(interrupts) == 1 else process.terminate
        threading.Thread(target=_quietly, args=(action,), daemon=True).start()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    out = sys.stdout.buffer
    err = sys.stderr.buffer
    exit_code = None
    try:
        with _RawTerminal(sys.stdin.fileno()) if args.tty and forward else _NullContext():
            if forward:
                threading.Thread(target=_forward_stdin, args=(process,), daemon=True).start()
            for event in process:
                if isinstance(event, OutputEvent):
                    target = err if event.stream == "stderr" else out
                    target.write(event.data)
                    target.flush()
                elif isinstance(event, ExitedEvent):
                    exit_code = event.exit_code
                elif isinstance(event, ClosedEvent):
                    break
    except ExecServerDisconnected as exc:
        print("exec-server run: %s" % exc, file=sys.stderr)
        return EXIT_DISCONNECTED
    finally:
        signal.signal(signal.SIGINT, previous)
    if exit_code is None or exit_code < 0:
        return EXIT_DISCONNECTED
    return exit_code if exit_code < 256 else 255


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None


def _quietly(action) -> None:
    try:
        action()
    except Exception as exc:  # the process may be gone already
        log.debug("interrupt failed: %s", exc)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.otel:
        from exec_server.common.telemetry import configure_sdk

        try:
            configure_sdk()
        except RuntimeError as exc:
            print("exec-server: %s" % exc, file=sys.stderr)
            return 2
    if args.command == "run":
        return run_command(args)
    if args.command == "cp":
        return copy_files(args)
    if args.command == "service":
        from exec_server.cli.service import main as service_main

        extra = list(args.server_arguments)
        return service_main(args.action, extra[1:] if extra[:1] == ["--"] else extra)
    return serve(args)
