"""Sandboxed file operations without bubblewrap: confined by descriptors or refused (issue 15)."""

import os
import stat
import sys
import threading
import time

import pytest

from exec_server import Client
from exec_server.protocol.errors import RpcError
from exec_server.server.fs.helper import run_fs_helper
from exec_server.server.fs.sandbox import parse_sandbox
from fs_helper import confined, safe_path, tree_at
from fs_helper.errors import FsError
from fs_helper.policy import Policy
from fs_helper.uris import path_to_uri

pytestmark = [pytest.mark.posix,
              pytest.mark.skipif(safe_path.unsupported_reason() is not None, reason="no descriptor-relative calls")]

SECRET = b"top secret"


@pytest.fixture
def no_bwrap(tmp_path, monkeypatch):
    """Hide bubblewrap: only the helper's own confinement stands."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def roots(tmp_path):
    """``work`` is writable, ``outside`` is read-only, ``hidden`` is denied."""
    work, outside, hidden = tmp_path / "work", tmp_path / "outside", tmp_path / "hidden"
    for folder in (work, outside, hidden):
        folder.mkdir()
    (outside / "victim.txt").write_bytes(b"original")
    (hidden / "secret.txt").write_bytes(SECRET)
    (work / "src.txt").write_bytes(b"source")
    (work / "srcdir").mkdir()
    (work / "srcdir" / "a.txt").write_bytes(b"a")
    return work, outside, hidden


def policy_of(work, hidden):
    return Policy([["/", "read"], [str(work), "write"], [str(hidden), "none"]])


def sandbox_of(work, hidden):
    entries = [{"path": {"type": "path", "path": "file:///"}, "access": "read"},
               {"path": {"type": "path", "path": path_to_uri(str(work))}, "access": "write"},
               {"path": {"type": "path", "path": path_to_uri(str(hidden))}, "access": "none"}]
    return {"permissions": {"type": "managed", "network": "enabled",
                            "file_system": {"type": "restricted", "entries": entries}},
            "windowsSandboxLevel": "disabled"}


def snapshot(*folders):
    """Every path below ``folders`` with its content (files) or None (directories, links)."""
    seen = {}
    for folder in folders:
        for parent, dirs, files in os.walk(str(folder)):
            for name in dirs + files:
                path = os.path.join(parent, name)
                if os.path.islink(path) or os.path.isdir(path):
                    seen[path] = None
                else:
                    with open(path, "rb") as handle:
                        seen[path] = handle.read()
    return seen


def race_params(work, outside, hidden, op):
    """(method, params) for one operation aimed through ``work/sub``, which a thread swaps for a link."""
    sub = work / "sub"
    uri = lambda path: path_to_uri(str(path))  # noqa: E731
    return {
        "remove": ("fs/remove", {"path": uri(sub / "victim.txt"), "recursive": True, "force": True}),
        "remove-tree": ("fs/remove", {"path": uri(sub), "recursive": True, "force": True}),
        "createDirectory": ("fs/createDirectory", {"path": uri(sub / "made" / "deep"), "recursive": True}),
        "writeFile": ("fs/writeFile", {"path": uri(sub / "written.txt"), "dataBase64": "eA=="}),
        "copy": ("fs/copy", {"sourcePath": uri(work / "src.txt"), "destinationPath": uri(sub / "copied.txt"),
                             "recursive": False}),
        "copy-tree": ("fs/copy", {"sourcePath": uri(work / "srcdir"), "destinationPath": uri(sub / "tree"),
                                  "recursive": True}),
        # rename: the write's temporary file is renamed into place inside the checked directory
        "rename-over": ("fs/writeFile", {"path": uri(sub / "victim.txt"), "dataBase64": "eA=="}),
        "copy-out-of-hidden": ("fs/copy", {"sourcePath": uri(sub / "secret.txt"),
                                           "destinationPath": uri(work / "leak.txt"), "recursive": True}),
        "read-hidden": ("fs/readFile", {"path": uri(sub / "secret.txt")}),
    }[op]


def flipper(sub, targets, stop):
    """Swap ``sub`` between a real directory and symlinks to each of ``targets`` until ``stop``."""
    def run():
        turn = 0
        while not stop.is_set():
            turn += 1
            try:
                if os.path.islink(sub):
                    os.unlink(sub)
                    os.mkdir(sub)
                else:
                    if os.path.isdir(sub):
                        safe_path_rmtree(sub)
                    os.symlink(targets[(turn // 2) % len(targets)], sub)
            except OSError:
                pass
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def safe_path_rmtree(path):
    parent, name = os.path.split(str(path))
    fd = os.open(parent, os.O_RDONLY)
    try:
        tree_at.remove_tree_at(fd, name)
    finally:
        os.close(fd)


RACE_OPS = ["remove", "remove-tree", "createDirectory", "writeFile", "copy", "copy-tree", "rename-over",
            "copy-out-of-hidden", "read-hidden"]


def check_outcome(work, outside, hidden, before, results):
    assert snapshot(outside, hidden) == before, "a file outside the writable root was touched"
    leaked = work / "leak.txt"
    assert not (leaked.exists() and leaked.read_bytes() == SECRET)
    assert all(result.get("dataBase64") != "dG9wIHNlY3JldA==" for result in results)


@pytest.mark.parametrize("op", RACE_OPS)
def test_race_in_process(roots, op):
    """Thousands of rounds of the confined operation against a directory/symlink swap."""
    work, outside, hidden = roots
    method, params = race_params(work, outside, hidden, op)
    run = confined.CONFINED_OPERATIONS[method]
    policy = policy_of(work, hidden)
    before = snapshot(outside, hidden)
    stop = threading.Event()
    thread = flipper(work / "sub", [outside, hidden], stop)
    results, outcomes = [], set()
    deadline = time.monotonic() + 4.0
    try:
        for _round in range(3000):
            if time.monotonic() > deadline:
                break
            try:
                results.append(run(dict(params), policy))
                outcomes.add("ok")
            except FsError as exc:
                outcomes.add(exc.code)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    check_outcome(work, outside, hidden, before, results)
    assert outcomes, "no round ran"


@pytest.mark.parametrize("op", ["remove", "createDirectory", "writeFile", "copy", "copy-tree", "rename-over",
                                "copy-out-of-hidden"])
def test_race_through_server_without_bwrap(server, roots, no_bwrap, op):
    """The same race end to end: helper processes, no bubblewrap on PATH, bounded in time."""
    work, outside, hidden = roots
    method, params = race_params(work, outside, hidden, op)
    before = snapshot(outside, hidden)
    stop = threading.Event()
    results = []
    with Client.connect(server.url, timeout=10) as client:
        thread = flipper(work / "sub", [outside, hidden], stop)
        deadline = time.monotonic() + 3.0
        try:
            for _round in range(80):
                if time.monotonic() > deadline:
                    break
                try:
                    results.append(client.call(method, dict(params, sandbox=sandbox_of(work, hidden)), timeout=30))
                except RpcError as exc:
                    assert "Traceback" not in exc.message
        finally:
            stop.set()
            thread.join(10)
    check_outcome(work, outside, hidden, before, results)


# ------------------------------------------------------------ symlink cases, one per operation
@pytest.fixture
def linked(roots):
    """``work/file-link`` -> outside/victim.txt, ``work/dir-link`` -> outside, ``work/hidden-link`` -> hidden."""
    work, outside, hidden = roots
    (work / "file-link").symlink_to(outside / "victim.txt")
    (work / "dir-link").symlink_to(outside)
    (work / "hidden-link").symlink_to(hidden / "secret.txt")
    (work / "tree").mkdir()
    (work / "tree" / "out").symlink_to(outside)
    (work / "tree" / "secret").symlink_to(hidden / "secret.txt")
    return work, outside, hidden


def helper_call(method, params, work, hidden):
    return confined.CONFINED_OPERATIONS[method](params, policy_of(work, hidden))


def refused(method, params, work, hidden):
    with pytest.raises(FsError) as caught:
        helper_call(method, params, work, hidden)
    return caught.value


def test_write_file_through_links(linked):
    work, outside, hidden = linked
    uri = lambda p: path_to_uri(str(p))  # noqa: E731
    assert refused("fs/writeFile", {"path": uri(work / "file-link"), "dataBase64": "eA=="}, work, hidden).code == -32603
    assert refused("fs/writeFile", {"path": uri(work / "dir-link" / "n.txt"), "dataBase64": "eA=="},
                   work, hidden).code == -32603
    error = refused("fs/writeFile", {"path": uri(work / "file-link"), "dataBase64": "eA==", "followSymlinks": False},
                    work, hidden)
    assert error.message.endswith("(os error 40)")
    assert (outside / "victim.txt").read_bytes() == b"original" and sorted(os.listdir(outside)) == ["victim.txt"]


def test_create_directory_through_links(linked):
    work, outside, hidden = linked
    uri = lambda p: path_to_uri(str(p))  # noqa: E731
    refused("fs/createDirectory", {"path": uri(work / "dir-link" / "new")}, work, hidden)
    refused("fs/createDirectory", {"path": uri(work / "dir-link" / "new"), "recursive": False}, work, hidden)
    helper_call("fs/createDirectory", {"path": uri(work / "made" / "deep")}, work, hidden)
    assert (work / "made" / "deep").is_dir()
    assert sorted(os.listdir(outside)) == ["victim.txt"]


def test_remove_through_links(linked):
    work, outside, hidden = linked
    uri = lambda p: path_to_uri(str(p))  # noqa: E731
    refused("fs/remove", {"path": uri(work / "dir-link" / "victim.txt")}, work, hidden)
    helper_call("fs/remove", {"path": uri(work / "file-link")}, work, hidden)  # the link itself goes
    helper_call("fs/remove", {"path": uri(work / "tree")}, work, hidden)  # links inside are not followed
    assert not os.path.lexists(work / "file-link") and not os.path.lexists(work / "tree")
    assert (outside / "victim.txt").read_bytes() == b"original"
    assert (hidden / "secret.txt").read_bytes() == SECRET


def test_remove_tree_with_stricter_entry_inside_is_refused(roots):
    work, _outside, _hidden = roots
    (work / "keep").mkdir()
    (work / "keep" / "k.txt").write_bytes(b"k")
    policy = Policy([["/", "read"], [str(work), "write"], [str(work / "keep"), "read"]])
    with pytest.raises(FsError):
        confined.remove({"path": path_to_uri(str(work))}, policy)
    assert (work / "keep" / "k.txt").read_bytes() == b"k"


def test_copy_through_links(linked):
    work, outside, hidden = linked
    uri = lambda p: path_to_uri(str(p))  # noqa: E731
    refused("fs/copy", {"sourcePath": uri(work / "src.txt"), "destinationPath": uri(work / "dir-link" / "c.txt"),
                        "recursive": False}, work, hidden)
    # a link is copied as a link, as by the reference: its text, never what it points to
    helper_call("fs/copy", {"sourcePath": uri(work / "hidden-link"), "destinationPath": uri(work / "leak.txt"),
                            "recursive": False}, work, hidden)
    assert os.readlink(work / "leak.txt") == str(hidden / "secret.txt")
    helper_call("fs/copy", {"sourcePath": uri(work / "tree"), "destinationPath": uri(work / "tree-copy"),
                            "recursive": True}, work, hidden)
    assert os.readlink(work / "tree-copy" / "secret") == str(hidden / "secret.txt")  # a link, not the content
    assert os.path.islink(work / "tree-copy" / "out")
    assert refused("fs/readFile", {"path": uri(work / "leak.txt")}, work, hidden).message.endswith("(os error 13)")
    # the link is made where the destination names, never through a link there into what is read-only
    refused("fs/copy", {"sourcePath": uri(work / "hidden-link"), "destinationPath": uri(work / "dir-link" / "l"),
                        "recursive": False}, work, hidden)
    assert sorted(os.listdir(outside)) == ["victim.txt"]


def test_copy_into_its_own_tree_is_refused_when_confined(roots):
    work, outside, hidden = roots
    uri = lambda p: path_to_uri(str(p))  # noqa: E731
    error = refused("fs/copy", {"sourcePath": uri(work), "destinationPath": uri(work / "srcdir" / "c"),
                                "recursive": True}, work, hidden)
    assert (error.code, error.message) == (-32600, "fs/copy cannot copy a directory to itself or one of its "
                                                   "descendants")
    assert not (work / "srcdir" / "c").exists()


def test_rename_into_place_does_not_write_through_a_link(linked):
    """writeFile's rename replaces what is at the checked name; a link there is judged by its target."""
    work, outside, hidden = linked
    (work / "inner-link").symlink_to(work / "src.txt")
    helper_call("fs/writeFile", {"path": path_to_uri(str(work / "inner-link")), "dataBase64": "eA=="}, work, hidden)
    assert (work / "src.txt").read_bytes() == b"x" and os.path.islink(work / "inner-link")
    assert (outside / "victim.txt").read_bytes() == b"original"


