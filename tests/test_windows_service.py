"""The Windows service, run here against a fake pywin32.

The fake records what the service manager would be asked (install with the
class string and start type, the stored options, start, stop and wait,
remove) and plays the service host: it instantiates the service class, runs
``SvcDoRun`` on a thread and calls ``SvcStop`` as the SCM would.  The server
inside is real: a client connects to it on 127.0.0.1 and its processes must
be gone (psutil) once the service has stopped.
"""

import json
import logging
import sys
import threading
import types

import psutil
import pytest

from conftest import pid_alive, wait_until
from exec_server import Client, ExecServerDisconnected
from exec_server.cli import service as windows_service

SERVICE_STOPPED, SERVICE_STOP_PENDING, SERVICE_RUNNING = 1, 3, 4
SERVICE_AUTO_START = 2


class FakeServiceManager:
    """The state a real SCM and registry would hold, and every call made."""

    def __init__(self):
        self.calls = []
        self.options = {}
        self.state = SERVICE_STOPPED
        self.event_log = []

    def modules(self):
        manager = self
        win32service = types.ModuleType("win32service")
        win32service.SERVICE_AUTO_START = SERVICE_AUTO_START
        win32service.SERVICE_STOPPED = SERVICE_STOPPED
        win32service.SERVICE_STOP_PENDING = SERVICE_STOP_PENDING
        win32service.SERVICE_RUNNING = SERVICE_RUNNING

        util = types.ModuleType("win32serviceutil")

        class ServiceFramework:
            def __init__(self, args):
                self.args = args
                self.reported = []

            def ReportServiceStatus(self, status):
                self.reported.append(status)

        def record(name):
            def call(*args, **kwargs):
                manager.calls.append((name, args, kwargs))
            return call

        def set_option(service, option, value):
            manager.calls.append(("SetServiceCustomOption", (service, option, value), {}))
            manager.options[(service, option)] = value

        def stop(service):
            manager.calls.append(("StopService", (service,), {}))
            manager.state = SERVICE_STOPPED

        util.ServiceFramework = ServiceFramework
        util.InstallService = record("InstallService")
        util.StartService = record("StartService")
        util.RemoveService = record("RemoveService")
        util.WaitForServiceStatus = record("WaitForServiceStatus")
        util.StopService = stop
        util.SetServiceCustomOption = set_option
        util.GetServiceCustomOption = lambda service, option, default=None: manager.options.get(
            (service, option), default)
        util.QueryServiceStatus = lambda service: (16, manager.state, 0, 0, 0, 0, 0)

        servicemanager = types.ModuleType("servicemanager")
        servicemanager.LogInfoMsg = lambda text: manager.event_log.append(("info", text))
        servicemanager.LogErrorMsg = lambda text: manager.event_log.append(("error", text))

        evtlogutil = types.ModuleType("win32evtlogutil")
        evtlogutil.__file__ = "C:\\Python\\Lib\\site-packages\\win32\\lib\\win32evtlogutil.py"
        evtlogutil.AddSourceToRegistry = record("AddSourceToRegistry")
        evtlogutil.ReportEvent = lambda app, event_id, category, kind, strings: manager.event_log.append(
            ("record", strings[0]))
        evtlog = types.ModuleType("win32evtlog")
        for index, name in enumerate(("EVENTLOG_ERROR_TYPE", "EVENTLOG_WARNING_TYPE",
                                      "EVENTLOG_INFORMATION_TYPE")):
            setattr(evtlog, name, index + 1)
        return {"win32service": win32service, "win32serviceutil": util, "servicemanager": servicemanager,
                "win32evtlogutil": evtlogutil, "win32evtlog": evtlog}

    def called(self, name):
        return [(args, kwargs) for called, args, kwargs in self.calls if called == name]


@pytest.fixture
def scm(monkeypatch):
    manager = FakeServiceManager()
    for name, module in manager.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "exec_server.cli.service_host", raising=False)
    monkeypatch.setattr(windows_service, "IS_WINDOWS", True)
    monkeypatch.setattr(logging.root, "level", logging.root.level)  # the host sets the root level
    return manager


