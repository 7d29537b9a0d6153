"""Resource hygiene: after processes and connections come and go, fds and threads are back at baseline."""

import subprocess
import sys

import psutil

from conftest import wait_until
from exec_server import Client


def test_fds_and_threads_return_to_baseline():
    server = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0",
                               "--closed-process-retention", "0.5", "--detached-session-ttl", "0.5"],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        url = server.stdout.readline().decode().strip()
        watched = psutil.Process(server.pid)
        with Client.connect(url, reconnect=None) as warm:
            warm.run(["true"], timeout=30)
        # at rest the server has its main thread, the scheduler's and the spawner's (which forks every
        # child, so that their parent-death signal holds), nothing per connection
        wait_until(lambda: watched.num_threads() <= 3, timeout=10)
        baseline = (watched.num_fds(), watched.num_threads())
        for _ in range(20):
            with Client.connect(url, reconnect=None) as client:
                for _ in range(5):
                    assert client.run(["true"], timeout=30).returncode == 0
                client.start(["sleep", "30"])  # left running: the session's expiry kills it
        wait_until(lambda: watched.num_fds() <= baseline[0] and watched.num_threads() <= baseline[1], timeout=20)
        # nothing but the guardian, which covers isolated trees in this server (its one process, for its life)
        assert [child for child in watched.children(recursive=True)
                if "exec_server.server.process.guardian" not in child.cmdline()] == []
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()
