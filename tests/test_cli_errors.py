"""Every user mistake of the command line ends in one line and a documented exit status, never a traceback."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import psutil

from conftest import all_gone, start_ours, start_params, wait_until

pytestmark = pytest.mark.posix

CLI = [sys.executable, "-m", "exec_server"]


def run_cli(*args, timeout=60):
    return subprocess.run(CLI + list(args), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_line(done) -> str:
    text = done.stderr.decode()
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def token_server(tmp_path):
    from exec_server.server.auth import CapabilityToken

    (tmp_path / "token").write_text("right-token\n")
    (tmp_path / "wrong").write_text("wrong-token\n")
    running = start_ours(auth=CapabilityToken.from_file(str(tmp_path / "token")))
    yield running, tmp_path
    running.stop()


def test_malformed_url():
    done = run_cli("run", "--url", "foo", "--", "true")
    assert done.returncode == 2
    assert one_line(done) == "exec-server run: not a server URL, want ws://HOST:PORT or wss://HOST:PORT (foo)"


@pytest.mark.parametrize("words, line", [
    (["--url", "ws://127.0.0.1:1", "--cafile", "/etc/hostname"], "--cafile needs a wss:// server URL"),
    (["--url", "ws://127.0.0.1:1", "--url", "ws://127.0.0.1:2", "--cafile", "c", "--certfile", "x"],
     "--cafile, --certfile need a wss:// server URL"),
    (["--via", "exec-server --listen stdio", "--token-file", "t", "--cafile", "c"],
     "--token-file, --cafile: for a server URL; --via's server is reached through its command"),
    (["--cafile", "/etc/hostname", "--reconnect-deadline", "3"],
     "--cafile, --reconnect-deadline: for a server --url or --via names; without them run embeds its server"),
])
def test_client_options_that_cannot_apply_are_usage_mistakes(words, line):
    """TLS files with ws:// URLs only, or a token or TLS file with --via, were loaded (or not) and ignored."""
    done = run_cli("run", *words, "--", "true")
    assert (done.returncode, one_line(done)) == (2, "exec-server run: " + line)


def test_a_malformed_line_of_a_hosts_file_is_named_with_its_file_and_number(tmp_path):
    """It was told as "(not a url)": which file, which line?"""
    hosts = tmp_path / "fleet.txt"
    hosts.write_text("ws://127.0.0.1:1\n# a comment\n\nnot a url  # this one\n")
    done = run_cli("run", "--hosts", str(hosts), "--", "true")
    assert done.returncode == 2
    assert one_line(done) == ("exec-server run: not a server URL, want ws://HOST:PORT or wss://HOST:PORT "
                              "(%s line 4: not a url)" % hosts)
    hosts.write_text("ws://user:secret@127.0.0.1:99999\n")  # a port out of range; its password never shown
    done = run_cli("run", "--hosts", str(hosts), "--", "true")
    assert (done.returncode, one_line(done)) == (2, "exec-server run: not a server URL, want ws://HOST:PORT or "
                                                    "wss://HOST:PORT (%s line 1: ws://***@127.0.0.1:99999)" % hosts)


@pytest.mark.parametrize("url, shown", [
    ("ws://u:pw@[::1", "ws://***@[::1"), ("ws://[::1:8765", "ws://[::1:8765"),
    ("ws://u:pw@[::1]:8765/a@b?q=c@d#e", "ws://***@[::1]:8765/a@b?q=c@d#e"), ("ws://host/a@b?", "ws://host/a@b?"),
    ("wss://T0KEN@host:1", "wss://***@host:1"), ("ws://u:p@ss@host", "ws://***@host")])
def test_a_url_is_shown_without_its_user_information_and_as_written(url, shown):
    """shown_url parsed the URL: a malformed one ('ws://u:pw@[::1') raised in the error line that names it
    (a traceback instead of 'not a server URL'), and one it could parse was rewritten ('?' dropped)."""
    from exec_server.common.bearer import shown_url

    assert shown_url(url) == shown
    if url == "ws://u:pw@[::1":
        for hosts in ([url], [url, "ws://127.0.0.1:9"]):  # one host, and several (a traceback there)
            done = run_cli("run", *[word for host in hosts for word in ("--url", host)], "--", "true")
            assert done.returncode == 2 and one_line(done) == (
                "exec-server run: not a server URL, want ws://HOST:PORT or wss://HOST:PORT (%s)" % shown)


