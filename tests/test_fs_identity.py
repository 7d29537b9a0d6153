"""fs/writeFile and fs/copy change a file's content, never what the file is.

A write renamed into place would turn a FIFO or a device into a regular
file, split a hard link, replace a symlink and give root's file to
another owner; there the write goes in place, as the reference's does
(a FIFO, device or socket is refused).  Checked unsandboxed, confined by
descriptors (no bubblewrap) and in bubblewrap, and on the reference where
both agree; ``exec-server cp`` downloads follow the same rules locally.
"""

import os
import shutil
import stat
import threading

import pytest

from conftest import sandbox_writing
from exec_server import Client, InvalidRequest
from exec_server.cli import cp
from fs_helper.uris import path_to_uri

pytestmark = pytest.mark.posix

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(params=["plain", "confined", "bwrap"])
def fs(request, server, tmp_path, monkeypatch):
    """Our file system API: unsandboxed, sandboxed without bubblewrap (descriptors), sandboxed in bubblewrap.

    ``fs.sandboxed`` tells the last two: a sandbox replaces a file with other hard links (written through,
    a link to a file it may not write would change that file: ``tests/test_sandbox.py``).
    """
    if request.param == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    if request.param == "confined":
        empty = tmp_path / "empty-bin"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))  # the server looks for bwrap on PATH at each request
    with Client.connect(server.url, timeout=10) as client:
        files = client.fs if request.param == "plain" else client.fs.with_sandbox(sandbox_writing(tmp_path))
        files.sandboxed = request.param != "plain"
        yield files


@pytest.fixture
def any_fs(any_server):
    with Client.connect(any_server.url, timeout=10) as client:
        yield client.fs


def write_or_copy(fs, how, target, data, tmp_path):
    if how == "writeFile":
        fs.write_file(str(target), data)
    else:
        source = tmp_path / "source-of-copy"
        source.write_bytes(data)
        fs.copy(str(source), str(target), recursive=False)


@pytest.mark.parametrize("how", ["writeFile", "copy"])
def test_a_hard_link_changes_under_both_names(any_fs, tmp_path, how):
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"old")
    os.link(str(first), str(second))
    inode = first.stat().st_ino
    write_or_copy(any_fs, how, first, b"new", tmp_path)
    assert (first.read_bytes(), second.read_bytes()) == (b"new", b"new")
    assert first.stat().st_ino == inode and first.stat().st_nlink == 2


@pytest.mark.parametrize("how", ["writeFile", "copy"])
def test_a_symlink_stays_and_its_target_is_written(any_fs, tmp_path, how):
    target, link = tmp_path / "target", tmp_path / "link"
    target.write_bytes(b"old")
    os.symlink("target", str(link))
    write_or_copy(any_fs, how, link, b"new", tmp_path)
    assert link.is_symlink() and os.readlink(str(link)) == "target"
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("how", ["writeFile", "copy"])
def test_hard_links_symlinks_and_long_names_in_every_mode(fs, tmp_path, how):
    first, second, link = tmp_path / "first", tmp_path / "second", tmp_path / "link"
    first.write_bytes(b"old")
    os.link(str(first), str(second))
    os.symlink("first", str(link))
    write_or_copy(fs, how, link, b"new", tmp_path)
    assert link.is_symlink() and first.read_bytes() == b"new"
    assert second.read_bytes() == (b"old" if fs.sandboxed else b"new")
    long_name = tmp_path / ("n" * 255)  # the longest name there is: its temporary file's must fit too
    write_or_copy(fs, how, long_name, b"long", tmp_path)
    long_name.chmod(0o640)
    write_or_copy(fs, how, long_name, b"longer", tmp_path)
    assert long_name.read_bytes() == b"longer"
    assert sorted(os.listdir(str(tmp_path))) == sorted(
        ["first", "second", "link", "n" * 255] + (["source-of-copy"] if how == "copy" else [])
        + ["empty-bin"] * os.path.isdir(str(tmp_path / "empty-bin")))  # no temporary file left


@pytest.mark.parametrize("how", ["writeFile", "copy"])
def test_a_fifo_is_refused_and_stays_a_fifo(fs, tmp_path, how):
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    with pytest.raises(InvalidRequest, match="is a FIFO, not a regular file"):
        write_or_copy(fs, how, fifo, b"data", tmp_path)
    assert stat.S_ISFIFO(os.lstat(str(fifo)).st_mode)


