"""``exec-server [--listen URL]``: serve until SIGTERM or SIGINT.

Prints the bound URL on stdout once ready (``--listen ws://127.0.0.1:0``
picks a free port); ``--listen stdio`` serves one client on stdin/stdout.
"""

import argparse
import os
import signal
import sys
import threading

from exec_server.cli.options import STDIO_LISTEN, config_from_options, listen_options


def serve(args: argparse.Namespace) -> int:
    from exec_server.server.allocator import tune_for_server

    tune_for_server()
    if args.listen in STDIO_LISTEN:
        from exec_server.server.stdio import serve_stdio

        return serve_stdio(config_from_options(args))
    try:
        listen = listen_options(args)
    except (ValueError, OSError) as exc:
        print("exec-server: %s" % exc, file=sys.stderr)
        return 2
    from exec_server.server.app import make_server  # not needed by --listen stdio

    try:
        server = make_server(args.listen, config_from_options(args), listen.auth, listen.ssl_context)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print("exec-server: cannot listen: %s (%s)" % (reason, args.listen), file=sys.stderr)
        return 1

    from exec_server.server.process import contain

    reaper = None
    if sys.platform.startswith("linux") and not contain.decide(server.config.pid_namespace).isolated:
        reaper = contain.Reaper()
        if not reaper.start():
            reaper = None

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, name="exec-server-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.write(server.url + "\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        if reaper is not None:
            reaper.stop()
    return 0