def test_unreadable_token_file():
    done = run_cli("run", "--url", "ws://127.0.0.1:9", "--token-file", "/no/such/token", "--", "true")
    assert done.returncode == 2
    assert one_line(done) == "exec-server run: cannot read the token file: No such file or directory (/no/such/token)"


def test_via_a_child_that_never_answers():
    done = run_cli("run", "--via", "cat", "--timeout", "1", "--", "true")
    assert done.returncode == 255
    assert one_line(done) == "exec-server run: the server did not answer initialize within 1 s (cat)"


def test_via_a_child_that_prints_no_protocol_is_one_line():
    """Its first line (a ws:// URL) is no JSON: the error was printed twice, as a logging WARNING first."""
    via = "%s -c \"print('ws://127.0.0.1:1', flush=True); import time; time.sleep(30)\"" % sys.executable
    done = run_cli("run", "--via", via, "--", "true")
    assert done.returncode == 255
    assert one_line(done) == ("exec-server run: exec-server sent a malformed message: Expecting value: line 1 "
                              "column 1 (char 0) (%s)" % via)


def test_via_a_missing_program():
    done = run_cli("run", "--via", "/no/such/exec-server", "--", "true")
    assert done.returncode == 255
    assert one_line(done) == "exec-server run: command not found (/no/such/exec-server)"


def test_missing_program_is_named():
    done = run_cli("run", "--", "/no/such/binary")
    assert done.returncode == 127
    assert one_line(done) == ("exec-server run: command not found: No such file or directory (os error 2) "
                              "(/no/such/binary)")


def test_an_empty_program_is_not_found_as_a_shell_says():
    """``run -- ''`` exited 125, "cannot start the command", where ``sh -c "''"`` says not found (127)."""
    done = run_cli("run", "--", "", "arg")
    assert (done.returncode, one_line(done)) == (127, "exec-server run: command not found: missing program for "
                                                      "pipe spawn")


@pytest.mark.parametrize("content, mode, error", [
    (b"#!/bin/sh\necho hi\n", 0o644, "Permission denied (os error 13)"),
    (b"\x00\x01\x02\x03 not a program", 0o755, None)])
def test_a_command_that_is_not_executable_exits_126(tmp_path, content, mode, error):
    """As sh and ssh (``bash: ./x: Permission denied``, 126) and ``docker run`` say of a command that cannot
    be invoked; run said 125 for every start failure."""
    program = tmp_path / "program"
    program.write_bytes(content)
    program.chmod(mode)
    done = run_cli("run", "--", str(program))
    assert done.returncode == 126, done.stderr
    line = one_line(done)
    assert line.startswith("exec-server run: cannot start the command: ") and line.endswith("(%s)" % program)
    if error is not None:
        assert error in line


def test_missing_working_directory_is_named(tmp_path):
    missing = str(tmp_path / "gone")
    done = run_cli("run", "--cwd", missing, "--", "true")
    assert done.returncode == 125
    assert one_line(done) == ("exec-server run: working directory not found: No such file or directory "
                              "(os error 2) (%s)" % missing)


def test_refused_connection():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = "ws://127.0.0.1:%d" % probe.getsockname()[1]  # bound, not listening: refused
        done = run_cli("run", "--url", url, "--reconnect-deadline", "0", "--", "true")
    assert done.returncode == 255
    line = one_line(done)
    assert line.startswith("exec-server run: ") and "refused" in line.lower() and line.endswith("(%s)" % url)


def test_missing_token_says_so(token_server):
    running, _ = token_server
    done = run_cli("run", "--url", running.url, "--", "true")
    assert done.returncode == 255
    assert one_line(done) == ("exec-server run: authentication failed (HTTP 401): missing websocket bearer token (%s)"
                              % running.url)


def test_wrong_token_says_so(token_server):
    running, tmp_path = token_server
    done = run_cli("run", "--url", running.url, "--token-file", str(tmp_path / "wrong"), "--", "true")
    assert done.returncode == 255
    line = one_line(done)
    assert line.startswith("exec-server run: authentication failed (HTTP 401): ") and "token" in line
    assert line.endswith("(%s)" % running.url)


