"""``fs/copy`` of a symlink copies the link, as the reference 0.169.0 does; a copy into itself is refused by
identity too.

Before, a link source was followed: a link to a directory became a copy of
the directory (recursive) or -32600 (not), a link to a file a copy of the
file over whatever was there, a dangling link -32004 and a loop -32603;
the reference makes a link with the same text, and answers ``File exists
(os error 17)`` when anything is at the destination.
"""

import os
import subprocess

import pytest

from exec_server import Client
from exec_server.protocol.errors import InternalError, InvalidRequest

pytestmark = pytest.mark.posix


@pytest.fixture
def fs(any_server):
    with Client.connect(any_server.url, timeout=10) as client:
        yield client.fs


def _tree(root):
    (root / "d").mkdir()
    (root / "d" / "x").write_text("X")
    (root / "f").write_text("F")
    (root / "existing_dir").mkdir()
    (root / "existing_file").write_text("E")
    for name, target in (("ld", "d"), ("lf", "f"), ("loop", "loop"), ("dangling", "missing"), ("abs", str(root))):
        os.symlink(target, str(root / name))


@pytest.mark.parametrize("source, destination, recursive", [
    ("ld", "c", True), ("ld", "c", False), ("lf", "c", False), ("lf", "c", True), ("loop", "c", False),
    ("dangling", "c", False), ("abs", "c", True),
])
def test_a_link_is_copied_as_a_link(fs, tmp_path, source, destination, recursive):
    _tree(tmp_path)
    fs._call("fs/copy", {"sourcePath": "file://%s/%s" % (tmp_path, source),
                         "destinationPath": "file://%s/%s" % (tmp_path, destination), "recursive": recursive})
    assert os.readlink(str(tmp_path / destination)) == os.readlink(str(tmp_path / source))


@pytest.mark.parametrize("source, destination", [("lf", "existing_file"), ("lf", "existing_dir"),
                                                 ("ld", "existing_dir"), ("ld", "lf")])
def test_a_link_copied_onto_anything_is_file_exists(fs, tmp_path, source, destination):
    _tree(tmp_path)
    before = sorted(os.listdir(str(tmp_path / "existing_dir")))
    with pytest.raises(InternalError) as caught:
        fs._call("fs/copy", {"sourcePath": "file://%s/%s" % (tmp_path, source),
                             "destinationPath": "file://%s/%s" % (tmp_path, destination), "recursive": True})
    assert caught.value.message == "File exists (os error 17)"
    assert (tmp_path / "existing_file").read_text() == "E" and os.readlink(str(tmp_path / "lf")) == "f"
    assert sorted(os.listdir(str(tmp_path / "existing_dir"))) == before


@pytest.mark.timeout(60)
def test_a_copy_into_a_bind_mount_of_itself_is_refused(tmp_path):
    """The path check saw two unrelated names and the copy filled the disk (7,681 entries, a path of 15,382
    characters, on a 20 MiB tmpfs); ``cp`` compares identities, and so does the check now."""
    from conftest import start_ours

    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    source, alias = tmp_path / "src", tmp_path / "alias"
    source.mkdir()
    alias.mkdir()
    (source / "a").write_text("a")
    if subprocess.run(["mount", "--bind", str(source), str(alias)], stderr=subprocess.DEVNULL).returncode != 0:
        pytest.skip("no bind mounts here")
    running = start_ours()
    try:
        with Client.connect(running.url, timeout=10) as client:
            with pytest.raises(InvalidRequest) as caught:
                client.fs.copy(str(source), str(alias / "inner"), recursive=True)
            assert caught.value.message == "fs/copy cannot copy a directory to itself or one of its descendants"
            assert sorted(os.listdir(str(source))) == ["a"]
            client.fs.copy(str(source), str(tmp_path / "elsewhere"), recursive=True)  # a plain copy still goes
            assert (tmp_path / "elsewhere" / "a").read_text() == "a"
    finally:
        running.stop()
        subprocess.run(["umount", "-l", str(alias)], timeout=30)
