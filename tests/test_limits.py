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


def test_read_file_size_limit(server, tmp_path):
    with open(tmp_path / "big", "wb") as handle:
        handle.truncate(operations.READ_FILE_LIMIT + 1)  # sparse: no 64 MiB written
    with Client.connect(server.url, timeout=5) as client:
        with pytest.raises(InvalidRequest) as caught:
            client.fs.read_file(tmp_path / "big")
    assert caught.value.message == "file `%s/big` is larger than %d bytes; read it with fs/open" % (
        tmp_path, operations.READ_FILE_LIMIT)


def test_file_handles_close_with_their_connection(server, tmp_path):
    import psutil

    from conftest import wait_until

    (tmp_path / "f").write_bytes(b"x")
    me = psutil.Process()
    client = Client.connect(server.url, timeout=5)
    client.call("environment/status")
    baseline = me.num_fds()
    for _ in range(5):
        client.fs.open(tmp_path / "f")
    assert me.num_fds() >= baseline + 5
    client.close()
    wait_until(lambda: me.num_fds() <= baseline)
