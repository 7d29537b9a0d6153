"""PTY processes (``tty: true``) as the reference runs them: environment, terminal and end of file."""

import base64
import os
import pwd

import pytest

from conftest import start_params


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
