"""A server's OS error reaches a ``client.fs`` caller as Python's own ``OSError`` subclass too
(exec_server.client.fs_errors): errno, strerror and the path given, the server's message kept."""

import errno
import os

import pytest

from conftest import start_ours
from exec_server import Client, InternalError, InvalidParams, InvalidRequest, NotFound, RpcError, ServerOverloaded
from exec_server.client.fs import RemoteFile
from exec_server.client.fs_errors import as_os_error
from test_recovery import proxy_to  # noqa: F401  (a fixture)


def test_a_missing_path_is_file_not_found_with_its_path(any_server, tmp_path):
    missing = tmp_path / "no-such-dir" / "config.json"
    with Client.connect(any_server.url, timeout=10) as client:
        for call in (lambda: client.fs.read_file(missing), lambda: client.fs.get_metadata(str(missing)),
                     lambda: client.fs.open(missing), lambda: client.fs.read_directory(missing),
                     lambda: client.fs.remove(missing, force=False)):
            with pytest.raises(FileNotFoundError) as caught:
                call()
            error = caught.value
            assert isinstance(error, NotFound) and error.code == -32004
            assert error.message == "No such file or directory (os error 2)"  # the server's words, kept
            assert (error.errno, error.strerror, error.filename) == (errno.ENOENT, "No such file or directory",
                                                                     str(missing))
            assert str(error) == "[Errno 2] No such file or directory: %r" % str(missing)