@pytest.mark.skipif(not ROOT, reason="a device node and another owner need root")
@pytest.mark.parametrize("how", ["writeFile", "copy"])
def test_root_keeps_a_device_and_another_owners_file(fs, tmp_path, how):
    device = tmp_path / "null"
    os.mknod(str(device), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(InvalidRequest, match="is a character device, not a regular file"):
        write_or_copy(fs, how, device, b"data", tmp_path)
    assert stat.S_ISCHR(os.lstat(str(device)).st_mode)
    owned = tmp_path / "owned"
    owned.write_bytes(b"old")
    os.chown(str(owned), 1234, 4321)
    owned.chmod(0o640)
    write_or_copy(fs, how, owned, b"new", tmp_path)
    info = owned.stat()
    assert (owned.read_bytes(), info.st_uid, info.st_gid) == (b"new", 1234, 4321)
    if how == "writeFile":  # a copy gives the source's permission bits, as the reference's
        assert stat.S_IMODE(info.st_mode) == 0o640


def test_cp_download_keeps_the_local_files_mode_links_and_kind(server, tmp_path):
    remote = tmp_path / "remote.txt"
    remote.write_bytes(b"fresh")
    key = tmp_path / "key"
    key.write_bytes(b"secret")
    key.chmod(0o600)
    target, link = tmp_path / "target", tmp_path / "link"
    target.write_bytes(b"old")
    os.symlink("target", str(link))
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    with Client.connect(server.url, timeout=10) as client:
        for local in (key, link, fifo):
            assert cp.download(client.fs, str(remote), str(local)) == 5
    reader.join(timeout=10)
    assert key.read_bytes() == b"fresh" and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert link.is_symlink() and target.read_bytes() == b"fresh"
    assert stat.S_ISFIFO(os.lstat(str(fifo)).st_mode) and received == [b"fresh"]


def fake_stat(mode, links=1, uid=0, gid=0):
    return os.stat_result((mode, 1, 1, links, uid, gid, 0, 0, 0, 0))


def test_the_plan_of_a_whole_file_write(monkeypatch):
    """Which files are renamed over and which written in place, as a non-root process (uid 1000) sees them."""
    from fs_helper.replacing import Plan, plan

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getegid", lambda: 1000)
    monkeypatch.setattr(os, "getgroups", lambda: [1000])
    mine, theirs = fake_stat(stat.S_IFREG | 0o644, uid=1000, gid=1000), fake_stat(stat.S_IFREG | 0o666)
    linked_theirs = fake_stat(stat.S_IFREG | 0o666, links=2)
    assert plan(None, True) == Plan(True, False, None)
    assert plan(mine, True) == Plan(True, False, (1000, 1000))
    assert plan(mine, False) == Plan(False, False, None)  # not writable: in place, EACCES as the reference
    assert plan(theirs, True) == Plan(False, False, None)  # an owner it cannot give: in place
    assert plan(linked_theirs, True) == Plan(False, False, None)
    assert plan(fake_stat(stat.S_IFIFO | 0o666), True) == Plan(False, False, None)  # in place: refused there
    # a sandbox never writes through a link, whatever it loses of the owner
    assert plan(linked_theirs, True, split_links=True) == Plan(True, True, None)
    mine_linked = fake_stat(stat.S_IFREG | 0o644, 3, 1000, 1000)
    assert plan(mine_linked, True, split_links=True) == Plan(True, True, (1000, 1000))
    assert plan(fake_stat(stat.S_IFLNK | 0o777), True, split_links=True) == Plan(True, True, None)
    assert plan(theirs, True, split_links=True) == Plan(False, False, None)  # one name: in place is safe


def test_a_non_root_sandbox_does_not_write_through_a_hard_link_it_cannot_keep(tmp_path, monkeypatch):
    """Confined by descriptors, as uid 1000 would: the link to a root file outside is split, not written."""
    from fs_helper import confined
    from fs_helper.policy import Policy

    outside, sandbox = tmp_path / "outside", tmp_path / "sandbox"
    outside.mkdir()
    sandbox.mkdir()
    (outside / "secret.txt").write_bytes(b"original")
    (outside / "secret.txt").chmod(0o666)
    os.link(str(outside / "secret.txt"), str(sandbox / "link"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getegid", lambda: 1000)
    monkeypatch.setattr(os, "getgroups", lambda: [1000])
    policy = Policy([["/", "read"], [str(sandbox), "write"]])
    confined.write_file({"path": path_to_uri(str(sandbox / "link")), "dataBase64": "bmV3"}, policy)
    assert (outside / "secret.txt").read_bytes() == b"original"
    assert (sandbox / "link").read_bytes() == b"new" and (sandbox / "link").stat().st_nlink == 1


@pytest.mark.parametrize("name", ["itself", "hard link", "symlink"])
def test_a_file_copied_onto_itself_is_refused_and_kept(fs, tmp_path, name):
    """By any name, as ``cp`` refuses: the copy truncated the source before reading it (the reference's
    copy empties it)."""
    source = tmp_path / "a"
    source.write_bytes(b"precious")
    target = {"itself": source, "hard link": tmp_path / "b", "symlink": tmp_path / "c"}[name]
    if name == "hard link":
        os.link(str(source), str(target))
    elif name == "symlink":
        target.symlink_to(source)
    with pytest.raises(InvalidRequest) as caught:
        fs.copy(source, target)
    assert caught.value.message == "fs/copy source and destination are the same file"
    assert source.read_bytes() == b"precious" and target.read_bytes() == b"precious"


def test_a_tree_merged_onto_hard_links_of_its_own_files_is_refused_and_kept(server, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"precious")
    os.link(str(tmp_path / "src" / "f"), str(tmp_path / "dst" / "f"))
    with Client.connect(server.url, timeout=10) as client:
        with pytest.raises(InvalidRequest, match="^fs/copy source and destination are the same file$"):
            client.fs.copy(tmp_path / "src", tmp_path / "dst", recursive=True)
    assert (tmp_path / "src" / "f").read_bytes() == b"precious"


def test_a_whole_write_cut_last_is_cut_at_what_was_written_when_it_fails(tmp_path):
    """``write_whole(truncate_last=True)`` (a ``cp`` download in place) cut the file only when the write
    completed: an interrupted one left the old size, new bytes in front of the old tail."""
    from fs_helper.replacing import write_whole

    target = tmp_path / "file"
    target.write_bytes(b"A" * 100)
    os.link(target, tmp_path / "link")  # in place: a rename would split the link

    def chunks(handle):
        handle.write(b"B" * 10)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_whole(str(target), chunks, truncate_last=True)
    assert (tmp_path / "link").read_bytes() == b"B" * 10
