"""``exec-server run`` and ``cp`` with several hosts: [HOST] prefixes, --group-output, summary, exit status."""

import io
import re
import subprocess
import sys
from collections import Counter
from urllib.parse import urlsplit

import pytest

from conftest import start_ours
from exec_server.cli.group_run import MAX_LINE_BYTES, LinePrinter
from exec_server.cli.options import GROUP_PARALLEL
from exec_server.cli.statuses import EXIT_SOME_HOSTS_FAILED
from exec_server.cli.output import LocalOutput
from exec_server.client.group import DEFAULT_MAX_WORKERS
from faultproxy import FaultProxy

pytestmark = pytest.mark.posix

CLI = [sys.executable, "-m", "exec_server"]


def run_cli(*args, timeout=60):
    return subprocess.run(CLI + list(args), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def three():
    """Three of our servers: (their URLs, their host:port labels); stopped at teardown."""
    servers = [start_ours() for _ in range(3)]
    urls = [s.url for s in servers]
    yield urls, [urlsplit(url).netloc for url in urls]
    for server in servers:
        server.stop()


@pytest.fixture
def refusing():
    proxy = FaultProxy(1)
    proxy.refuse(True)
    yield proxy
    proxy.close()


def url_options(urls):
    return [word for url in urls for word in ("--url", url)]


def summary_rows(stderr: bytes):
    """host -> (status, time, note) from the summary table on stderr."""
    lines = stderr.decode().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HOST"))
    rows = {}
    for line in lines[start + 1:]:
        host, status, rest = line.split(None, 2)
        rows[host] = (int(status), rest)
    return rows


def test_lines_prefixed_with_their_host_and_a_summary(three):
    urls, labels = three
    done = run_cli("run", *url_options(urls), "--", "sh", "-c", "echo one; echo two; echo err >&2; printf tail")
    assert done.returncode == 0, done.stderr
    out = Counter(done.stdout.decode().splitlines())
    assert out == Counter("[%s] %s" % (label, word) for label in labels for word in ("one", "two", "tail"))
    err_lines = done.stderr.decode().splitlines()
    errs = Counter(line for line in err_lines if line.endswith("] err"))
    assert errs == Counter("[%s] err" % label for label in labels)
    assert "exec-server run: all 3 hosts succeeded" in err_lines
    rows = summary_rows(done.stderr)
    assert set(rows) == set(labels)
    assert all(status == 0 and re.match(r"\d+\.\d\d s", rest) for status, rest in rows.values())


def test_failure_status_and_summary(three, refusing, tmp_path):
    urls, labels = three
    hosts = tmp_path / "hosts"
    hosts.write_text("# build boxes\n%s\n\n%s   # the second\n%s\n" % (urls[0], urls[1], refusing.url))
    done = run_cli("run", "--hosts", str(hosts), "--", "sh", "-c", "echo bye; exit 3")
    assert done.returncode == EXIT_SOME_HOSTS_FAILED == 123
    assert sorted(done.stdout.decode().splitlines()) == sorted("[%s] bye" % label for label in labels[:2])
    assert b"exec-server run: 3 of 3 hosts failed" in done.stderr
    rows = summary_rows(done.stderr)
    assert rows[labels[0]][0] == rows[labels[1]][0] == 3
    refused = rows[urlsplit(refusing.url).netloc]
    assert refused[0] == 255 and refused[1].startswith("-       cannot connect")
    ok = run_cli("run", "--url", urls[0], "--url", urls[2], "--", "true")
    assert ok.returncode == 0
    missing = run_cli("run", *url_options(urls), "--", "no-such-program-xyz")
    assert missing.returncode == 123
    assert all(status == 127 and "command not found" in rest for status, rest in summary_rows(missing.stderr).values())
    nowhere = run_cli("run", *url_options(urls), "--cwd", "/no/such/dir", "--", "true")  # was "command not found"
    assert nowhere.returncode == 123
    assert all(status == 125 and "working directory not found" in rest and "/no/such/dir" in rest
               for status, rest in summary_rows(nowhere.stderr).values())


def test_group_output_one_block_per_host(three):
    urls, labels = three
    script = "for i in 1 2 3; do echo line$i; sleep 0.1; done; echo oops >&2"
    done = run_cli("run", "--group-output", *url_options(urls), "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    blocks = re.findall(rb"=== (\S+) ===\n((?:line\d\n)*)", done.stdout)
    assert sorted(label.decode() for label, _body in blocks) == sorted(labels)
    assert all(body == b"line1\nline2\nline3\n" for _label, body in blocks)
    assert b"".join(b"=== %s ===\n%s" % block for block in blocks) == done.stdout  # contiguous blocks
    for label in labels:
        assert ("=== %s ===\noops\n" % label).encode() in done.stderr


def test_one_url_keeps_todays_output(three):
    urls, _labels = three
    done = run_cli("run", "--url", urls[0], "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")


def test_usage_mistakes_are_one_line(three, tmp_path):
    urls, _labels = three
    cases = [
        (["run", *url_options(urls[:2]), "--tty", "--", "true"], b"--tty needs a single host"),
        (["run", *url_options(urls[:2]), "--stdin", "--", "true"], b"--stdin needs a single host"),
        (["run", "--url", urls[0], "--url", "http://x", "--", "true"], b"not a server URL"),
        (["run", "--url", urls[0], "--url", urls[0], "--", "true"], b"host given twice"),
        (["run", "--url", urls[0], "--url", urls[0] + "/", "--", "true"], b"host given twice"),
        (["run", "--url", urls[0], "--url", "WS" + urls[0][2:], "--", "true"], b"host given twice"),
        (["run", "--url", "ws://localhost", "--url", "ws://LOCALHOST:80/", "--", "true"], b"host given twice"),
        (["run", "--url", urls[0], "--url", "ws://127.0.0.1:99999", "--", "true"], b"not a server URL"),
        (["run", "--hosts", str(tmp_path / "absent"), "--", "true"], b"cannot read the hosts file"),
        (["run", *url_options(urls[:2])], b"no command given"),
        (["run", *url_options(urls[:2]), "--parallel", "0", "--", "true"], b"invalid value"),
    ]
    for argv, message in cases:
        done = run_cli(*argv)
        assert done.returncode == 2 and message in done.stderr and b"Traceback" not in done.stderr, (argv, done)
    (tmp_path / "empty").write_text("# nothing\n\n")
    done = run_cli("run", "--hosts", str(tmp_path / "empty"), "--", "true")
    assert done.returncode == 2 and b"no hosts in the hosts file" in done.stderr
    help_text = run_cli("run", "--help").stdout
    assert b"123" in help_text and b"--group-output" in help_text and b"--hosts" in help_text
    assert GROUP_PARALLEL == DEFAULT_MAX_WORKERS


def test_cp_to_and_from_several_hosts(three, refusing, tmp_path):
    urls, labels = three
    source = tmp_path / "app.conf"
    source.write_bytes(b"setting = 1\n" * 1000)
    remote = tmp_path / "remote"
    remote.mkdir()
    done = run_cli("cp", *url_options(urls), str(source), ":" + str(remote))  # a remote directory: scp-like
    assert done.returncode == 0, done.stderr
    assert (remote / "app.conf").read_bytes() == source.read_bytes()
    downloads = tmp_path / "downloads"
    done = run_cli("cp", *url_options(urls), "--url", refusing.url, ":" + str(remote / "app.conf"), str(downloads))
    assert done.returncode == 123
    [line] = done.stderr.decode().splitlines()  # the refusing host's, alone
    assert line.startswith("exec-server cp: cannot connect") and line.endswith("(%s)" % urlsplit(refusing.url).netloc)
    for label in labels:
        assert (downloads / label.replace(":", "_") / "app.conf").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in downloads.iterdir()) == sorted(label.replace(":", "_") for label in labels)
    done = run_cli("cp", *url_options(urls), ":" + str(tmp_path / "absent"), str(downloads))
    assert done.returncode == 123 and done.stderr.decode().count("exec-server cp: ") == 3
    for line in done.stderr.decode().splitlines():  # the path, as one host's line names it, then the host
        assert line.startswith("exec-server cp: No such file or directory (os error 2) (:%s) (" % (tmp_path / "absent"))
    done = run_cli("cp", *url_options(urls), str(source), str(tmp_path / "local"))
    assert done.returncode == 2 and b"one side must be remote" in done.stderr


def test_a_line_longer_than_the_limit_is_printed_in_pieces(three):
    urls, labels = three
    # 200000 x, a newline, 3 short lines, then 70000 y without a newline; the x line arrives in many chunks
    script = "head -c 200000 /dev/zero | tr '\\0' x; printf '\\na\\n\\nb\\n'; head -c 70000 /dev/zero | tr '\\0' y"
    done = run_cli("run", *url_options(urls[:2]), "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    limit = MAX_LINE_BYTES
    expected = (["x" * limit] * 3 + ["x" * (200000 - 3 * limit), "a", "", "b"]
                + ["y" * limit, "y" * (70000 - limit)])
    for label in labels[:2]:
        mine = [line[len(label) + 3:] for line in done.stdout.decode().splitlines()
                if line.startswith("[%s] " % label)]
        assert mine == expected


def test_line_printer_holds_at_most_a_line_limit_and_scans_each_chunk_once():
    out = io.BytesIO()
    printer = LinePrinter(LocalOutput(out, io.BytesIO()))
    for _ in range(300):
        printer.output("h", "stdout", b"z" * 1000)
        assert len(printer.partial[("h", False)]) < MAX_LINE_BYTES
    printer.output("h", "stdout", b"\nlast")
    printer.finish("h")
    lines = out.getvalue().split(b"\n")
    assert lines[-1] == b"" and lines[-2] == b"[h] last"
    assert b"".join(line[4:] for line in lines[:-2]) == b"z" * 300000
    assert [len(line) for line in lines[:-2]] == [4 + MAX_LINE_BYTES] * 4 + [4 + 300000 - 4 * MAX_LINE_BYTES]


def test_cp_from_hosts_of_one_directory_name_keeps_each_apart(three, tmp_path):
    urls, labels = three
    (tmp_path / "app.log").write_bytes(b"log\n")
    same_port = [urls[0] + "/?a", urls[0] + "/?b"]  # labelled by their whole URLs, one host_dirname
    done = run_cli("cp", *url_options(same_port), ":" + str(tmp_path / "app.log"), str(tmp_path / "got"))
    assert done.returncode == 0, done.stderr
    folders = sorted(p.name for p in (tmp_path / "got").iterdir())
    assert len(folders) == 2 and all(re.fullmatch(r"127\.0\.0\.1_\d+_[0-9a-f]{8}", name) for name in folders), folders
    assert all((tmp_path / "got" / name / "app.log").read_bytes() == b"log\n" for name in folders)


def test_a_line_of_exactly_the_limit_ends_without_an_empty_line():
    out = io.BytesIO()
    printer = LinePrinter(LocalOutput(out, io.BytesIO()))
    printer.output("h", "stdout", b"a" * MAX_LINE_BYTES)  # a whole piece: printed now
    printer.output("h", "stdout", b"\nnext\n")  # its newline comes with the next chunk
    printer.output("h", "stdout", b"b" * MAX_LINE_BYTES)
    printer.output("h", "stdout", b"b\n\nlast\n")  # the line goes on: no newline was owed
    printer.output("h", "stdout", b"c" * MAX_LINE_BYTES)
    printer.output("h", "stdout", b"\r\nend")  # a terminal's line end
    printer.finish("h")
    a_line, b_line, c_line = (b"[h] " + letter * MAX_LINE_BYTES for letter in (b"a", b"b", b"c"))
    assert out.getvalue().split(b"\n") == [a_line, b"[h] next", b_line, b"[h] b", b"[h] ", b"[h] last", c_line,
                                           b"[h] end", b""]


def test_cp_on_several_hosts_into_a_directory_copies_into_it_as_on_one(three, tmp_path):
    urls, _labels = three
    (tmp_path / "app.conf").write_bytes(b"setting = 1\n")
    one, group = tmp_path / "one", tmp_path / "group"
    one.mkdir()
    group.mkdir()
    done = run_cli("cp", "--url", urls[0], ":%s" % (tmp_path / "app.conf"), ":%s" % one)
    assert done.returncode == 0, done.stderr
    done = run_cli("cp", *url_options(urls), ":%s" % (tmp_path / "app.conf"), ":%s" % group)
    assert done.returncode == 0, done.stderr  # was 123, "Is a directory" from every host
    assert (group / "app.conf").read_bytes() == (one / "app.conf").read_bytes() == b"setting = 1\n"


def test_a_password_in_a_host_url_is_never_printed(three, refusing, tmp_path):
    """user:password@ in a URL was in every [HOST] prefix, the summary, errors and cp's download folders."""
    urls, labels = three
    secret = urls[0].replace("ws://", "ws://user:s3cret@")
    lost = refusing.url.replace("ws://", "ws://T0KEN@")
    done = run_cli("run", "--url", secret, "--url", urls[1], "--url", lost, "--", "echo", "hi")
    assert done.returncode == 123
    assert b"s3cret" not in done.stdout + done.stderr and b"T0KEN" not in done.stdout + done.stderr
    assert b"[%s] hi\n" % labels[0].encode() in done.stdout
    assert "cannot connect" in summary_rows(done.stderr)[urlsplit(refusing.url).netloc][1]
    done = run_cli("run", "--url", lost, "--", "true")  # one host
    assert done.returncode == 255 and b"T0KEN" not in done.stderr and b"***@" in done.stderr
    (tmp_path / "f").write_bytes(b"x")
    done = run_cli("cp", "--url", secret, "--url", urls[1], ":%s" % (tmp_path / "f"), str(tmp_path / "got"))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == sorted(lab.replace(":", "_") for lab in labels[:2])


def test_a_hosts_file_with_a_byte_order_mark_and_crlf_lines(three, tmp_path):
    urls, labels = three
    hosts = tmp_path / "hosts"
    hosts.write_bytes(b"\xef\xbb\xbf" + "".join(url + "\r\n" for url in urls).encode())  # as Notepad saves it
    done = run_cli("run", "--hosts", str(hosts), "--", "true")
    assert done.returncode == 0, done.stderr  # was 2: "not a server URL" for the first line
    assert set(summary_rows(done.stderr)) == set(labels)