def test_install_registers_the_class_and_stores_the_options(scm, capsys):
    options = ["--listen", "ws://127.0.0.1:8765", "--max-sessions", "3"]
    assert windows_service.main("install", options) == 0
    assert scm.called("InstallService") == [(
        ("exec_server.cli.service_host.ExecServerService", "exec-server",
         "exec-server (JSON-RPC remote execution)"),
        {"startType": SERVICE_AUTO_START, "description": windows_service.DESCRIPTION})]
    assert json.loads(scm.options[("exec-server", "ServerArguments")]) == options
    assert "exec-server service start" in capsys.readouterr().out


@pytest.mark.parametrize("options, message", [
    (["--listen", "ws://0.0.0.0:8765"], "websocket auth is required for non-localhost listeners"),
    (["--listen", "stdio"], "a service cannot listen on stdio"),
    (["--listen", "http://127.0.0.1:1"], "listen URL must look like ws://"),
    (["--no-such-option"], "not a server option: --no-such-option"),
    (["--max-sessions", "many"], "invalid int value: 'many'"),
    (["--ws-auth", "capability-token", "--ws-token-file", "/nonexistent/token"], "No such file"),
])
def test_install_refuses_options_the_service_could_not_start_with(scm, capsys, options, message):
    assert windows_service.main("install", options) == 2
    assert message in capsys.readouterr().err
    assert scm.calls == []


def test_start_stop_remove(scm):
    assert windows_service.main("start", []) == 0
    assert scm.called("StartService") == [(("exec-server",), {})]
    scm.state = SERVICE_RUNNING
    assert windows_service.main("stop", []) == 0
    assert scm.called("StopService") == [(("exec-server",), {})]
    assert scm.called("WaitForServiceStatus") == [(("exec-server", SERVICE_STOPPED, 30), {})]
    scm.state = SERVICE_RUNNING
    assert windows_service.main("remove", []) == 0  # a running service is stopped first
    assert [name for name, _args, _kwargs in scm.calls][-3:] == ["StopService", "WaitForServiceStatus",
                                                                 "RemoveService"]
    assert windows_service.main("start", ["--listen", "ws://127.0.0.1:1"]) == 2  # options only at install


def test_service_serves_until_stopped_and_leaves_no_process(scm):
    assert windows_service.main("install", ["--listen", "ws://127.0.0.1:0", "--log-level", "INFO"]) == 0
    from exec_server.cli.service_host import ExecServerService

    service = ExecServerService(["exec-server"])
    host = threading.Thread(target=service.SvcDoRun, name="fake-service-host")
    host.start()
    try:
        wait_until(lambda: service.server is not None)
        client = Client.connect(service.server.url, timeout=5, reconnect=None)
        client.start(["sleep", "30"])
        sleeper = wait_until(lambda: [child for child in psutil.Process().children(recursive=True)
                                      if child.cmdline() == ["sleep", "30"]])[0]
    finally:
        service.SvcStop()
        host.join(5)
    assert not host.is_alive()
    assert service.reported == [SERVICE_STOP_PENDING]
    wait_until(lambda: not pid_alive(sleeper.pid))
    with pytest.raises(ExecServerDisconnected):
        client.call("environment/status", timeout=5)
    client.close()
    assert ("info", "exec-server listening on %s" % service.server.url) in scm.event_log
    # log records reach the event log through NTEventLogHandler
    assert any(kind == "record" and "process closed" in text for kind, text in scm.event_log)


def test_stop_before_the_server_binds_ends_the_service(scm):
    assert windows_service.main("install", ["--listen", "ws://127.0.0.1:0"]) == 0
    from exec_server.cli.service_host import ExecServerService

    service = ExecServerService(["exec-server"])
    service.SvcStop()
    host = threading.Thread(target=service.SvcDoRun)
    host.start()
    host.join(5)
    assert not host.is_alive()
    assert service.server is None


def test_a_failed_start_is_logged_and_reported(scm):
    from exec_server.cli.service_host import ExecServerService

    scm.options[("exec-server", "ServerArguments")] = json.dumps(["--listen", "ws://0.0.0.0:1"])
    service = ExecServerService(["exec-server"])
    with pytest.raises(ValueError):
        service.SvcDoRun()
    assert any(kind == "error" and "websocket auth is required" in text for kind, text in scm.event_log)