def test_other_os_errors_get_their_python_class(any_server, tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    with Client.connect(any_server.url, timeout=10) as client:
        with pytest.raises(FileExistsError) as exists:
            client.fs.create_directory(tmp_path / "dir", recursive=False)
        with pytest.raises(NotADirectoryError) as not_dir:
            client.fs.read_directory(tmp_path / "file")
        with pytest.raises(FileNotFoundError) as copied:
            client.fs.copy(tmp_path / "gone", tmp_path / "dir" / "copy")
    assert isinstance(exists.value, InternalError) and exists.value.message == "File exists (os error 17)"
    assert (exists.value.errno, exists.value.filename) == (errno.EEXIST, str(tmp_path / "dir"))
    assert isinstance(not_dir.value, InternalError) and not_dir.value.errno == errno.ENOTDIR
    assert (copied.value.filename, copied.value.filename2) == (str(tmp_path / "gone"), str(tmp_path / "dir" / "copy"))
    assert str(copied.value).endswith(": %r -> %r" % (str(tmp_path / "gone"), str(tmp_path / "dir" / "copy")))
    assert not (tmp_path / "dir" / "copy").exists()


def test_a_handles_os_error_names_the_path_opened_and_an_unknown_handle_is_no_missing_file(tmp_path):
    target = tmp_path / "sub" / "app.conf"
    target.parent.mkdir()
    server = start_ours()
    try:
        with Client.connect(server.url, timeout=10) as client:
            with pytest.raises(NotFound) as unknown:
                RemoteFile(client.fs, "never-opened", "read", False, client.connection_number).read_block(0, 1)
            assert not isinstance(unknown.value, OSError)
            assert unknown.value.message == "unknown file handle `never-opened`"
            if not client.supports("atomicReplace"):
                pytest.skip("no atomicReplace")
            remote = client.fs.open(target, "replace", atomic=True)
            remote.write(b"NEW")
            for name in os.listdir(str(target.parent)):  # the directory goes away under the open handle
                os.remove(os.path.join(str(target.parent), name))
            os.rmdir(str(target.parent))
            with pytest.raises(FileNotFoundError) as caught:
                remote.close()
            assert isinstance(caught.value, NotFound) and caught.value.filename == str(target)
    finally:
        server.stop()
    assert not target.parent.exists()


@pytest.mark.parametrize("error, expected", [
    (InternalError("Is a directory (os error 21)"), IsADirectoryError),
    (InvalidRequest("Permission denied (os error 13)"), PermissionError),
    (InternalError("Read-only file system (os error 30)"), OSError),
    (RpcError("Directory not empty (os error 39)", code=-32099), OSError),
])
def test_the_errno_picks_the_class_pythons_own_would(error, expected):
    raised = as_os_error(error, "/srv/x")
    assert type(raised).__bases__ == (type(error), expected)
    assert (raised.code, raised.message, raised.filename) == (error.code, error.message, "/srv/x")
    assert os.strerror(raised.errno) == raised.strerror


@pytest.mark.parametrize("error", [
    InternalError("Symbolic link loop (os error 40)"),  # musl's words: this host's C library says otherwise
    InternalError("The system cannot find the path specified. (os error 3)"),  # a Windows server
    InternalError("Is a directory (os error 99999)"),
    InvalidRequest("path `/srv` is not a file"),
    InvalidParams("No such file or directory (os error 2)"),
    ServerOverloaded(),
])
def test_what_is_no_os_error_of_this_host_stays_as_it_was(error):
    assert as_os_error(error, "/srv/x") is error


def test_not_found_without_an_errno_is_enoent_on_a_path_only():
    on_path = as_os_error(NotFound("path not found"), b"/srv/x")
    assert isinstance(on_path, FileNotFoundError) and (on_path.errno, on_path.filename) == (errno.ENOENT, b"/srv/x")
    assert on_path.message == "path not found"
    handle = NotFound("unknown file handle `h`")
    assert as_os_error(handle, "/srv/x", missing_is_enoent=False) is handle


def test_the_errors_pickle_and_copy_whole():
    """A worker process's error reaches its parent (multiprocessing pickles it) with every field."""
    import copy
    import pickle

    one = as_os_error(NotFound("No such file or directory (os error 2)", data={"x": 1}), "/srv/x")
    two = as_os_error(InternalError("File exists (os error 17)"), "/srv/a", "/srv/b")
    for error in (one, two):
        for again in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
            assert type(again) is type(error)
            assert (again.code, again.message, again.data, again.errno, again.strerror, again.filename,
                    again.filename2, str(again)) == (error.code, error.message, error.data, error.errno,
                                                     error.strerror, error.filename, error.filename2, str(error))
    assert str(pickle.loads(pickle.dumps(one))) == "[Errno 2] No such file or directory: '/srv/x'"


@pytest.mark.parametrize("mode", ["read", "replace", "atomic"])
def test_the_error_that_ends_a_with_block_is_the_one_raised_at_once(server, proxy_to, tmp_path, mode):  # noqa: F811
    """A block of ``fs.open`` ended by a Ctrl-C while the connection was lost: its close waited out the
    recovery (25 s) and its ExecServerDisconnected replaced the KeyboardInterrupt (``cp`` then said 255
    "cannot connect: Broken pipe" for a SIGTERM).  The handle ended with its connection: no close is sent."""
    import time

    from exec_server import ReconnectPolicy

    target = tmp_path / "file"
    target.write_bytes(b"old")
    proxy = proxy_to(server.url)
    client = Client.connect(proxy.url, timeout=10, reconnect=ReconnectPolicy(deadline=25.0, connect_timeout=1.0))
    try:
        with pytest.raises(KeyboardInterrupt):
            with client.fs.open(target, "read" if mode == "read" else "replace", atomic=mode == "atomic") as f:
                if mode == "read":
                    assert f.read_block(0, 10) == (b"old", True)
                else:
                    f.write(b"new")
                proxy.refuse(True)
                proxy.cut()
                time.sleep(0.2)
                begun = time.monotonic()
                raise KeyboardInterrupt
        assert time.monotonic() - begun < 3.0  # was: 25 s, then another exception
        assert client.state == "recovering"
        assert target.read_bytes() == (b"new" if mode == "replace" else b"old")  # in place / not committed
    finally:
        client.close()


def test_a_block_that_fails_on_a_live_connection_still_closes_its_handle(server, tmp_path):
    target = tmp_path / "file"
    target.write_bytes(b"old")
    with Client.connect(server.url, timeout=10) as client:
        for atomic in (False, True):
            with pytest.raises(ValueError):
                with client.fs.open(target, "replace" if atomic else "read", atomic=atomic) as f:
                    handle = f.handle_id
                    raise ValueError("the block's own error")
            with pytest.raises(NotFound, match="unknown file handle"):  # closed on the server: not leaked
                client.call("fs/readBlock", {"handleId": handle, "offset": 0, "len": 1}, timeout=10)
        assert target.read_bytes() == b"old"  # the atomic one was discarded


def test_a_with_blocks_close_that_does_not_fit_its_wait_is_sent_later_and_a_bare_caller_will_do():
    """The close of a block that ended in an exception waits EXIT_CLOSE_TIMEOUT (it was dropped past it, the
    handle left open on the server); and a client with the Caller protocol alone (no ``state``) raised an
    AttributeError in place of the block's own exception."""
    from conftest import wait_until
    from exec_server.client.fs import EXIT_CLOSE_TIMEOUT, FileSystem
    from exec_server.client.interfaces import CallTimeout

    calls = []

    class Bare:
        def call(self, method, params=None, timeout=None):
            calls.append((method, params, timeout))
            if len(calls) == 1:  # another thread's send held the connection
                raise CallTimeout(method, timeout)
            return {}

    with pytest.raises(ValueError, match="the block's own"):
        with RemoteFile(FileSystem(Bare(), None, 30.0), "h1", "replace", atomic=True):
            raise ValueError("the block's own")
    wait_until(lambda: len(calls) == 2, timeout=10)
    params = {"handleId": "h1", "commit": False}
    assert calls == [("fs/close", params, EXIT_CLOSE_TIMEOUT), ("fs/close", params, 30.0)]
