"""The Windows service class that pywin32's service host runs.

``exec-server service install`` registers :class:`ExecServerService` (by the
dotted name in :data:`exec_server.cli.service.SERVICE_CLASS`); the
service host imports this module, so it imports pywin32 at the top and
defines the class at module level.  Importing it elsewhere needs pywin32.

Start: the server options stored at install are parsed again, the server
binds and serves until the service is stopped.  Stop: the server shuts down
in order (every WebSocket closed with 1001, every process tree killed, fs
helpers stopped).  Log records go to the Windows event log (source
``exec-server``) through the standard library's ``NTEventLogHandler``.
"""

import json
import logging
import logging.handlers
import threading

import servicemanager
import win32service
import win32serviceutil

from exec_server.server.allocator import tune_for_server
from exec_server.cli.logs import log_level
from exec_server.cli.options import config_from_options
from exec_server.server.app import make_server
from exec_server.cli.service import (DESCRIPTION, DISPLAY_NAME, OPTIONS_KEY, SERVICE_NAME,
                                     parse_server_arguments)

log = logging.getLogger("exec_server.service")


class ExecServerService(win32serviceutil.ServiceFramework):
    """One exec-server, started and stopped by the Service Control Manager."""

    _svc_name_ = SERVICE_NAME
    _svc_display_name_ = DISPLAY_NAME
    _svc_description_ = DESCRIPTION

    def __init__(self, args):
        super().__init__(args)
        self._lock = threading.Lock()
        self._stop_requested = False
        self.server = None

    def SvcStop(self) -> None:
        """The SCM asked us to stop: shut the server down (from the SCM's thread)."""
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
        with self._lock:
            self._stop_requested = True
            server = self.server
        if server is not None:
            server.shutdown()

    def SvcDoRun(self) -> None:
        """Serve until :meth:`SvcStop`; returning reports the service stopped."""
        handler = logging.handlers.NTEventLogHandler(SERVICE_NAME)
        logging.getLogger().addHandler(handler)
        try:
            self._serve()
        except Exception as exc:
            # to the event log; re-raised so the SCM records the service as failed
            log.exception("exec-server service failed: %s", exc)
            servicemanager.LogErrorMsg("exec-server service failed: %s" % exc)
            raise
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()

    def _serve(self) -> None:
        stored = win32serviceutil.GetServiceCustomOption(SERVICE_NAME, OPTIONS_KEY) or "[]"
        options, listen = parse_server_arguments(json.loads(stored))
        tune_for_server()
        try:
            level = log_level(options.log_level)
        except ValueError as exc:  # a bad EXEC_SERVER_LOG of the service's environment: said, not fatal
            level = "WARNING"
            log.warning("%s; logging at WARNING", exc)
        logging.getLogger().setLevel(getattr(logging, level))
        with self._lock:
            if self._stop_requested:
                return
            self.server = make_server(options.listen, config_from_options(options), listen.auth,
                                      listen.ssl_context)
        servicemanager.LogInfoMsg("exec-server listening on %s" % self.server.url)
        self.server.serve_forever()
