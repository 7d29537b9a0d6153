"""Soak (not a test): fds, threads and RSS of the server before and after a workload.

    python benchmarks/soak.py [--processes 1000] [--connections 200] [--rounds 3]

Starts our server as a subprocess, measures it with psutil, then runs the
workload ``--rounds`` times: ``--processes`` short processes spread over
``--connections`` connections that come and go.  After each round it waits
for the server to settle and measures again.  Open file descriptors and
threads return to their baseline after every round.  RSS grows in the first
round (the allocator's arenas and caches fill) and stays flat after it: the
figure to watch is the change between the first round and the last.
"""

import argparse
import os
import sys
import time

import psutil

from exec_server import Client

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_process import running_server  # noqa: E402


def snapshot(process: psutil.Process):
    return {"fds": process.num_fds(), "threads": process.num_threads(),
            "rss_mib": round(process.memory_info().rss / 2 ** 20, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with running_server(["--closed-process-retention", "1", "--detached-session-ttl", "1"]) as (server, url):
        watched = psutil.Process(server.pid)
        with Client.connect(url) as warm:  # start lazily created threads once
            warm.run(["true"], timeout=30)
        time.sleep(2)
        print("before:    %s" % snapshot(watched))
        per_connection = max(1, args.processes // args.connections)
        for round_number in range(1, args.rounds + 1):
            started = time.monotonic()
            for _ in range(args.connections):
                with Client.connect(url, reconnect=None) as client:
                    for _ in range(per_connection):
                        client.run(["true"], timeout=30)
            elapsed = time.monotonic() - started
            time.sleep(3)  # closed processes and detached sessions expire (1 s each here)
            print("round %d:   %s  (%d processes over %d connections in %.1f s)" % (
                round_number, snapshot(watched), per_connection * args.connections, args.connections, elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