def test_read_through_link_into_hidden_is_refused(linked):
    work, _outside, hidden = linked
    error = refused("fs/readFile", {"path": path_to_uri(str(work / "hidden-link"))}, work, hidden)
    assert (error.code, error.message.endswith("(os error 13)")) == (-32600, True)


def test_without_descriptor_calls_the_operation_is_refused(roots, monkeypatch):
    work, _outside, hidden = roots
    monkeypatch.setattr(safe_path, "unsupported_reason", lambda: "this platform has no descriptor-relative file calls")
    error = refused("fs/writeFile", {"path": path_to_uri(str(work / "n.txt")), "dataBase64": "eA=="}, work, hidden)
    assert (error.code, error.message) == (-32603, "sandbox unavailable: this platform has no descriptor-relative "
                                                   "file calls")
    assert not (work / "n.txt").exists()


def test_openat2_absent_falls_back_to_the_walk(linked, monkeypatch):
    work, outside, hidden = linked
    monkeypatch.setattr(safe_path, "_openat2_state", [None])
    refused("fs/writeFile", {"path": path_to_uri(str(work / "dir-link" / "n.txt")), "dataBase64": "eA=="},
            work, hidden)
    helper_call("fs/writeFile", {"path": path_to_uri(str(work / "ok.txt")), "dataBase64": "eA=="}, work, hidden)
    assert (work / "ok.txt").read_bytes() == b"x" and sorted(os.listdir(outside)) == ["victim.txt"]


