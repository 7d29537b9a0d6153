"""The ``exec-server`` command: serve (the default), ``run``, ``cp`` and ``service``.

    exec-server --listen ws://127.0.0.1:8765     # prints the bound URL once ready
    exec-server run -- python -c "print('hi')"   # embedded server, real WebSocket
    exec-server run --url ws://127.0.0.1:8765 --env A=1 --cwd /tmp -- sh -c 'echo $A'
    exec-server cp ./local.txt :/srv/remote.txt --url ws://127.0.0.1:8765

One module per subcommand (``serve``, ``run``, ``cp``, ``service``) and
every option in ``options``.  A subcommand's module is imported only when it
runs, so serving never loads the client side and ``run`` loads no more of
the server than its embedded server needs.
"""

import argparse
import gc
import os
import sys
from typing import Optional, Sequence

from exec_server import __version__
from exec_server.cli import logs
from exec_server.cli.options import STDIO_LISTEN, add_cp_parser, add_run_parser, add_server_options, help_formatter


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: server options, then the subcommands."""
    parser = argparse.ArgumentParser(prog="exec-server", description="JSON-RPC remote-execution server",
                                     formatter_class=help_formatter())
    parser.add_argument("--version", action="version", version="exec-server " + __version__)
    add_server_options(parser)
    commands = parser.add_subparsers(dest="command")
    add_run_parser(commands)
    add_cp_parser(commands)
    service = commands.add_parser("service", help="run the server as a Windows service (Windows-only)",
                                  description="Install, start, stop or remove the Windows service; server "
                                              "options for install go after --.",
                                  usage="exec-server service [-h] {install,start,stop,remove} "
                                        "[-- SERVER_OPTION ...]",
                                  formatter_class=help_formatter())
    # argparse counts a REMAINDER positional as required and would name it when the action is missing:
    # the action is optional to argparse and its absence is told by main.
    service.add_argument("action", nargs="?", choices=["install", "start", "stop", "remove"])
    service.add_argument("server_arguments", nargs=argparse.REMAINDER, metavar="-- SERVER_OPTION",
                         help="server options for install (the service runs 'exec-server' with them)")
    parser.subcommands = commands.choices  # name -> its parser, for main's errors
    return parser


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """``argv`` (None: ``sys.argv[1:]``) parsed by ``parser`` (:func:`build_parser`'s); a mistake exits 2
    with the usage and one line on stderr, the subcommand's own for its options and for server options it
    would ignore (:func:`~exec_server.cli.embedded.misplaced_server_options`).  With stderr closed at start
    they go to the null device: argparse would print the usage to stdout, which ``--listen stdio``'s
    client reads as the protocol."""
    closed = sys.stderr is None
    if closed:
        sys.stderr = open(os.devnull, "w")
    try:
        args, extra = parser.parse_known_args(argv)
        subcommands = getattr(parser, "subcommands", {})
        if extra:  # told with the subcommand's own usage (argparse's top level would print the server's)
            subcommands.get(args.command, parser).error("unrecognized arguments: %s" % " ".join(extra))
        if args.command in ("run", "cp") or (args.command is None and args.listen in STDIO_LISTEN):
            from exec_server.cli.embedded import misplaced_server_options  # options they would ignore

            misplaced = misplaced_server_options(args, parser, argv)
            if misplaced is not None:
                subcommands.get(args.command, parser).error(misplaced)
        return args
    finally:
        if closed:
            sys.stderr.close()
            sys.stderr = None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    # a bad EXEC_SERVER_LOG is one line: the usage would tell of options that were all right
    logs.configure(args.log_level, lambda message: parser.exit(2, "exec-server: error: %s\n" % message))
    if args.otel:
        from exec_server.common.telemetry import configure_sdk

        try:
            configure_sdk()
        except RuntimeError as exc:
            from exec_server.cli.output import say

            say("exec-server: %s" % exc)  # not print: with stderr closed at start it writes to stdout
            return 2
    if args.command == "run":
        from exec_server.cli.run import run_command

        return run_command(args)
    if args.command == "cp":
        from exec_server.cli.group_cp import copy_command  # one host: cp.copy_files

        return copy_command(args)
    if args.command == "service":
        from exec_server.cli.service import main as service_main

        if args.action is None:
            parser.subcommands["service"].error("choose an action: install, start, stop or remove")
        extra = list(args.server_arguments)
        return service_main(args.action, extra[1:] if extra[:1] == ["--"] else extra)
    from exec_server.cli.serve import serve

    return serve(args)


def console_main() -> None:
    """The ``exec-server`` console script and ``python -m exec_server``: :func:`main`, then exit with its status.

    Before the interpreter exits, the objects still alive are frozen
    (``gc.freeze``): its last garbage collection then skips them, which took
    ~10 ms of a one-shot ``exec-server run -- true`` (#17).  Nothing of ours
    waits for that collection: by the time :func:`main` returns, the command
    has closed its connections, files and process trees.  A caller of
    :func:`main` in its own process is not affected.  A Ctrl-C that no
    command handles itself ends it with one line, no traceback; one that ended
    a command with status 130 ends the process by SIGINT once the command has
    cleaned up (a shell reports 130, and stops the script or loop that ran it:
    :func:`~exec_server.cli.output.end_by_sigint`).
    First, descriptors 0, 1 and 2 closed at start get the null device
    (:func:`_fill_closed_std_fds`).
    """
    _fill_closed_std_fds()
    try:
        status = main()
    except KeyboardInterrupt:  # Ctrl-C where no command handles it (while parsing, or serving): as a shell tool
        from exec_server.cli.output import note_interrupt, say

        note_interrupt()
        say("exec-server: interrupted")
        status = 130
    gc.freeze()
    if status == 130 and os.name == "posix" and "exec_server.cli.output" in sys.modules:
        from exec_server.cli import output

        if output.interrupted():  # a Ctrl-C ends it by SIGINT, after the exit handlers: a shell's loop stops too
            output.end_by_sigint()
    sys.exit(status)


def _fill_closed_std_fds() -> None:
    """Open the null device on each of descriptors 0, 1 and 2 that is closed (as OpenSSH's ``sanitise_stdfd``).

    Else the next socket or file opened takes that number, and what writes to
    it as stdout or stderr (a child that inherits it, a C library's message,
    the interpreter's fatal error) reaches a client's connection or a file.
    ``sys.stdin``, ``sys.stdout`` and ``sys.stderr`` stay None: the commands
    still see those streams as closed at start (``run >&-``: status 1).
    """
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDWR)
            if fd > 2:
                os.close(fd)
                return
    except OSError:  # no descriptor left: nothing can take those numbers either
        return