def test_right_token_runs(token_server):
    running, tmp_path = token_server
    done = run_cli("run", "--url", running.url, "--token-file", str(tmp_path / "token"), "--", "echo", "ok")
    assert (done.returncode, done.stdout) == (0, b"ok\n")


def test_port_in_use():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        url = "ws://127.0.0.1:%d" % taken.getsockname()[1]
        done = run_cli("--listen", url)
    assert done.returncode == 1
    assert one_line(done) == "exec-server: cannot listen: Address already in use (%s)" % url


def test_bad_env_option():
    done = run_cli("run", "--env", "novalue", "--", "true")
    assert done.returncode == 2
    assert one_line(done) == "exec-server run: --env wants NAME=VALUE (novalue)"


def test_cp_malformed_url():
    done = run_cli("cp", "--url", "foo", "a", ":b")
    assert done.returncode == 2
    assert one_line(done) == "exec-server cp: not a server URL, want ws://HOST:PORT or wss://HOST:PORT (foo)"


def test_run_help_lists_the_exit_statuses():
    done = run_cli("run", "--help")
    assert done.returncode == 0
    for status in (b"125", b"126", b"127", b"255", b"  2 "):
        assert status in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--listen", "ws://127.0.0.1:0", "--tls-certfile", "x.pem"],
     "exec-server: --tls-certfile needs a wss:// listen URL"),
    (["--listen", "ws://127.0.0.1:0", "--tls-certfile", "x.pem", "--tls-keyfile", "k.pem"],
     "exec-server: --tls-certfile, --tls-keyfile need a wss:// listen URL"),
    (["--listen", "ws://127.0.0.1:0", "--ws-auth", "capability-token", "--ws-token-file", "/no/such/token"],
     "exec-server: failed to read websocket token file /no/such/token: No such file or directory"),
    (["--listen", "ws://127.0.0.1:0", "--send-timeout", "nan"],
     "exec-server: --send-timeout must be a finite number of seconds, over 0"),  # NaN passed "> 0"
    (["--listen", "ws://127.0.0.1:0", "--detached-session-ttl", "inf"],
     "exec-server: --detached-session-ttl must be a finite number of seconds, 0 or more"),
    (["--listen", "stdio", "--max-sessions", "0"], "exec-server: --max-sessions must be at least 1"),
    (["--listen", "stdio", "--spool-dir", "/no/such/spool"],  # every process's output past 1 MiB went unspooled
     "exec-server: --spool-dir /no/such/spool: No such file or directory"),
    (["--listen", "ws://127.0.0.1:0", "--spool-dir", __file__],
     "exec-server: --spool-dir %s: Not a directory" % __file__),
    (["--listen", "ws://example.com:80"],
     "exec-server: listen URL must look like ws://HOST:PORT or wss://HOST:PORT (HOST an IP address or localhost, "
     "e.g. ws://127.0.0.1:8765), got 'ws://example.com:80'"),
])
def test_server_start_up_mistakes_are_worded_for_people(args, message):
    done = run_cli(*args)
    assert done.returncode == 2
    assert one_line(done) == message


def test_a_spool_dir_is_not_needed_when_nothing_is_spooled():
    done = run_cli("--listen", "stdio", "--spool-dir", "/no/such/spool", "--spool-bytes-per-process", "0")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("option, value, wanted", [
    ("--timeout", "-1", "over 0"), ("--timeout", "nan", "over 0"), ("--timeout", "inf", "over 0"),
    ("--timeout", "0", "over 0"), ("--reconnect-deadline", "nan", "0 or more"),
    ("--reconnect-deadline", "-5", "0 or more"), ("--reconnect-deadline", "inf", "0 or more"),
])
def test_a_wait_that_is_not_a_number_of_seconds_is_a_usage_error(option, value, wanted):
    """-1 and nan were reported as "not a server URL", inf was a traceback, 0 "Operation now in progress",
    and a NaN or negative reconnect deadline was taken as 0."""
    done = run_cli("run", "--url", "ws://127.0.0.1:1", option, value, "--", "true")
    assert done.returncode == 2
    assert done.stderr.decode().splitlines()[-1] == (
        "exec-server run: error: argument %s: invalid value '%s': a number of seconds, %s" % (option, value, wanted))


