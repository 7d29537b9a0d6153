"""Filesystem methods (PROTOCOL.md 8) on ours and the reference, through the client and raw."""

import base64
import os
import subprocess
import sys

import pytest

from exec_server import Client
from exec_server.protocol.errors import InternalError, InvalidParams, InvalidRequest, NotFound, RpcError

pytestmark = pytest.mark.posix


@pytest.fixture
def fs(any_server):
    with Client.connect(any_server.url, timeout=10) as client:
        yield client.fs


def uri(path) -> str:
    return "file://" + str(path)


def os_suffix(error: RpcError, errno_number: int) -> bool:
    return error.message.endswith("(os error %d)" % errno_number)


def test_write_read_round_trip(fs, tmp_path):
    target = tmp_path / "a.txt"
    fs.write_file(target, b"hello\n")
    assert target.read_bytes() == b"hello\n"
    assert fs.read_file(target) == b"hello\n"
    fs.write_file(target, b"")  # truncates
    assert target.read_bytes() == b""
    binary = bytes(range(256)) * 100
    fs.write_file(str(target), binary)
    assert fs.read_file(uri(target)) == binary


def test_read_errors(fs, tmp_path):
    with pytest.raises(NotFound) as caught:
        fs.read_file(tmp_path / "missing")
    assert caught.value.message == "No such file or directory (os error 2)"
    with pytest.raises(InvalidRequest) as caught:
        fs.read_file(tmp_path)
    assert caught.value.message == "path `%s` is not a file" % tmp_path
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(NotFound):
        fs.read_file(tmp_path / "link")
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "good").symlink_to(tmp_path / "real")
    assert fs.read_file(tmp_path / "good") == b"x"
    with pytest.raises(InternalError) as caught:
        fs.read_file(tmp_path / "good", follow_symlinks=False)
    assert os_suffix(caught.value, 40)


def test_write_errors_leave_disk_untouched(fs, tmp_path):
    with pytest.raises(NotFound):
        fs.write_file(tmp_path / "no" / "parent.txt", b"x")
    with pytest.raises(InternalError) as caught:
        fs.write_file(tmp_path, b"x")
    assert caught.value.message == "Is a directory (os error 21)"
    with pytest.raises(InvalidRequest) as caught:
        fs._call("fs/writeFile", {"path": uri(tmp_path / "b.txt"), "dataBase64": "!"})
    assert caught.value.message == "fs/writeFile requires valid base64 dataBase64: Invalid symbol 33, offset 0."
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("path, error, message", [
    ("/tmp/x", InvalidParams, "invalid URI: relative URL without a base"),
    ("a.txt", InvalidParams, "invalid URI: relative URL without a base"),
    ("http://host/x", InvalidParams, "unsupported path URI scheme `http`"),
    ("file://host/tmp/x", InvalidRequest, "'file://host/tmp/x' is invalid on 'linux'"),
    # a query or a fragment, even empty, was dropped and the path read (the reference refuses them)
    ("file:///etc/hostname?x=1", InvalidParams, "query parameters are not allowed in path URIs"),
    ("file:///etc/hostname?", InvalidParams, "query parameters are not allowed in path URIs"),
    ("file:///etc/hostname?x#f", InvalidParams, "query parameters are not allowed in path URIs"),
    ("file://host/etc/hostname?x", InvalidParams, "query parameters are not allowed in path URIs"),
    ("file:///etc/hostname#f", InvalidParams, "fragments are not allowed in path URIs"),
    ("file:///etc/hostname#", InvalidParams, "fragments are not allowed in path URIs"),
    ("file:///etc/hostname#f?x", InvalidParams, "fragments are not allowed in path URIs"),
])
def test_path_uri_errors(fs, path, error, message):
    with pytest.raises(error) as caught:
        fs._call("fs/readFile", {"path": path})
    assert caught.value.message == message


