"""The bounds of the listings, ``fs/readDirectory`` and ``fs/walk``, on ours and on the reference.

Before, both returned everything: a walk of 50,000 entries with ~4 KB paths
was a 200 MB response (+690 MiB of server memory), and ``fs/readDirectory``
of 100,000 files returned them all.  The reference 0.169.0 caps a walk's
result at 4 MiB (``truncated``) and refuses a directory of more than 50,000
entries; ours does the same, with the same counts and texts.
"""

import os

import pytest

from exec_server import Client
from exec_server.protocol.errors import InternalError
from fs_helper.operations import READ_DIRECTORY_MAX_ENTRIES, WALK_ITEM_OVERHEAD, WALK_RESULT_BYTES

pytestmark = [pytest.mark.posix, pytest.mark.timeout(120)]


@pytest.fixture
def fs(any_server):
    with Client.connect(any_server.url, timeout=30) as client:
        yield client.fs


def _make_files(directory, count: int, name_length: int = 8) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        os.close(os.open(str(directory / str(index).zfill(name_length)), os.O_CREAT | os.O_WRONLY, 0o644))


def test_a_directory_of_more_than_50000_entries_is_refused(fs, tmp_path):
    directory = tmp_path / "d"
    _make_files(directory, READ_DIRECTORY_MAX_ENTRIES)
    os.symlink("missing", str(directory / "dangling"))  # left out, and not counted
    entries = fs.read_directory(directory)
    assert len(entries) == READ_DIRECTORY_MAX_ENTRIES == 50000
    assert sorted(entry["fileName"] for entry in entries)[:2] == ["00000000", "00000001"]
    os.close(os.open(str(directory / "one-more"), os.O_CREAT | os.O_WRONLY, 0o644))
    with pytest.raises(InternalError) as caught:
        fs.read_directory(directory)
    assert caught.value.message == "fs/readDirectory returned 50001 entries; limit is 50000"


def test_a_walk_result_is_capped_at_4_mib_and_truncated(fs, tmp_path):
    """Entries with ~1 KB paths: the walk stops where the next entry's path and 64 would pass 4 MiB."""
    deep = tmp_path
    for level in range(3):
        deep = deep / ("%d" % level + "d" * 240)
    name_length = 200
    uri_length = len("file://" + str(deep / ("x" * name_length)))
    fits = WALK_RESULT_BYTES // (uri_length + WALK_ITEM_OVERHEAD)
    _make_files(deep, fits + 20, name_length)
    options = {"maxDepth": 1, "maxDirectories": 10, "maxEntries": 50000, "followDirectorySymlinks": False}
    result = fs._call("fs/walk", {"path": "file://" + str(deep), "options": options})
    assert result["truncated"] is True and result["errors"] == []
    assert len(result["entries"]) == fits  # ~3900: the cap, not maxEntries, ended it
    assert result["entries"][-1]["path"].endswith(str(fits - 1).zfill(name_length))
    assert sum(len(entry["path"]) + WALK_ITEM_OVERHEAD for entry in result["entries"]) <= WALK_RESULT_BYTES


def test_results_are_counted_in_the_result_budget_by_what_they_hold(monkeypatch, tmp_path):
    """A file whose stat gives 0 bytes (a /proc file, or one growing after its stat) reserved nothing and could
    return up to 64 MiB; listings reserved nothing at all.  Now what a result holds is reserved until sent."""
    from conftest import start_ours
    from exec_server.server.handlers.context import RequestContext

    reserved = []
    real = RequestContext.reserve_result
    monkeypatch.setattr(RequestContext, "reserve_result",
                        lambda self, size, chunks=0: (reserved.append(size), real(self, size, chunks))[1])
    status = "/proc/%d/status" % os.getpid()
    assert os.stat(status).st_size == 0
    _make_files(tmp_path / "d", 100)
    running = start_ours()
    try:
        with Client.connect(running.url, timeout=10) as client:
            data = client.fs.read_file(status)
            assert len(data) > 500 and sum(reserved) >= len(data)
            reserved.clear()
            assert len(client.fs.read_directory(tmp_path / "d")) == 100
            assert sum(reserved) >= 100 * (8 + WALK_ITEM_OVERHEAD)
    finally:
        running.stop()


def test_a_sandboxed_listing_has_the_same_limit(tmp_path):
    """The fs helper's confined fs/readDirectory (a request with a restricting sandbox) returned every entry."""
    from fs_helper import confined, safe_path
    from fs_helper.errors import FsError
    from fs_helper.policy import Policy

    if safe_path.unsupported_reason() is not None:
        pytest.skip(safe_path.unsupported_reason())
    directory = tmp_path / "d"
    _make_files(directory, READ_DIRECTORY_MAX_ENTRIES)
    read_directory = confined.CONFINED_OPERATIONS["fs/readDirectory"]
    policy = Policy([["/", "read"]])
    assert len(read_directory({"path": "file://%s" % directory}, policy)["entries"]) == READ_DIRECTORY_MAX_ENTRIES
    _make_files(directory, READ_DIRECTORY_MAX_ENTRIES + 3)
    with pytest.raises(FsError) as caught:
        read_directory({"path": "file://%s" % directory}, policy)
    assert caught.value.code == -32603
    assert caught.value.message == "fs/readDirectory returned 50003 entries; limit is 50000"
