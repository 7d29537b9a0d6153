"""fs/copy keeps a sparse file's holes (as ``cp --sparse=auto``): same bytes, no disk blocks for the
zeros it never stored (fs_helper.opening.copy_blocks)."""

import hashlib
import os

import pytest

from conftest import sandbox_writing
from exec_server import Client

MIB = 1 << 20
SIZE = 64 * MIB
#: Where the sparse file has data: (offset, bytes).
RUNS = [(0, b"head" * 1024), (32 * MIB, b"middle" * 30000), (SIZE - 4096, b"t" * 4096)]

pytestmark = pytest.mark.posix


def allocated(path) -> int:
    """Bytes of disk the file takes."""
    return os.stat(str(path)).st_blocks * 512


def make_sparse(path, runs=RUNS, size=SIZE) -> str:
    with open(str(path), "wb") as handle:
        handle.truncate(size)
        for offset, data in runs:
            handle.seek(offset)
            handle.write(data)
    if allocated(path) >= size // 2:
        pytest.skip("this file system stores no holes")
    with open(str(path), "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def digest(path) -> str:
    with open(str(path), "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.mark.parametrize("how", ["file", "tree", "sandboxed file", "sandboxed tree"])
def test_a_copy_keeps_the_holes_of_a_sparse_file(server, tmp_path, how):
    (tmp_path / "src").mkdir()
    source = tmp_path / "src" / "disk.img"
    expected = make_sparse(source)
    (tmp_path / "src" / "dense").write_bytes(os.urandom(3 * MIB + 5))  # no holes: every byte, as before
    (tmp_path / "src" / "all-hole").write_bytes(b"")
    os.truncate(str(tmp_path / "src" / "all-hole"), 5 * MIB)
    (tmp_path / "dst").mkdir()
    with Client.connect(server.url, timeout=30) as client:
        fs = client.fs.with_sandbox(sandbox_writing(tmp_path / "dst")) if how.startswith("sandboxed") else client.fs
        if how.endswith("tree"):
            fs.copy(tmp_path / "src", tmp_path / "dst" / "tree", recursive=True)
            copied = tmp_path / "dst" / "tree"
        else:
            for name in ("disk.img", "dense", "all-hole"):
                fs.copy(tmp_path / "src" / name, tmp_path / "dst" / name)
            copied = tmp_path / "dst"
    assert os.path.getsize(str(copied / "disk.img")) == SIZE
    assert digest(copied / "disk.img") == expected
    assert allocated(copied / "disk.img") < 4 * MIB  # 64 MiB dense before
    assert (copied / "dense").read_bytes() == (tmp_path / "src" / "dense").read_bytes()
    assert (copied / "all-hole").read_bytes() == bytes(5 * MIB)
    assert allocated(copied / "all-hole") < MIB


def test_a_sparse_copy_over_a_longer_file_ends_where_the_source_ends(server, tmp_path):
    """A copy written in place (the target has another hard link): the old, longer content is cut."""
    source = tmp_path / "disk.img"
    expected = make_sparse(source, runs=[(0, b"x" * 4096)], size=16 * MIB)
    target = tmp_path / "target"
    target.write_bytes(b"\xff" * (20 * MIB))
    os.link(str(target), str(tmp_path / "second-link"))  # kept: the copy is written into the same file
    with Client.connect(server.url, timeout=30) as client:
        client.fs.copy(source, target)
    assert os.path.samefile(str(target), str(tmp_path / "second-link"))
    assert os.path.getsize(str(target)) == 16 * MIB
    assert digest(target) == expected


def copied_by_blocks(path, hook=None) -> bytes:
    """``copy_blocks`` of ``path`` into memory; ``hook(offset)`` runs at each seek of the sink."""
    import io

    from fs_helper.opening import copy_blocks, open_file

    class Sink(io.BytesIO):
        def seek(self, offset, *whence):
            if hook is not None and not whence:
                hook(offset)
            return super().seek(offset, *whence)

    fd = open_file(str(path), os.O_RDONLY)
    try:
        sink = Sink()
        copy_blocks(fd, sink)
        return sink.getvalue()
    finally:
        os.close(fd)


@pytest.mark.parametrize("path", ["/proc/self/cmdline", "/proc/self/environ", "/sys/class/net/lo/address",
                                  "/sys/kernel/mm/transparent_hugepage/enabled"])
def test_files_whose_size_is_not_their_content_are_copied_as_read(path):
    """A /proc file says size 0 (its SEEK_DATA found no data: an empty copy before), a /sys attribute
    4096 with no blocks: no sparse files, copied as read."""
    if not os.path.exists(path):
        pytest.skip("no %s here" % path)
    with open(path, "rb") as handle:
        expected = handle.read()
    assert expected and copied_by_blocks(path) == expected


def test_a_sparse_file_that_shrinks_or_grows_while_copied(tmp_path):
    """Shrunk under the copy: it ends where the file's bytes end (it failed with ENXIO, or padded zeros);
    grown: the size it had when the copy began, never zeros where data was appended."""
    source = tmp_path / "disk.img"
    make_sparse(source)
    original = source.read_bytes()

    def shrink(offset):
        if offset == 32 * MIB:  # the second run: the file now ends inside it
            os.truncate(str(source), 32 * MIB + 100)

    assert copied_by_blocks(source, shrink) == original[:32 * MIB + 100]
    make_sparse(source)
    with open(str(source), "ab") as appended:
        def grow(offset):
            if offset == SIZE - 4096:  # the last run
                appended.write(b"C" * 8)
                appended.flush()

        assert copied_by_blocks(source, grow) == original
