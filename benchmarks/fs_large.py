"""Benchmark (not a test): a 256 MiB file through fs/open + fs/readBlock, server RSS bounded.

    python benchmarks/fs_large.py [--size-mib 256]

Starts our server as a subprocess, writes a sparse file of the given size,
reads it back with ``client.fs.open(...).iter_blocks()`` and samples the
server's RSS (psutil) every 20 ms.  Prints MiB/s, idle and peak RSS.  The
peak stays near the idle figure: the server holds one 1 MiB block at a time.
"""

import argparse
import os
import sys
import tempfile
import threading
import time

import psutil

from exec_server import Client

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_process import running_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args()
    peak = [0]
    stop = threading.Event()
    with running_server() as (server, url), tempfile.TemporaryDirectory() as folder:
        watched = psutil.Process(server.pid)

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], watched.memory_info().rss)
                time.sleep(0.02)

        path = os.path.join(folder, "big.bin")
        with open(path, "wb") as handle:
            handle.truncate(args.size_mib << 20)
        with Client.connect(url) as client:
            idle = watched.memory_info().rss
            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                started = time.perf_counter()
                total = 0
                with client.fs.open(path) as remote:
                    for block in remote.iter_blocks():
                        total += len(block)
                elapsed = time.perf_counter() - started
            finally:
                stop.set()
                sampler.join()
    assert total == args.size_mib << 20, total
    print("read %d MiB in %.2f s: %.1f MiB/s; server RSS idle %.1f MiB, peak %.1f MiB"
          % (args.size_mib, elapsed, args.size_mib / elapsed, idle / 2 ** 20, peak[0] / 2 ** 20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