def test_missing_path_member(fs):
    with pytest.raises(InvalidParams) as caught:
        fs._call("fs/readFile", {})
    assert caught.value.message == "missing field `path`"


def test_create_directory(fs, tmp_path):
    nested = tmp_path / "a" / "b" / "c"
    fs.create_directory(nested)
    assert nested.is_dir()
    fs.create_directory(nested)  # exists: fine when recursive
    with pytest.raises(InternalError) as caught:
        fs.create_directory(nested, recursive=False)
    assert caught.value.message == "File exists (os error 17)"
    with pytest.raises(NotFound):
        fs.create_directory(tmp_path / "x" / "y", recursive=False)


def test_recursive_create_directory_races_with_other_creators(tmp_path):
    """Like ``mkdir -p``: a directory another creator made meanwhile is no error; a file there is."""
    import threading

    from fs_helper import confined, operations, safe_path
    from fs_helper.policy import Policy
    from fs_helper.uris import path_to_uri

    policy = Policy([["/", "read"], [str(tmp_path), "write"]])
    creators = [operations.create_directory]
    if safe_path.unsupported_reason() is None:
        creators.append(lambda params: confined.create_directory(params, policy))
    for creator in creators:
        for attempt in range(20):
            target = tmp_path / ("race-%d-%d" % (id(creator), attempt)) / "a" / "b"
            barrier, errors = threading.Barrier(4), []

            def create():
                barrier.wait(5)
                try:
                    creator({"path": path_to_uri(str(target))})
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)

            threads = [threading.Thread(target=create) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            assert errors == [] and target.is_dir()
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(Exception, match="File exists"):
        operations.create_directory({"path": path_to_uri(str(tmp_path / "file"))})


def test_get_metadata(fs, tmp_path):
    target = tmp_path / "f.txt"
    target.write_bytes(b"123456")
    meta = fs.get_metadata(target)
    assert (meta["isFile"], meta["isDirectory"], meta["isSymlink"], meta["size"]) == (True, False, False, 6)
    assert abs(meta["modifiedAtMs"] - int(os.stat(target).st_mtime * 1000)) <= 1
    (tmp_path / "l").symlink_to(target)
    linked = fs.get_metadata(tmp_path / "l")
    assert (linked["isFile"], linked["isSymlink"], linked["size"]) == (True, True, 6)
    with pytest.raises(InvalidRequest) as caught:
        fs.get_metadata(tmp_path / "l", follow_symlinks=False)
    assert caught.value.message == "path contains a symbolic link"
    with pytest.raises(NotFound):
        fs.get_metadata(tmp_path / "missing")
    assert fs.get_metadata(tmp_path)["isDirectory"] is True


def test_canonicalize(fs, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "d")
    assert fs.canonicalize(uri(tmp_path) + "/link/../d/a.txt") == uri(os.path.realpath(tmp_path / "d" / "a.txt"))
    assert fs.canonicalize(uri(tmp_path / "link")) == uri(os.path.realpath(tmp_path / "d"))
    with pytest.raises(NotFound):
        fs.canonicalize(tmp_path / "missing")


def test_read_directory(fs, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "f").write_bytes(b"")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "dirlink").symlink_to(tmp_path / "sub")
    entries = sorted(fs.read_directory(tmp_path), key=lambda e: e["fileName"])
    assert entries == [
        {"fileName": "dirlink", "isDirectory": True, "isFile": False},
        {"fileName": "f", "isDirectory": False, "isFile": True},
        {"fileName": "sub", "isDirectory": True, "isFile": False},
    ]
    with pytest.raises(InternalError) as caught:
        fs.read_directory(tmp_path / "f")
    assert caught.value.message == "Not a directory (os error 20)"
    with pytest.raises(NotFound):
        fs.read_directory(tmp_path / "missing")


def make_tree(root):
    (root / "a").mkdir()
    (root / "a" / "b").mkdir()
    (root / "a" / "b" / "deep.txt").write_bytes(b"")
    (root / "a" / "one.txt").write_bytes(b"")
    (root / "z.txt").write_bytes(b"")
    (root / "link").symlink_to(root / "a")