def test_path_longer_than_path_max_is_refused(roots):
    work, _outside, hidden = roots
    deep = path_to_uri(str(work) + "/a" * 3000)
    error = refused("fs/createDirectory", {"path": deep}, work, hidden)
    assert error.message.endswith("(os error 36)")
    assert not (work / "a").exists()


def test_helper_crash_is_a_short_message(roots, no_bwrap):
    """An unexpected error inside the helper: a short -32603; the traceback stays on the helper's stderr."""
    work, _outside, hidden = roots
    with pytest.raises(RpcError) as caught:
        run_fs_helper("fs/readFile", {"path": 5}, parse_sandbox(sandbox_of(work, hidden)))
    assert (caught.value.code, caught.value.message) == (-32603, "fs helper error: AttributeError")


def test_helper_traceback_goes_to_the_log_not_the_client(roots, caplog):
    work, _outside, hidden = roots
    crash = [sys.executable, "-c", "import sys; sys.stdin.read(); raise RuntimeError('helper broke')"]
    with caplog.at_level("WARNING", logger="exec_server.server.fs.helper"):
        with pytest.raises(RpcError) as caught:
            run_fs_helper("fs/readFile", {"path": "file:///x"}, parse_sandbox(sandbox_of(work, hidden)), command=crash)
    assert caught.value.message == "fs sandbox helper failed with status exit status: 1: RuntimeError: helper broke"
    assert any("Traceback" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("method", ["fs/readFile", "fs/copy"])
def test_a_fifo_is_refused_when_confined_without_waiting_for_a_writer(roots, method):
    """The confined read and copy open without waiting: a FIFO held the helper until its timeout."""
    work, _outside, hidden = roots
    fifo = work / "fifo"
    os.mkfifo(str(fifo))
    params = {"path": path_to_uri(str(fifo))} if method == "fs/readFile" else {
        "sourcePath": path_to_uri(str(fifo)), "destinationPath": path_to_uri(str(work / "copy")),
        "recursive": False}
    error = refused(method, params, work, hidden)
    assert (error.code, error.message) == (-32600, "path `%s` is a FIFO, not a regular file" % fifo)


def test_a_confined_copy_onto_a_fifo_names_the_whole_destination(roots):
    """The message named the FIFO's last component alone (``path `dest` is a FIFO``)."""
    work, _outside, hidden = roots
    (work / "source").write_bytes(b"data")
    (work / "sub").mkdir()
    destination = work / "sub" / "dest"
    os.mkfifo(str(destination))
    params = {"sourcePath": path_to_uri(str(work / "source")), "destinationPath": path_to_uri(str(destination)),
              "recursive": False}
    error = refused("fs/copy", params, work, hidden)
    assert (error.code, error.message) == (-32600, "path `%s` is a FIFO, not a regular file" % destination)
    assert stat.S_ISFIFO(os.lstat(str(destination)).st_mode)


def test_a_refused_confined_copy_names_the_path_the_client_gave(roots):
    """Reached through a linked directory, the FIFO is named as sent (the resolved path was named)."""
    work, _outside, hidden = roots
    (work / "real").mkdir()
    os.mkfifo(str(work / "real" / "fifo"))
    os.symlink(str(work / "real"), str(work / "linked"))
    given = work / "linked" / "fifo"
    params = {"sourcePath": path_to_uri(str(given)), "destinationPath": path_to_uri(str(work / "copy")),
              "recursive": False}
    error = refused("fs/copy", params, work, hidden)
    assert (error.code, error.message) == (-32600, "path `%s` is a FIFO, not a regular file" % given)
    assert not (work / "copy").exists()


@pytest.mark.parametrize("follow", [True, False])
def test_walk_lists_but_does_not_enter_what_the_policy_denies(roots, follow):
    """A ``none`` directory and a followed link out of what is granted: named in ``errors``, their names unread."""
    work, _outside, hidden = roots
    (work / "private").mkdir()
    (work / "private" / "p.txt").write_bytes(b"p")
    (work / "to-hidden").symlink_to(hidden)
    policy = Policy([["/", "read"], [str(work), "write"], [str(hidden), "none"], [str(work / "private"), "none"]])
    options = {"maxDepth": 5, "maxDirectories": 100, "maxEntries": 100, "followDirectorySymlinks": follow}
    result = confined.CONFINED_OPERATIONS["fs/walk"]({"path": path_to_uri(str(work)), "options": options}, policy)
    listed = {entry["path"] for entry in result["entries"]}
    assert path_to_uri(str(work / "private")) in listed and path_to_uri(str(work / "srcdir" / "a.txt")) in listed
    assert not any(path.endswith(("p.txt", "secret.txt")) for path in listed), listed
    denied = ["private"] + (["to-hidden"] if follow else [])
    assert result["errors"] == [{"path": path_to_uri(str(work / name)), "message": "Permission denied (os error 13)"}
                                for name in denied]


def test_an_unexpected_error_while_a_helper_runs_leaves_it_neither_running_nor_unreaped(roots, monkeypatch):
    """Only a timeout killed and reaped the helper: any other error left it running, registered as the server's
    own child (so the inherit-mode Reaper would never reap it either)."""
    import subprocess

    from exec_server.server.process import marked

    work, _outside, hidden = roots
    started = []

    class Failing(subprocess.Popen):
        def communicate(self, *args, **kwargs):
            started.append(self)
            raise MemoryError("no room for the answer")

    monkeypatch.setattr(subprocess, "Popen", Failing)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(MemoryError):
        run_fs_helper("fs/readFile", {"path": "file:///x"}, parse_sandbox(sandbox_of(work, hidden)), command=sleeper)
    (child,) = started
    assert child.returncode is not None and child.pid not in marked._ours
    assert child.stdin.closed and child.stdout.closed  # its pipes too (a ResourceWarning in a later test)
