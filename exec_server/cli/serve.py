"""``exec-server [--listen URL]``: serve until SIGTERM, SIGINT or SIGHUP (unless ignored: ``nohup``).

Prints the bound URL on stdout once ready (``--listen ws://127.0.0.1:0``
picks a free port); ``--listen stdio`` serves one client on stdin/stdout.
"""

import argparse
import errno
import logging
import os
import sys
import threading
import time

from exec_server.cli.options import STDIO_LISTEN, config_from_options, listen_options
from exec_server.server.signals import handle_stop_signals


def _error(text: str) -> None:
    """One line on stderr; nothing when stderr was closed at start (``print`` would write it to stdout: the
    protocol's channel under ``--listen stdio``)."""
    from exec_server.cli.output import say  # an error path: not imported at every start

    say(text)


def serve(args: argparse.Namespace) -> int:
    from exec_server.server.allocator import tune_for_server_later

    tune_for_server_later()
    try:
        config = config_from_options(args)
    except ValueError as exc:
        _error("exec-server: %s" % exc)
        return 2
    if args.listen in STDIO_LISTEN:
        from exec_server.server.stdio import closed_channels, serve_stdio

        closed = closed_channels()
        if closed:  # the protocol's channels: nothing to serve on
            _error("exec-server: cannot listen: %s closed (--listen stdio)" % " and ".join(closed))
            return 1
        status = serve_stdio(config)
        _exit_if_stuck(EXIT_THREAD_WAIT)
        return status
    try:
        listen = listen_options(args)
    except (ValueError, OSError) as exc:
        _error("exec-server: %s" % exc)
        return 2
    from exec_server.server.app import make_server  # not needed by --listen stdio

    # a long-lived server: one guardian, its start and exit off the paths users wait on
    config = config._replace(guard_isolated_starts=True)
    try:
        server = make_server(args.listen, config, listen.auth, listen.ssl_context)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        _error("exec-server: cannot listen: %s (%s)" % (reason, args.listen))
        return 1

    from exec_server.server.process import contain, marked

    reaper = marked.Reaper() if sys.platform.startswith("linux") else None

    def arm_reaper() -> None:
        # After the containment probe, which runs beside the accept loop so that it
        # does not delay readiness (the first spawn waits for it).
        if reaper is not None and not contain.decide(server.config.pid_namespace).isolated:
            reaper.start()

    threading.Thread(target=arm_reaper, name="exec-server-probe", daemon=True).start()

    stopping = []

    def stop(signum, frame):
        if stopping:  # a shutdown is under way
            return
        stopping.append(signum)
        try:
            threading.Thread(target=server.shutdown, name="exec-server-stop", daemon=True).start()
        except RuntimeError:  # no thread can start (a task limit): the accept loop ends here, and
            raise _StopServing() from None  # serve_forever's cleanup runs on this thread

    handle_stop_signals(stop)
    _announce(server.url)
    try:
        server.serve_forever()
    except _StopServing:
        logging.getLogger(__name__).warning("no thread could be started for the shutdown: stopped on the main one")
    finally:
        if reaper is not None:
            reaper.stop()
    _exit_if_stuck(EXIT_THREAD_WAIT)
    return 0


def _announce(url: str) -> None:
    """The bound URL and a newline on stdout, the line a launcher waits for.

    A stdout closed at start (``>&-``), full or whose reader left is told on
    stderr (a warning), and the server serves on: its clients do not need
    the line, as a daemon's do not need its launcher.
    """
    out = sys.stdout
    try:
        if out is None:
            raise OSError(errno.EBADF, "closed")
        out.write(url + "\n")
        out.flush()
    except (OSError, ValueError) as exc:
        from exec_server.cli.output import binary, discard

        discard(binary(out))  # what is left in its buffer goes nowhere at exit, without an error
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        logging.getLogger(__name__).warning("cannot write the URL to stdout (%s): serving on %s", reason, url)


class _StopServing(BaseException):
    """Raised by the signal handler to end ``serve_forever`` where no thread could run the shutdown.

    A BaseException: socketserver catches an Exception raised while it
    handles a connection, logs it and serves on (the signal would be lost).
    """


#: After shutdown, how long to wait for request threads still running, seconds.
EXIT_THREAD_WAIT = 1.0


def _exit_if_stuck(wait: float) -> None:
    """End the process now if a request thread is still running after ``wait`` seconds, removing the
    temporary files of the writes (fs/copy, fs/writeFile) such threads still run.

    Every process tree and fs helper is already killed by then; a request
    thread blocked in a call that cannot be interrupted would otherwise hold
    interpreter exit forever (``concurrent.futures`` joins its workers at
    exit), and the service manager would SIGKILL the server.
    """
    from exec_server.server.connection import REQUEST_THREAD_PREFIX

    current = threading.current_thread()

    def holding_exit():
        return [t for t in threading.enumerate() if t is not current and t.is_alive()
                and (not t.daemon or t.name.startswith(REQUEST_THREAD_PREFIX))]

    deadline = time.monotonic() + wait
    for thread in holding_exit():
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = holding_exit()
    if stuck:
        logging.getLogger(__name__).warning("exiting with %d request thread(s) still blocked: %s",
                                            len(stuck), ", ".join(sorted(t.name for t in stuck)))
        replacing = sys.modules.get("fs_helper.replacing")  # loaded by a write: its temporary files go
        if replacing is not None and replacing.discard_unfinished():
            logging.getLogger(__name__).warning("removed the temporary files of writes still running")
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)