def walk_paths(result, root):
    return [(e["path"][len(uri(root)):], e["kind"]) for e in result["entries"]]


def test_walk(fs, tmp_path):
    make_tree(tmp_path)
    result = fs.walk(tmp_path, max_depth=5, max_directories=100, max_entries=100)
    assert walk_paths(result, tmp_path) == [("/a", "directory"), ("/z.txt", "file"), ("/a/b", "directory"),
                                            ("/a/one.txt", "file"), ("/a/b/deep.txt", "file")]
    assert result["errors"] == [] and result["truncated"] is False
    shallow = fs.walk(tmp_path, max_depth=0, max_directories=100, max_entries=100)
    assert walk_paths(shallow, tmp_path) == [("/a", "directory"), ("/z.txt", "file")]
    limited = fs.walk(tmp_path, max_depth=5, max_directories=100, max_entries=2)
    # a, link (examined and skipped): the limit is reached before z.txt
    assert limited["truncated"] is True and walk_paths(limited, tmp_path) == [("/a", "directory")]
    followed = fs.walk(tmp_path, max_depth=0, max_directories=100, max_entries=100, follow_directory_symlinks=True)
    assert ("/link", "directory") in walk_paths(followed, tmp_path)
    assert fs.walk(tmp_path / "z.txt") == {"entries": [], "errors": [], "truncated": False}
    with pytest.raises(NotFound):
        fs.walk(tmp_path / "missing")


WALK_MAXIMUMS = "filesystem walk limits exceed maximums: depth=64, directories=10000, entries=50000"


@pytest.mark.parametrize("options, message", [
    ({"maxDepth": 65, "maxDirectories": 1, "maxEntries": 1}, WALK_MAXIMUMS),
    ({"maxDepth": 1, "maxDirectories": 10001, "maxEntries": 1}, WALK_MAXIMUMS),
    ({"maxDepth": 1, "maxDirectories": 0, "maxEntries": 1}, "filesystem walk limits must be greater than zero"),
    ({"maxDepth": 1, "maxDirectories": 1, "maxEntries": 0}, "filesystem walk limits must be greater than zero"),
])
def test_walk_limits(fs, options, message):
    with pytest.raises(InvalidRequest) as caught:
        fs._call("fs/walk", {"path": "file:///no/such", "options": dict(options, followDirectorySymlinks=False)})
    assert caught.value.message == message


def test_remove(fs, tmp_path):
    fs.remove(tmp_path / "missing")  # force by default
    with pytest.raises(NotFound):
        fs.remove(tmp_path / "missing", force=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"")
    with pytest.raises(InternalError) as caught:
        fs.remove(tmp_path / "d", recursive=False)
    assert caught.value.message == "Directory not empty (os error 39)"
    fs.remove(tmp_path / "d")
    assert not (tmp_path / "d").exists()
    (tmp_path / "e").mkdir()
    fs.remove(tmp_path / "e", recursive=False)
    assert not (tmp_path / "e").exists()


