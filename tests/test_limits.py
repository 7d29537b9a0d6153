"""Named limits not covered elsewhere: open file handles, fs/readFile size."""

import pytest

from conftest import start_ours
from exec_server import Client
from exec_server.config import ServerConfig
from exec_server.errors import InvalidRequest
from fs_helper import operations


def test_open_file_handle_limit(tmp_path):
    running = start_ours(ServerConfig(max_open_files=2))
    try:
        (tmp_path / "f").write_bytes(b"x")
        with Client.connect(running.url, timeout=5) as client:
            first = client.fs.open(tmp_path / "f")
            second = client.fs.open(tmp_path / "f")
            with pytest.raises(InvalidRequest) as caught:
                client.fs.open(tmp_path / "f")
            assert caught.value.message == "too many open file handles (limit 2)"
            first.close()
            client.fs.open(tmp_path / "f").close()  # a slot is free again
            second.close()
    finally:
        running.stop()


def test_read_file_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(operations, "READ_FILE_LIMIT", 10)
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(operations.FsError) as caught:
        operations.read_file({"path": "file://%s/big" % tmp_path})
    assert caught.value.code == -32600
    assert caught.value.message == "file `%s/big` is larger than 10 bytes; read it with fs/open" % tmp_path