@pytest.mark.parametrize("cwd", ["relative/dir", ""])
def test_a_relative_working_directory_is_a_usage_error(cwd):
    """A remote path cannot be resolved against the local directory: exit 2, one line (it was a traceback)."""
    done = run_cli("run", "--cwd", cwd, "--", "pwd")
    assert done.returncode == 2
    assert one_line(done) == "exec-server run: --cwd wants an absolute path on the server (%s)" % (cwd or "''")


def test_a_relative_working_directory_is_refused_for_several_hosts_before_connecting():
    """It was a ValueError traceback line per host, after connecting to each (exit 123)."""
    done = run_cli("run", "--url", "ws://127.0.0.1:9", "--url", "ws://127.0.0.1:10", "--cwd", "relative", "--", "pwd")
    assert done.returncode == 2
    assert one_line(done) == "exec-server run: --cwd wants an absolute path on the server (relative)"


def test_a_working_directory_that_is_a_file_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    done = run_cli("run", "--cwd", str(tmp_path / "file"), "--", "pwd")
    assert done.returncode == 125
    assert one_line(done) == ("exec-server run: working directory is not a directory: Not a directory (os error 20) "
                              "(%s)" % (tmp_path / "file"))


def test_the_python_client_names_a_relative_cwd(server):
    from exec_server import Client

    with Client.connect(server.url, timeout=10) as client:
        with pytest.raises(ValueError, match="path is not absolute: 'relative'"):
            client.start(["pwd"], cwd="relative")


@pytest.mark.parametrize("args, env, named", [
    (["--log-level", "BOGUS"], {}, "argument --log-level"),
    ([], {"EXEC_SERVER_LOG": "bogus"}, "EXEC_SERVER_LOG"),
    (["--log-level", "BOGUS"], {"EXEC_SERVER_LOG": "info"}, "argument --log-level"),
])
def test_an_unknown_log_level_is_refused_naming_where_it_came_from(args, env, named):
    import os

    done = subprocess.run(CLI + ["--listen", "stdio"] + args, capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, **env))
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert lines[-1].startswith("exec-server: error: %s: invalid level" % named)
    if not args:  # the variable's error is its one line: no usage of options that were all right
        assert len(lines) == 1, lines


@pytest.mark.parametrize("args, logged", [(["--log-level", "info", "run"], True),
                                          (["run", "--log-level", "info"], True),
                                          (["--log-level", "info", "run", "--log-level", "error"], False),
                                          (["run"], False)])