@pytest.fixture
def descriptors():
    """``descriptors(n)``: this process may open at least ``n`` files until the test ends (skips if it cannot)."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def at_least(count):
        if soft != resource.RLIM_INFINITY and soft < count:
            if hard != resource.RLIM_INFINITY and hard < count:
                pytest.skip("the descriptor limit is %d" % hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))

    yield at_least
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_tree_deeper_than_pythons_recursion_limit_is_created_and_removed(server, tmp_path, descriptors):
    """1,200 levels (a RecursionError in os.makedirs and shutil.rmtree: -32603 and a traceback); the removal
    holds a descriptor per level, as shutil.rmtree did."""
    descriptors(2048)
    deep = tmp_path / "deep"
    leaf = deep.joinpath(*["d"] * 1200)
    try:
        with Client.connect(server.url, timeout=10) as client:
            client.fs.create_directory(leaf)
            assert leaf.is_dir()
            (leaf / "f").write_bytes(b"x")
            client.fs.remove(deep)
        assert not os.path.lexists(str(deep))
    finally:  # pytest's own cleanup recurses: a tree left by a failure would break every later run's
        subprocess.run(["rm", "-rf", str(deep)], timeout=60)


def test_create_directory_under_a_file_is_not_a_directory(fs, tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(RpcError) as caught:
        fs.create_directory(tmp_path / "file" / "sub" / "deeper")
    assert (caught.value.code, caught.value.message) == (-32603, "Not a directory (os error 20)")
    with pytest.raises(RpcError) as caught:
        fs.create_directory(tmp_path / "file")
    assert (caught.value.code, caught.value.message) == (-32603, "File exists (os error 17)")


def test_a_wide_tree_is_removed_with_few_descriptors(tmp_path):
    """400 subdirectories under a limit of 64 descriptors: one is open per level, not one per subdirectory."""
    wide = tmp_path / "wide"
    for number in range(400):
        (wide / str(number)).mkdir(parents=True)
        (wide / str(number) / "f").write_bytes(b"x")
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
            "from fs_helper import operations\n"
            "operations.remove({'path': sys.argv[1]})\n")
    done = subprocess.run([sys.executable, "-c", code, uri(wide)], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert not os.path.lexists(str(wide))


def test_copy(fs, tmp_path):
    (tmp_path / "src.txt").write_bytes(b"data")
    (tmp_path / "dst.txt").write_bytes(b"old")
    fs.copy(tmp_path / "src.txt", tmp_path / "dst.txt")
    assert (tmp_path / "dst.txt").read_bytes() == b"data"
    (tmp_path / "dir").mkdir()
    with pytest.raises(InternalError) as caught:
        fs.copy(tmp_path / "src.txt", tmp_path / "dir")
    assert caught.value.message == "Is a directory (os error 21)"
    (tmp_path / "dir" / "inner.txt").write_bytes(b"in")
    with pytest.raises(InvalidRequest) as caught:
        fs.copy(tmp_path / "dir", tmp_path / "dir2")
    assert caught.value.message == "fs/copy requires recursive: true when sourcePath is a directory"
    (tmp_path / "dir2").mkdir()
    (tmp_path / "dir2" / "keep.txt").write_bytes(b"k")
    fs.copy(tmp_path / "dir", tmp_path / "dir2", recursive=True)  # merges
    assert sorted(os.listdir(tmp_path / "dir2")) == ["inner.txt", "keep.txt"]
    with pytest.raises(NotFound):
        fs.copy(tmp_path / "missing", tmp_path / "x")


def test_file_handles(fs, tmp_path):
    target = tmp_path / "big.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    with fs.open(target, "replace") as handle:
        handle.write(payload)
        # in place on the reference; ours writes a temporary file, renamed over the target at close
        assert target.exists() is (not handle.atomic)
    assert target.stat().st_size == len(payload)
    with fs.open(target) as handle:
        assert handle.read() == payload
        data, eof = handle.read_block(len(payload), 10)
        assert (data, eof) == (b"", True)
    with pytest.raises(NotFound) as caught:
        fs._call("fs/readBlock", {"handleId": "nope", "offset": 0, "len": 1})
    assert caught.value.message == "unknown file handle `nope`"
    assert fs._call("fs/close", {"handleId": "nope"}) == {}


def test_file_handle_errors(fs, tmp_path, any_server):
    (tmp_path / "f").write_bytes(b"12345")
    fs._call("fs/open", {"handleId": "h1", "path": uri(tmp_path / "f")})
    with pytest.raises(InvalidRequest) as caught:
        fs._call("fs/open", {"handleId": "h1", "path": uri(tmp_path / "f")})
    assert caught.value.message == "file handle `h1` already exists"
    with pytest.raises(InvalidRequest) as caught:
        fs._call("fs/readBlock", {"handleId": "h1", "offset": 0, "len": 0})
    assert caught.value.message == "file read block length must be between 1 and 1048576"
    with pytest.raises(InvalidRequest):
        fs._call("fs/open", {"handleId": "h2", "path": uri(tmp_path)})
    with pytest.raises(NotFound):
        fs._call("fs/open", {"handleId": "h3", "path": uri(tmp_path / "missing")})
    result = fs._call("fs/readBlock", {"handleId": "h1", "offset": 1, "len": 3})
    assert base64.b64decode(result["chunk"]) == b"234" and result["eof"] is False
    if not any_server.is_reference:
        with pytest.raises(InvalidRequest) as caught:
            fs._call("fs/writeBlock", {"handleId": "h1", "offset": 0, "chunk": "eA=="})
        assert caught.value.message == "file handle `h1` is not open for write"
        with pytest.raises(InvalidRequest) as caught:
            fs._call("fs/open", {"handleId": "", "path": uri(tmp_path / "f")})
        assert caught.value.message == "file handle id cannot be empty"
    with pytest.raises(InvalidRequest) as caught:
        fs._call("fs/open", {"handleId": "x" * 33, "path": uri(tmp_path / "f")})
    assert caught.value.message == "file handle ID must not exceed 32 bytes"
    fs._call("fs/close", {"handleId": "h1"})
    with pytest.raises(NotFound):
        fs._call("fs/readBlock", {"handleId": "h1", "offset": 0, "len": 1})


@pytest.mark.parametrize("handle", ["w", "unknown"])
def test_write_block_length_is_checked_first(fs, tmp_path, handle):
    """An empty or over-1-MiB block is -32600 before the handle is even looked up (the reference's order)."""
    fs._call("fs/open", {"handleId": "w", "path": uri(tmp_path / "out"), "mode": "replace"})
    for data in (b"", b"x" * (1024 * 1024 + 1)):
        with pytest.raises(InvalidRequest) as caught:
            fs._call("fs/writeBlock", {"handleId": handle, "offset": 0, "chunk": base64.b64encode(data).decode()})
        assert caught.value.message == "file write block length must be between 1 and 1048576"
    fs._call("fs/writeBlock", {"handleId": "w", "offset": 0, "chunk": base64.b64encode(b"x" * 1024 * 1024).decode()})
    assert (tmp_path / "out").stat().st_size == 1024 * 1024
    assert fs._call("fs/close", {"handleId": "w"}) == {}


@pytest.mark.parametrize("chunk, message", [
    ("AB==", "Invalid last symbol 66, offset 1."),  # trailing bits set: not canonical
    ("A", "Invalid input length: 1"),
    ("AAAA=", "Invalid symbol 61, offset 4."),
    ("aGVsbG8=\n", "Invalid symbol 10, offset 8."),
])
def test_malformed_base64_texts(fs, tmp_path, chunk, message):
    fs._call("fs/open", {"handleId": "w", "path": uri(tmp_path / "out"), "mode": "replace"})
    with pytest.raises(InvalidParams) as caught:
        fs._call("fs/writeBlock", {"handleId": "w", "offset": 0, "chunk": chunk})
    assert caught.value.message == message
    with pytest.raises(InvalidRequest) as caught:
        fs._call("fs/writeFile", {"path": uri(tmp_path / "whole"), "dataBase64": chunk})
    assert caught.value.message == "fs/writeFile requires valid base64 dataBase64: " + message
    assert (tmp_path / "out").read_bytes() == b"" and not (tmp_path / "whole").exists()


def test_handshake_family(any_server, connect):
    peer = connect(any_server.url)
    reply = peer.request("fs/readFile", {"path": "file:///etc/hostname"})
    assert reply["error"] == {"code": -32600, "message": "client must call initialize before using filesystem methods"}


def test_read_file_failing_in_the_read_is_an_os_error_not_a_defect(server, caplog):
    """EIO and EINVAL from read() itself (a failing disk, a special file): the OS error text, no traceback."""
    with Client.connect(server.url, timeout=5) as client:
        for path, text in (("/proc/self/mem", "Input/output error (os error 5)"),
                           ("/proc/self/clear_refs", None)):
            if not os.path.exists(path) or (text is None and not os.access(path, os.W_OK)):
                continue
            with pytest.raises(RpcError) as caught:
                client.fs.read_file(path)
            assert caught.value.message.endswith("(os error %d)" % (5 if text else 22)), caught.value.message
    assert "Traceback" not in caplog.text and "failed" not in caplog.text


def _unreadable_file(tmp_path):
    """A file this process cannot open for reading, even as root (a write-only sysfs attribute), or None."""
    if os.geteuid() != 0:
        path = tmp_path / "secret.txt"
        path.write_bytes(b"secret")
        path.chmod(0)
        return path
    for root, _dirs, files in os.walk("/sys/kernel/mm"):
        for name in files:
            path = os.path.join(root, name)
            if os.stat(path).st_mode & 0o777 == 0o200:
                return path
    return None


@pytest.mark.parametrize("into", ["itself", "child", "grandchild", "through-a-link"])
def test_copy_into_its_own_tree_is_refused_before_writing(fs, tmp_path, into):
    """A copy into itself would copy its own copies until the path is too long or the disk full."""
    source = tmp_path / "a"
    (source / "b").mkdir(parents=True)
    (source / "b" / "f").write_bytes(b"x" * 1000)
    (tmp_path / "link").symlink_to(source / "b")
    destination = {"itself": source, "child": source / "c", "grandchild": source / "b" / "c",
                   "through-a-link": tmp_path / "link" / "c"}[into]
    with pytest.raises(InvalidRequest) as caught:
        fs.copy(source, destination, recursive=True)
    assert caught.value.message == "fs/copy cannot copy a directory to itself or one of its descendants"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in source.rglob("*")) == ["a/b", "a/b/f"]
    fs.copy(source, tmp_path / "a2", recursive=True)  # a sibling whose name starts the same is fine
    assert (tmp_path / "a2" / "b" / "f").read_bytes() == b"x" * 1000


