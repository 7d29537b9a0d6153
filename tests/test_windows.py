"""Windows code paths, run here with the operating system layer patched.

The process-tree kill, the interrupt, the spawn flags and the PTY refusal are
asserted exactly against a fake ``subprocess``/``os`` layer.
"""

import contextlib
import signal
import subprocess
import sys

import psutil
import pytest

from conftest import pid_alive, wait_until
from exec_server.common import tree as process_tree
from exec_server.server.process import guardian, managed, spawn as processes
from exec_server.server.config import ServerConfig


class Recorder:
    def __init__(self, returncode=0, exc=None):
        self.calls = []
        self.returncode = returncode
        self.exc = exc

    def __call__(self, args, **kwargs):
        self.calls.append((args, kwargs))
        if self.exc is not None:
            raise self.exc
        return subprocess.CompletedProcess(args, self.returncode)


def test_taskkill_command_line_and_streams(monkeypatch):
    recorder = Recorder(returncode=0)
    monkeypatch.setattr(process_tree.subprocess, "run", recorder)
    process_tree.kill_tree_windows(4242)
    args, kwargs = recorder.calls[0]
    assert args == ["taskkill", "/PID", "4242", "/T", "/F"]
    assert kwargs["stdin"] is subprocess.DEVNULL
    assert kwargs["stdout"] is subprocess.DEVNULL
    assert kwargs["stderr"] is subprocess.DEVNULL
    assert kwargs["creationflags"] == process_tree.CREATE_NO_WINDOW == 0x08000000
    assert kwargs["check"] is False and kwargs["timeout"] == process_tree.TASKKILL_TIMEOUT


@pytest.mark.parametrize("recorder", [Recorder(returncode=128), Recorder(exc=FileNotFoundError("taskkill"))])
def test_taskkill_failure_falls_back_to_psutil(monkeypatch, recorder):
    monkeypatch.setattr(process_tree.subprocess, "run", recorder)
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen("
                              "[sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"])
    try:
        wait_until(lambda: psutil.Process(child.pid).children())
        grandchild = psutil.Process(child.pid).children()[0].pid
        process_tree.kill_tree_windows(child.pid)
        assert recorder.calls  # taskkill was tried first
        assert child.wait(10) != 0
        wait_until(lambda: not pid_alive(grandchild))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)


def test_interrupt_sends_ctrl_break_to_the_group(monkeypatch):
    sent = []
    monkeypatch.setattr(process_tree, "IS_WINDOWS", True)
    monkeypatch.setattr(signal, "CTRL_BREAK_EVENT", 1, raising=False)
    monkeypatch.setattr(process_tree.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    process_tree.interrupt_group(777)
    assert sent == [(777, 1)]


def spawn_as_on_windows(monkeypatch, argv, env):
    """``ManagedProcess.spawn`` with the Windows paths taken and ``Popen`` faked; returns (process, seen):
    ``seen`` holds the ``args`` and ``kwargs`` the fake was given."""
    seen = {}

    class FakePopen:
        pid = 31337
        stdout = stderr = stdin = None
        returncode = None

        def __init__(self, args, **kwargs):
            seen["args"], seen["kwargs"] = args, kwargs

    guardian.marker_prefix()  # the real guardian starts before Popen is faked
    monkeypatch.setattr(processes, "IS_WINDOWS", True)
    monkeypatch.setattr(processes.subprocess, "Popen", FakePopen)
    process = managed.ManagedProcess.spawn("w", argv, "/", env, False, False, None,
                                           ServerConfig(pid_namespace="inherit"), lambda *texts: None, lambda p: None)
    return process, seen


def test_spawn_uses_a_new_process_group(monkeypatch):
    process, seen = spawn_as_on_windows(monkeypatch, [sys.executable, "-c", "pass"], {})
    assert process.pid == 31337
    assert seen["kwargs"]["creationflags"] == process_tree.CREATE_NEW_PROCESS_GROUP == 0x00000200
    assert "start_new_session" not in seen["kwargs"]


def test_tty_without_windows_pty_backend_names_the_extra(server, monkeypatch):
    from exec_server import Client
    from exec_server.protocol.errors import InvalidParams

    monkeypatch.setattr(processes, "IS_WINDOWS", True)
    with Client.connect(server.url, timeout=5) as client:
        with pytest.raises(InvalidParams) as caught:
            client.start(["cmd"], tty=True)
    assert "pywinpty" in caught.value.message


def test_service_command_is_windows_only():
    done = subprocess.run([sys.executable, "-m", "exec_server", "service", "install"], capture_output=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert b"Windows-only" in done.stderr


def test_service_command_without_an_action_asks_for_one():
    """argparse named the options after -- as required too: they are optional, the action is not."""
    done = subprocess.run([sys.executable, "-m", "exec_server", "service"], capture_output=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert b"choose an action: install, start, stop or remove" in done.stderr
    assert b"required" not in done.stderr


def test_spawn_gives_windows_the_program_found_in_the_child_path(monkeypatch, tmp_path):
    """CreateProcess looks an application name up in the current folder alone: `cmd` was os error 2."""
    tool = tmp_path / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_bytes(b"#!/bin/sh\n")
    tool.chmod(0o755)
    _process, seen = spawn_as_on_windows(monkeypatch, ["tool", "/c", "ver"], {"PATH": str(tool.parent)})
    assert seen["kwargs"]["executable"] == str(tool)
    assert seen["args"] == ["tool", "/c", "ver"]


def test_marked_process_is_killed_without_process_groups(monkeypatch):
    """Windows has no getpgid/killpg: the guardian's sweep raised AttributeError and left the process."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for name in ("getpgid", "getpgrp", "getsid", "killpg"):
            monkeypatch.delattr(guardian.os, name, raising=False)
        guardian.kill_with_group(psutil.Process(child.pid))
        assert child.wait(10) != 0
    finally:
        monkeypatch.undo()
        if child.poll() is None:
            child.kill()
            child.wait(5)


@contextlib.contextmanager
def sleeping_parent():
    """A child sleeping 60 s to stand for a stdio server's parent; killed by PID at the end if still alive."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield parent
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)


def test_stdio_server_sees_its_parent_die_without_reparenting(monkeypatch):
    """Windows never gives an orphan another parent: comparing os.getppid() could not see the parent go."""
    from exec_server.server import stdio

    with sleeping_parent() as parent:
        monkeypatch.setattr(sys, "platform", "win32")
        alive = stdio._parent_check(parent.pid)
        monkeypatch.undo()
        assert alive()
        parent.kill()
        parent.wait(10)
        assert not alive()
    monkeypatch.setattr(sys, "platform", "win32")
    gone = stdio._parent_check(parent.pid)  # already gone at start
    monkeypatch.undo()
    assert not gone()


def test_stdio_server_whose_parent_cannot_be_read_goes_on_while_its_pid_lives(monkeypatch):
    """A parent whose creation time could not be read (access denied) counted as gone: the server exited."""
    import psutil as real_psutil

    from exec_server.server import stdio

    def denied(pid):
        raise real_psutil.AccessDenied(pid)

    with sleeping_parent() as parent:
        monkeypatch.setattr(real_psutil, "Process", denied)
        monkeypatch.setattr(sys, "platform", "win32")
        alive = stdio._parent_check(parent.pid)
        monkeypatch.setattr(sys, "platform", "linux")
        assert alive()
        parent.kill()
        parent.wait(10)
        assert not alive()
        monkeypatch.undo()
