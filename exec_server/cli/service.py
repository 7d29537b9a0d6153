"""``exec-server service install|start|stop|remove``: manage the Windows service.

Needs the ``windows`` extra (pywin32).  ``install`` checks the server options
given after ``--`` (listen URL, auth, limits) and stores them with the service
as its custom option ``ServerArguments`` (a JSON list, in the service's
``Parameters`` registry key), so each start runs the server with them:

    exec-server service install -- --listen ws://0.0.0.0:8765 --ws-auth capability-token --ws-token-file C:\\token
    exec-server service start

The service starts automatically at boot; it runs
:class:`exec_server.cli.service_host.ExecServerService` in pywin32's
service host.  ``stop`` waits until the service reports stopped: the server
has then closed every WebSocket with 1001 and killed every process tree.
``remove`` stops a running service first.  On other platforms the command
says it is Windows-only and exits with status 2.
"""

import json
import sys
from typing import List

from exec_server.cli.statuses import EXIT_USAGE

SERVICE_NAME = "exec-server"
DISPLAY_NAME = "exec-server (JSON-RPC remote execution)"
DESCRIPTION = "Starts processes and serves files for exec-server clients over WebSocket."
#: The custom option (registry value) holding the server arguments as JSON.
OPTIONS_KEY = "ServerArguments"
#: Where pywin32's service host finds the service class.
SERVICE_CLASS = "exec_server.cli.service_host.ExecServerService"
#: How long ``stop`` and ``remove`` wait for the service to stop, seconds.
STOP_WAIT_SECONDS = 30
IS_WINDOWS = sys.platform.startswith("win")


def parse_server_arguments(server_arguments: List[str]):
    """Parse and check stored server options as the service does, without binding.

    Returns:
        ``(options, listen)``: the argparse namespace and the
        :class:`~exec_server.cli.options.ListenSettings` (auth check, TLS context).
    Raises:
        ValueError: an unknown or malformed option, a non-loopback listen
            address without auth, stdio (a service has no client on its stdin).
        OSError: the token file cannot be read.
    """
    import argparse

    from exec_server.cli.options import STDIO_LISTEN, listen_options, server_parser

    parser = server_parser()
    parser.exit_on_error = False  # Python 3.9+: malformed values raise ArgumentError
    try:
        options, unknown = parser.parse_known_args(server_arguments)
    except argparse.ArgumentError as exc:
        raise ValueError(str(exc)) from None
    if unknown:  # a subcommand such as ``run`` is not a server option either
        raise ValueError("not a server option: %s" % " ".join(unknown))
    if options.listen in STDIO_LISTEN:
        raise ValueError("a service cannot listen on stdio; give --listen ws://IP:PORT")
    return options, listen_options(options)


def main(action: str, server_arguments: List[str]) -> int:
    """Run a service action; returns the exit status (0, or 2 for a usage error)."""
    if not IS_WINDOWS:
        print("exec-server service is Windows-only (this is %s); run the server under your init system, "
              "e.g. a systemd unit running 'exec-server --listen ...'" % sys.platform, file=sys.stderr)
        return EXIT_USAGE
    try:
        import win32service
        import win32serviceutil
    except ImportError:
        print("exec-server service needs pywin32: pip install 'exec-server[windows]'", file=sys.stderr)
        return EXIT_USAGE
    if action != "install" and server_arguments:
        print("exec-server service %s takes no server options" % action, file=sys.stderr)
        return EXIT_USAGE
    if action == "install":
        try:
            parse_server_arguments(server_arguments)
        except (ValueError, OSError) as exc:
            print("exec-server service install: %s" % exc, file=sys.stderr)
            return EXIT_USAGE
        win32serviceutil.InstallService(SERVICE_CLASS, SERVICE_NAME, DISPLAY_NAME,
                                        startType=win32service.SERVICE_AUTO_START, description=DESCRIPTION)
        win32serviceutil.SetServiceCustomOption(SERVICE_NAME, OPTIONS_KEY, json.dumps(server_arguments))
        print("installed service %s; start it with: exec-server service start" % SERVICE_NAME)
    elif action == "start":
        win32serviceutil.StartService(SERVICE_NAME)
    elif action == "stop":
        _stop(win32service, win32serviceutil)
    elif action == "remove":
        if win32serviceutil.QueryServiceStatus(SERVICE_NAME)[1] != win32service.SERVICE_STOPPED:
            _stop(win32service, win32serviceutil)
        win32serviceutil.RemoveService(SERVICE_NAME)
    else:
        print("exec-server service: unknown action %r" % action, file=sys.stderr)
        return EXIT_USAGE
    return 0


def _stop(win32service, win32serviceutil) -> None:
    win32serviceutil.StopService(SERVICE_NAME)
    win32serviceutil.WaitForServiceStatus(SERVICE_NAME, win32service.SERVICE_STOPPED, STOP_WAIT_SECONDS)