def test_recursive_copy_errors_are_os_errors(server, tmp_path):
    """A file of the tree that cannot be written: the reference's text and code at the first failure, not a
    list of Python errors after trying the rest."""
    source, destination = tmp_path / "src", tmp_path / "dst"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file").write_bytes(b"x")
    (destination / "sub" / "file").mkdir(parents=True)  # where the tree has a file
    (destination / "sub" / "file" / "inside").write_bytes(b"y")
    with Client.connect(server.url, timeout=5) as client:
        with pytest.raises(InternalError) as caught:
            client.fs.copy(source, destination, recursive=True)
    assert caught.value.message == "Is a directory (os error 21)"
    assert isinstance(caught.value, IsADirectoryError)
    assert (caught.value.filename, caught.value.filename2) == (str(source), str(destination))


@pytest.mark.posix
@pytest.mark.posix
def test_the_copy_of_a_read_only_tree_can_be_written_and_removed(any_server, tmp_path):
    """As on the reference: the directories a copy makes are writable by their owner, whatever the source's
    bits, so a client can write into the copy of a read-only tree and remove it (``cp -r`` would keep 0555)."""
    source = tmp_path / "src"
    (source / "ro").mkdir(parents=True)
    (source / "ro" / "f").write_bytes(b"f")
    os.chmod(str(source / "ro"), 0o555)
    os.chmod(str(source), 0o555)
    try:
        with Client.connect(any_server.url, timeout=10) as client:
            client.fs.copy(source, tmp_path / "dst", recursive=True)
            client.fs.write_file(tmp_path / "dst" / "ro" / "new", b"written")
            assert (tmp_path / "dst" / "ro" / "new").read_bytes() == b"written"
            assert os.stat(str(tmp_path / "dst" / "ro")).st_mode & 0o700 == 0o700
            client.fs.remove(tmp_path / "dst", recursive=True)
        assert not (tmp_path / "dst").exists()
    finally:
        os.chmod(str(source), 0o755)
        os.chmod(str(source / "ro"), 0o755)


