"""PTY processes (``tty: true``) as the reference runs them: environment, terminal and end of file."""

import base64
import os
import pwd

import pytest

from conftest import sandbox_writing, start_params
from test_sandbox import needs_bwrap


def pty_output(peer, process_id):
    events = sorted(peer.wait_closed(process_id), key=lambda m: m["params"]["seq"])
    return b"".join(base64.b64decode(m["params"]["chunk"]) for m in events if m["method"] == "process/output")


def login_shell() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        return "/bin/sh"


@pytest.mark.parametrize("env,expected", [({}, None), ({"SHELL": "/no/such/shell"}, "/no/such/shell")])
def test_a_pty_child_without_shell_gets_the_login_shell(connect, any_server, env, expected):
    """portable-pty (the reference's PTY) sets SHELL, when the request's env has none, to the user's login
    shell (the password database's, not the server's $SHELL); one in the env is kept as given; a pipe child
    gets no SHELL."""
    peer = connect(any_server.url)
    peer.initialize()
    env = dict(env, PATH="/usr/bin:/bin")
    peer.call("process/start", start_params("t", ["/usr/bin/env"], tty=True, env=env))
    lines = pty_output(peer, "t").decode().split("\r\n")
    assert "SHELL=%s" % (expected or login_shell()) in lines, lines
    peer.call("process/start", start_params("p", ["/usr/bin/env"], env=env))
    lines = pty_output(peer, "p").decode().split("\n")
    assert [line for line in lines if line.startswith("SHELL=")] == (["SHELL=" + expected] if expected else [])


HANDLES_SIGINT = ("import time\ntry:\n    print('ready', flush=True)\n    time.sleep(20)\nexcept KeyboardInterrupt:\n"
                  "    print('caught', flush=True)\ntime.sleep(0.3)\nprint('done', flush=True)")


@needs_bwrap
@pytest.mark.parametrize("tty", [True, False])
def test_an_interrupt_reaches_a_sandboxed_program_and_spares_bubblewrap(connect, server, tmp_path, tty):
    """process/signal interrupt went to bubblewrap's process group: bubblewrap, without a SIGINT handler,
    died of it and --die-with-parent took the sandbox, so a program that handles SIGINT (a REPL, a shell)
    was killed (a PTY: exit 1 after "caught"; pipes: 130, and the program, a session leader there, never
    even got the signal)."""
    peer = connect(server.url)
    peer.initialize()
    peer.call("process/start", start_params("s", ["python3", "-c", HANDLES_SIGINT], tty=tty,
                                            sandbox=sandbox_writing(tmp_path)))
    peer.wait_for(lambda m: m.get("method") == "process/output" and b"ready" in base64.b64decode(m["params"]["chunk"]))
    peer.call("process/signal", {"processId": "s", "signal": "interrupt"})
    events = sorted(peer.wait_closed("s"), key=lambda m: m["params"]["seq"])
    output = b"".join(base64.b64decode(m["params"]["chunk"]) for m in events if m["method"] == "process/output")
    assert output.replace(b"\r\n", b"\n") == b"ready\ncaught\ndone\n"
    assert [m["params"]["exitCode"] for m in events if m["method"] == "process/exited"] == [0]
