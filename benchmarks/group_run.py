"""Benchmark (not a test): ``true`` on 16 local servers through ``Group.run`` against 16 sequential ``Client.run``.

    python benchmarks/group_run.py [--servers 16] [--rounds 20]

Starts the servers as subprocesses on loopback ports, connects once (a
:class:`Group`, and 16 separate clients for the sequential side), then times
``rounds`` rounds of each and prints the median and best wall time of a
round, and the time to connect the whole group.  Every round checks that
each host exited 0.
"""

import argparse
import os
import statistics
import sys
import time
from contextlib import ExitStack

from exec_server import Client, Group

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_process import running_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with ExitStack() as stack:
        urls = [stack.enter_context(running_server())[1] for _ in range(args.servers)]
        begin = time.perf_counter()
        group = stack.enter_context(Group(urls))
        connect_seconds = time.perf_counter() - begin
        clients = [stack.enter_context(Client.connect(url)) for url in urls]
        grouped, sequential = [], []
        for _ in range(args.rounds):
            begin = time.perf_counter()
            result = group.run(["true"], timeout=30, check=True)
            grouped.append(time.perf_counter() - begin)
            assert len(result) == args.servers
            begin = time.perf_counter()
            for client in clients:
                client.run(["true"], timeout=30, check=True)
            sequential.append(time.perf_counter() - begin)
    print("%d servers, %d rounds, %d CPUs" % (args.servers, args.rounds, os.cpu_count() or 0))
    print("Group connect (all hosts):   %7.1f ms" % (connect_seconds * 1000))
    for name, times in (("Group.run", grouped), ("sequential Client.run", sequential)):
        print("%-28s median %7.1f ms  best %7.1f ms" % (name + ":", statistics.median(times) * 1000,
                                                        min(times) * 1000))
    print("speed-up (median): %.1fx" % (statistics.median(sequential) / statistics.median(grouped)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