def test_a_recursive_copy_copies_links_as_links_and_skips_fifos(any_server, tmp_path):
    """As the reference: two links to "." were followed until the disk was full, a dangling one failed the
    copy half-way, and a FIFO blocked it for good.  Copied again onto the copy, ours merges (PROTOCOL.md
    8.3) and replaces the links, as its sandboxed copy does; the reference stops at the first one."""
    source, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    source.mkdir()
    elsewhere.mkdir()
    (elsewhere / "f").write_bytes(b"far")
    (source / "file").write_bytes(b"near")
    for name, target in [("a", "."), ("b", "."), ("to-dir", elsewhere), ("to-file", elsewhere / "f"),
                         ("dangling", tmp_path / "missing")]:
        (source / name).symlink_to(target)
    os.mkfifo(str(source / "fifo"))
    with Client.connect(any_server.url, timeout=10) as client:
        client.fs.copy(source, tmp_path / "dst", recursive=True)
        if any_server.is_reference:
            with pytest.raises(InternalError) as caught:
                client.fs.copy(source, tmp_path / "dst", recursive=True)
            assert caught.value.message == "File exists (os error 17)"
            assert isinstance(caught.value, FileExistsError)
        else:
            client.fs.copy(source, tmp_path / "dst", recursive=True)
    copied = tmp_path / "dst"
    assert sorted(os.listdir(copied)) == ["a", "b", "dangling", "file", "to-dir", "to-file"]
    assert {name: os.readlink(copied / name) for name in ["a", "b", "to-dir", "to-file", "dangling"]} == {
        "a": ".", "b": ".", "to-dir": str(elsewhere), "to-file": str(elsewhere / "f"),
        "dangling": str(tmp_path / "missing")}
    assert (copied / "file").read_bytes() == b"near"