def test_the_log_level_may_follow_the_subcommand(args, logged):
    """``exec-server run --log-level info -- true`` was refused (unrecognized arguments); after the subcommand
    it wins over the one before it."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "EXEC_SERVER_LOG"}
    done = subprocess.run(CLI + args + ["--", "true"], capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=env)
    assert done.returncode == 0, done.stderr[-500:]
    assert (b" INFO " in done.stderr) == logged, done.stderr[-500:]  # "process started"


@pytest.mark.parametrize("args, env, logged", [([], {"EXEC_SERVER_LOG": "info"}, True),
                                               (["--log-level", "ERROR"], {"EXEC_SERVER_LOG": "info"}, False),
                                               ([], {}, False)])
def test_the_log_level_comes_from_the_option_else_the_variable(args, env, logged):
    import os

    lines = [{"id": 1, "method": "initialize", "params": {"clientName": "t"}}, {"method": "initialized"},
             {"id": 2, "method": "process/start", "params": start_params("p", ["true"])}]
    done = subprocess.run(CLI + ["--listen", "stdio"] + args, capture_output=True, timeout=60,
                          input=b"".join(json.dumps(line).encode() + b"\n" for line in lines),
                          env={k: v for k, v in dict(os.environ, **env).items() if k != "EXEC_SERVER_LOG" or env})
    answered = {json.loads(line).get("id") for line in done.stdout.splitlines()}  # exited, closed may come too
    assert done.returncode == 0 and {1, 2} <= answered, done.stdout
    assert (b" INFO " in done.stderr) == logged, done.stderr[-500:]  # "process started"


def test_the_error_classes_the_readme_names_are_importable_from_the_package():
    import exec_server
    from exec_server.protocol import errors
    from exec_server.server.config import ServerConfig

    for name in ("InternalError", "NotFound", "InvalidParams", "InvalidRequest", "ServerOverloaded"):
        assert getattr(exec_server, name) is getattr(errors, name)
    assert exec_server.ServerConfig is ServerConfig


def test_ctrl_c_while_connecting_ends_with_130_and_one_line():
    """^C while run waits for its server (here a --via child that never answers): status 130, no traceback."""

    child = subprocess.Popen(CLI + ["run", "--via", "sleep 30", "--timeout", "30", "--", "true"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        via = wait_until(lambda: psutil.Process(child.pid).children(), timeout=10)  # the --via child runs
        time.sleep(0.5)  # it waits for its initialize answer
        child.send_signal(signal.SIGINT)
        _out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == -signal.SIGINT  # a shell says 130
    assert err.decode().splitlines() == ["exec-server run: interrupted"]
    wait_until(lambda: all_gone(via), timeout=10)  # the server it started is gone too


def test_cp_mistakes_name_the_path_and_have_their_status(server, tmp_path):
    (tmp_path / "here.txt").write_text("hi\n")
    cp = ["cp", "--url", server.url]
    cases = [
        ([":%s/missing.txt" % tmp_path, str(tmp_path / "m.txt")], 1,
         "exec-server cp: No such file or directory (os error 2) (:%s/missing.txt)" % tmp_path),
        ([str(tmp_path / "here.txt"), ":/nonexistent-dir/x.txt"], 1,
         "exec-server cp: No such file or directory (os error 2) (:/nonexistent-dir/x.txt)"),
        ([":%s/here.txt" % tmp_path, str(tmp_path / "no-dir") + "/"], 1,
         "exec-server cp: Not a directory (%s/no-dir/)" % tmp_path),
        ([":%s/here.txt" % tmp_path, str(tmp_path / "no-dir" / "x.txt")], 1,
         "exec-server cp: No such file or directory (%s/no-dir/x.txt)" % tmp_path),
        # the same on the remote side: a trailing / means a directory (the server would drop it)
        ([str(tmp_path / "here.txt"), ":%s/no-dir/" % tmp_path], 1,
         "exec-server cp: Not a directory (:%s/no-dir/)" % tmp_path),
        ([str(tmp_path / "here.txt"), ":%s/here.txt/" % tmp_path], 1,
         "exec-server cp: Not a directory (:%s/here.txt/)" % tmp_path),
        ([":%s/here.txt" % tmp_path, ":%s/no-dir/" % tmp_path], 1,
         "exec-server cp: Not a directory (:%s/no-dir/)" % tmp_path),
        (["here.txt", "there.txt"], 2,
         "exec-server cp: one side must be remote: mark it with a leading ':' (e.g. :/srv/file)"),
        ([str(tmp_path / "here.txt"), ":"], 2, "exec-server cp: a remote path follows the ':' (e.g. :/srv/file)"),
        ([":", str(tmp_path / "x.txt")], 2, "exec-server cp: a remote path follows the ':' (e.g. :/srv/file)"),
        # a copy on the server: the error may be about either side (it named the source alone)
        ([":%s/here.txt" % tmp_path, ":%s/no-dir/x.txt" % tmp_path], 1,
         "exec-server cp: No such file or directory (os error 2) (:%s/here.txt -> :%s/no-dir/x.txt)"
         % (tmp_path, tmp_path)),
    ]
    for args, status, line in cases:
        done = run_cli(*(cp + args))
        assert (done.returncode, one_line(done)) == (status, line)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["here.txt"]  # nothing made on the way


def test_cp_help_lists_the_exit_statuses():
    done = run_cli("cp", "--help")
    assert b"130 interrupted" in done.stdout and b"255 could not connect" in done.stdout


@pytest.mark.parametrize("via, how", [("false", "exited with status 1"), ("sh -c 'exit 3'", "exited with status 3"),
                                      ("sh -c 'kill -9 $$'", "was killed by signal 9 (SIGKILL)")])
def test_a_via_command_that_exits_says_so(via, how):
    """--via a command that exits before answering: how, not 'cannot connect: Broken pipe' (nor 'status -9')."""
    done = run_cli("run", "--via", via, "--", "true")
    assert done.returncode == 255
    assert one_line(done) == "exec-server run: the exec-server child %s (%s)" % (how, via)


@contextlib.contextmanager
def server_and_run(*run_options):
    """A listening ``exec-server`` child and ``exec-server run --url`` of it (stdout and stderr piped) with
    ``run_options``, running ``echo started; exec sleep 30`` once it has said started; both killed at the end."""
    server = subprocess.Popen(CLI + ["--listen", "ws://127.0.0.1:0"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    runner = None
    try:
        url = server.stdout.readline().decode().strip()
        runner = subprocess.Popen(CLI + ["run", "--url", url, *run_options, "--", "sh", "-c",
                                         "echo started; exec sleep 30"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert runner.stdout.readline() == b"started\n"
        yield server, runner
    finally:
        for child in (runner, server):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait(10)
        server.stdout.close()
        if runner is not None:
            runner.stdout.close()
            runner.stderr.close()


def test_run_says_when_it_reconnects_and_when_it_gives_up():
    """The server is SIGKILLed under a running command: run says at once that it is reconnecting (it was silent
    for the whole --reconnect-deadline), then gives up with 255."""
    with server_and_run("--reconnect-deadline", "3") as (server, runner):
        killed_at = time.monotonic()
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        first = runner.stderr.readline().decode().rstrip("\n")
        assert first == "exec-server run: connection lost; reconnecting for up to 3 s"
        rest = runner.stderr.read().decode()
        assert runner.wait(30) == 255
        assert time.monotonic() - killed_at >= 2.5  # it tried for the deadline (3 s from the drop's detection)
        assert "Traceback" not in rest and len(rest.splitlines()) == 1


@pytest.mark.parametrize("attempt", range(3))
def test_run_ends_quietly_when_the_server_shuts_down(attempt):
    """SIGTERM to the server: the command is killed and reported closed, and run exits 137 at once; it also
    said "connection lost; reconnecting for up to 25 s" two times in three, a reconnect that never came."""
    with server_and_run() as (server, runner):
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        out, err = runner.communicate(timeout=30)
        assert (runner.returncode, out, err) == (137, b"", b"")


def test_run_says_when_it_has_reconnected(configured_server):
    """A dropped connection that comes back: one line when it drops, one when it is back, and the output and
    exit status as if nothing happened."""
    from faultproxy import FaultProxy

    running = configured_server()
    proxy = FaultProxy(int(running.url.rsplit(":", 1)[1]))
    runner = None
    try:
        runner = subprocess.Popen(CLI + ["run", "--url", proxy.url, "--", "sh", "-c",
                                         "echo started; sleep 2; echo after; exit 3"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert runner.stdout.readline() == b"started\n"
        proxy.cut()
        assert runner.stderr.readline() == b"exec-server run: connection lost; reconnecting for up to 25 s\n"
        assert runner.stderr.readline() == b"exec-server run: reconnected; the command goes on\n"
        out, err = runner.communicate(timeout=30)
    finally:
        proxy.close()
        if runner is not None and runner.poll() is None:
            runner.kill()
            runner.wait(10)
    assert (runner.returncode, out, err) == (3, b"after\n", b"")


def test_a_file_uri_working_directory_is_still_taken():
    """The check above must not refuse a file: URI, which the client takes as a working directory."""
    done = run_cli("run", "--cwd", "file:///", "--", "pwd")
    assert (done.returncode, done.stdout) == (0, b"/\n"), done.stderr


UNSENDABLE = ("the token holds a line break, a control character or a non-ASCII character (a bearer token is "
              "printable ASCII)")


@pytest.mark.parametrize("content, message", [
    (b"", "the token is empty"),
    (b"\n", "the token is empty"),
    (b"first line\nsecond line\n", UNSENDABLE),  # base64 wraps its output at 76 columns
    (b"t\xc3\xb6ken", UNSENDABLE),
    (b"tab\there", UNSENDABLE),
])
def test_a_token_file_no_header_can_carry_is_a_usage_error_on_both_ends(tmp_path, content, message):
    """The client crashed with h11's traceback (status 1) or blamed the URL; the server started with a
    token no client could ever send."""
    token = tmp_path / "token"
    token.write_bytes(content)
    done = run_cli("run", "--url", "ws://127.0.0.1:9", "--token-file", str(token), "--", "true")
    assert (done.returncode, one_line(done)) == (2, "exec-server run: unusable token file: %s (%s)" % (message, token))
    done = run_cli("--listen", "ws://127.0.0.1:0", "--ws-auth", "capability-token", "--ws-token-file", str(token))
    assert (done.returncode, one_line(done)) == (2, "exec-server: the token file %s: %s" % (token, message))


@pytest.mark.parametrize("token, message", [
    ("", "the token is empty"), ("a\r\nb", UNSENDABLE), ("\u00e9", UNSENDABLE),
    (" padded", "the token begins or ends with a space (the server would trim it)"),
])
def test_client_connect_refuses_a_token_no_header_can_carry(token, message):
    from exec_server import Client

    with pytest.raises(ValueError, match="^%s$" % re.escape(message)):
        Client.connect("ws://127.0.0.1:9", token=token)


def test_help_gives_the_result_budget_cost_the_server_counts():
    from exec_server.server.budget import RESULT_COST_PER_BYTE

    done = run_cli("--help")
    assert "fs/readFile; %d per byte returned)" % RESULT_COST_PER_BYTE in " ".join(done.stdout.decode().split())


def test_a_connection_lost_mid_transfer_is_not_told_as_a_failed_connect():
    """``cp`` said "cannot connect: Broken pipe" for a connection that was up and dropped in a send."""
    import errno as errnos

    from exec_server import ExecServerDisconnected
    from exec_server.cli.connect import disconnected

    lost = ExecServerDisconnected("send failed: [Errno 32] Broken pipe")
    lost.__cause__ = BrokenPipeError(errnos.EPIPE, "Broken pipe")
    assert disconnected(lost, "ws://127.0.0.1:9").what == "connection lost: %s" % os.strerror(errnos.EPIPE)
    refused = ExecServerDisconnected("cannot connect to ws://127.0.0.1:9: Connection refused")
    refused.__cause__ = ConnectionRefusedError(errnos.ECONNREFUSED, "Connection refused")
    assert disconnected(refused, "ws://127.0.0.1:9").what == "cannot connect: %s" % os.strerror(errnos.ECONNREFUSED)
    unstarted = ExecServerDisconnected("cannot start the exec-server command: [Errno 8] Exec format error")
    unstarted.__cause__ = OSError(errnos.ENOEXEC, "Exec format error")  # --via a file that cannot run
    assert disconnected(unstarted, "./x").what == "cannot connect: %s" % os.strerror(errnos.ENOEXEC)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"),
                    reason="starts a server as root without capabilities (setpriv): root may enter any directory")
def test_a_working_directory_the_server_may_not_enter_is_named_not_the_command(tmp_path):
    """``Permission denied`` is the same words for a program that is not executable (126) and for a working
    directory the server may not enter: that one read as the command's fault, exit 126.  A name looked up in
    the directory tells them apart: it is named, and run exits 125."""
    import shutil
    import tempfile

    base = tempfile.mkdtemp()
    os.mkdir(os.path.join(base, "private"), 0o700)
    os.chown(os.path.join(base, "private"), 65534, 65534)  # nobody's: root without CAP_DAC_* may not enter
    script = os.path.join(base, "script")
    with open(script, "w") as handle:
        handle.write("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o644)
    server = subprocess.Popen(["/usr/bin/setpriv", "--inh-caps=-all", "--bounding-set=-all"] + CLI
                              + ["--listen", "ws://127.0.0.1:0"], cwd=base, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        url = server.stdout.readline().decode().strip()
        if not url.startswith("ws://127.0.0.1:"):
            server.kill()
            raise AssertionError("the server did not start: %r" % server.communicate(timeout=30)[1][-2000:])
        done = run_cli("run", "--url", url, "--cwd", os.path.join(base, "private"), "--", "true")
        assert done.returncode == 125
        assert one_line(done) == ("exec-server run: working directory cannot be entered: Permission denied "
                                  "(os error 13) (%s)" % os.path.join(base, "private"))
        done = run_cli("run", "--url", url, "--cwd", base, "--", script)
        assert done.returncode == 126
        assert one_line(done) == "exec-server run: cannot start the command: Permission denied (os error 13) (%s)" % (
            script)
    finally:
        server.terminate()
        server.communicate(timeout=30)
        shutil.rmtree(base)
