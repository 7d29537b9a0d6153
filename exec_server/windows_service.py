"""``exec-server service install|start|stop|remove``: run the server as a Windows service.

Needs the ``windows`` extra (pywin32).  ``install`` stores the server options
given after ``--`` with the service (as the service's custom option
``ServerArguments``, JSON), so ``start`` runs ``exec-server`` with them:

    exec-server service install -- --listen ws://0.0.0.0:8765 --ws-auth capability-token --ws-token-file C:\\token
    exec-server service start

Stopping the service shuts the server down in order (every WebSocket closed
with 1001, every process tree killed).  On other platforms the command says
it is Windows-only.
"""

import json
import sys
from typing import List

SERVICE_NAME = "exec-server"
DISPLAY_NAME = "exec-server (JSON-RPC remote execution)"
OPTIONS_KEY = "ServerArguments"


def _service_class():
    import servicemanager
    import win32event
    import win32service
    import win32serviceutil

    class ExecServerService(win32serviceutil.ServiceFramework):
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME

        def __init__(self, args):
            super().__init__(args)
            self._stopped = win32event.CreateEvent(None, 0, 0, None)
            self._server = None

        def SvcStop(self):
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
            if self._server is not None:
                self._server.shutdown()
            win32event.SetEvent(self._stopped)

        def SvcDoRun(self):
            from .cli import build_parser, _auth_from, _config_from
            from .server import make_server

            arguments = json.loads(win32serviceutil.GetServiceCustomOption(SERVICE_NAME, OPTIONS_KEY) or "[]")
            options = build_parser().parse_args(arguments)
            self._server = make_server(options.listen, _config_from(options), _auth_from(options))
            servicemanager.LogInfoMsg("exec-server listening on %s" % self._server.url)
            self._server.serve_forever()

    return ExecServerService


def main(action: str, server_arguments: List[str]) -> int:
    """Run a service action; returns the exit status."""
    if not sys.platform.startswith("win"):
        print("exec-server service is Windows-only (this is %s); run the server under your init system, "
              "e.g. a systemd unit running 'exec-server --listen ...'" % sys.platform, file=sys.stderr)
        return 2
    try:
        import win32serviceutil
    except ImportError:
        print("exec-server service needs pywin32: pip install 'exec-server[windows]'", file=sys.stderr)
        return 2
    service = _service_class()
    if action == "install":
        win32serviceutil.InstallService(
            win32serviceutil.GetServiceClassString(service), SERVICE_NAME, DISPLAY_NAME,
            startType=None)
        win32serviceutil.SetServiceCustomOption(SERVICE_NAME, OPTIONS_KEY, json.dumps(server_arguments))
    elif action == "start":
        win32serviceutil.StartService(SERVICE_NAME)
    elif action == "stop":
        win32serviceutil.StopService(SERVICE_NAME)
    elif action == "remove":
        win32serviceutil.RemoveService(SERVICE_NAME)
    else:
        print("exec-server service: unknown action %r" % action, file=sys.stderr)
        return 2
    return 0