@pytest.mark.posix
@pytest.mark.parametrize("method, params", [
    ("fs/readFile", {"path": "{fifo}"}),
    ("fs/copy", {"sourcePath": "{fifo}", "destinationPath": "{dir}/copy", "recursive": False}),
    ("fs/open", {"handleId": "r", "path": "{fifo}"}),
    ("fs/open", {"handleId": "w", "path": "{fifo}", "mode": "replace"}),  # no reader: ENXIO, named
    ("fs/open", {"handleId": "a", "path": "{fifo}", "mode": "replace", "atomic": True}),
])
def test_a_fifo_is_refused_as_it_is_opened(server, tmp_path, method, params):
    """Judged on the opened descriptor (a path checked first could be swapped for a FIFO before the open,
    which then waited for a writer for good), and named in every mode."""
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    wire = {name: value.format(fifo=uri(fifo), dir=uri(tmp_path)) if isinstance(value, str) else value
            for name, value in params.items()}
    with Client.connect(server.url, timeout=5) as client:
        with pytest.raises(InvalidRequest) as caught:
            client.call(method, wire, timeout=5)
    assert caught.value.message == "path `%s` is a FIFO, not a regular file" % fifo


@pytest.mark.posix
def test_open_file_refuses_what_it_opened_without_waiting(tmp_path):
    from fs_helper.opening import SpecialFile, open_file

    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    with pytest.raises(SpecialFile, match="is a FIFO"):
        open_file(str(fifo), os.O_RDONLY)  # a blocking open would wait here (pytest-timeout ends it)
    with pytest.raises(SpecialFile, match="path `/dev/null` is a character device, not a regular file"):
        open_file("/dev/null", os.O_RDONLY)
    regular = tmp_path / "file"
    regular.write_bytes(b"data")
    fd = open_file(str(regular), os.O_RDONLY)
    try:
        assert os.read(fd, 10) == b"data"
    finally:
        os.close(fd)


