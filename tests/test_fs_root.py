"""A recursive fs/remove never takes the file system's root, as ``rm`` refuses ``rm -rf /``.

Each check runs where a wrong answer costs nothing: in a child chrooted to a
temporary directory (its ``/``), or against a server whose idea of the root
is a temporary directory.  Either way a failure removes a canary file only.
"""

import json
import os
import subprocess
import sys

import pytest

from exec_server import Client, InvalidRequest
from fs_helper import operations

pytestmark = pytest.mark.posix

CHILD = r"""
import json, os, sys
from fs_helper import confined, operations
from fs_helper.errors import FsError
from fs_helper.policy import Policy

os.chroot(sys.argv[1])
os.chdir("/")
results = {}
for path in sys.argv[2:]:
    for name, remove in (("server", operations.remove),
                         ("confined", lambda params: confined.remove(params, Policy([["/", "write"]])))):
        try:
            remove({"path": path})
            results["%s %s" % (name, path)] = "removed"
        except FsError as error:
            results["%s %s" % (name, path)] = [error.code, error.message]
print(json.dumps(results))
"""


@pytest.mark.skipif(not hasattr(os, "chroot") or os.geteuid() != 0, reason="chroot needs root")
def test_the_root_is_refused_however_it_is_named(tmp_path):
    """``file:///`` and ``/tmp/..`` name the root; a symlink to it (trailing slash or not) is removed itself."""
    (tmp_path / "canary").write_bytes(b"alive")
    (tmp_path / "tmp").mkdir()
    os.symlink("/", str(tmp_path / "link"))
    paths = ["file:///", "file:///tmp/..", "file:///link/"]
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)] + paths, capture_output=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(operations.__file__))))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    results = json.loads(done.stdout)
    refused = [-32600, "refusing to remove the root directory `/`"]
    assert results == {"%s %s" % (name, path): refused if path != "file:///link/" else "removed"
                       for name in ("server", "confined") for path in paths}
    assert (tmp_path / "canary").read_bytes() == b"alive"
    assert not os.path.lexists(str(tmp_path / "link")) and (tmp_path / "tmp").is_dir()


def test_a_client_is_told_and_nothing_is_removed(server, tmp_path, monkeypatch):
    """End to end: the server answers -32600 and the tree stays (its root is ``tmp_path`` here)."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "canary").write_bytes(b"alive")
    monkeypatch.setattr(operations, "filesystem_root", lambda path: str(root))
    with Client.connect(server.url, timeout=10) as client:
        with pytest.raises(InvalidRequest, match="refusing to remove the root directory"):
            client.fs.remove(str(root) + "/sub/..")
        client.fs.remove(str(root / "sub"))  # below the root: removed as before
    assert root.is_dir() and not (root / "sub").exists()