@pytest.mark.posix
def test_a_file_name_that_is_not_utf8_is_listed_with_replacement_characters(fs, tmp_path):
    """As the reference (Rust's lossy conversion): it came back as ``??.txt``."""
    folder = tmp_path / "names"
    folder.mkdir()
    with open(os.path.join(os.fsencode(str(folder)), b"\xff\xfe.txt"), "wb"):
        pass
    assert [entry["fileName"] for entry in fs.read_directory(folder)] == ["\ufffd\ufffd.txt"]


@pytest.mark.posix
def test_reads_of_a_file_opened_not_to_wait_raise_eagain_not_return_none():
    """A buffered read of a non-blocking descriptor with nothing to read returns None: a readFile became an
    internal error and a copy a truncated file.  The reads used say EAGAIN, as the reference answers."""
    import errno
    import io

    from fs_helper.opening import copy_blocks, read_to_end

    reader, writer = os.pipe()
    try:
        os.set_blocking(reader, False)
        os.write(writer, b"some")
        with pytest.raises(BlockingIOError) as caught:
            read_to_end(reader, 100)
        assert caught.value.errno == errno.EAGAIN
        os.write(writer, b"more")
        sink = io.BytesIO()
        with pytest.raises(BlockingIOError):
            copy_blocks(reader, sink)
        assert sink.getvalue() == b"more"
        os.close(writer)
        writer = -1
        assert read_to_end(reader, 100) == b""
    finally:
        os.close(reader)
        if writer >= 0:
            os.close(writer)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mknod of a block device needs root")
def test_a_block_device_is_refused_and_skipped_in_a_copied_tree(server, tmp_path):
    """It was read as a file (a whole disk) and copied as a regular file."""
    import stat

    source = tmp_path / "src"
    source.mkdir()
    (source / "file").write_bytes(b"x")
    os.mknod(str(source / "disk"), stat.S_IFBLK | 0o600, os.makedev(7, 0))
    with Client.connect(server.url, timeout=5) as client:
        with pytest.raises(InvalidRequest, match="is a block device, not a regular file"):
            client.fs.read_file(source / "disk")
        client.fs.copy(source, tmp_path / "dst", recursive=True)
    assert os.listdir(tmp_path / "dst") == ["file"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux inode flags (chattr)")
def test_writes_in_an_append_only_directory_go_in_place_and_leave_no_temporary_file(server, tmp_path):
    """``chattr +a``: a temporary file there could be neither renamed nor removed, so none is made (each write
    failed with EPERM and left one behind); the writes go in place, as ``open(path, "w")`` does."""
    folder = tmp_path / "append-only"
    folder.mkdir()
    (folder / "x").write_bytes(b"old")
    if subprocess.run(["chattr", "+a", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +a needs root and a file system with inode flags")
    try:
        with Client.connect(server.url, timeout=10) as client:
            client.fs.write_file(str(folder / "x"), b"new")
            client.fs.write_file(str(folder / "y"), b"made")
            client.fs.copy(str(folder / "x"), str(folder / "z"))
            with client.fs.open(str(folder / "w"), "replace") as handle:
                handle.write(b"streamed")
            confined = client.fs.with_sandbox({
                "permissions": {"type": "managed", "network": "enabled", "file_system": {"type": "restricted",
                                "entries": [{"path": {"type": "path", "path": "file:///"}, "access": "read"},
                                            {"path": {"type": "path", "path": "file://%s" % folder},
                                             "access": "write"}]}},
                "windowsSandboxLevel": "disabled"})
            confined.write_file(str(folder / "s"), b"sandboxed")
        assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == {
            "x": b"new", "y": b"made", "z": b"new", "w": b"streamed", "s": b"sandboxed"}
    finally:
        subprocess.run(["chattr", "-a", str(folder)], capture_output=True)
