"""Benchmark (not a test): request rate with telemetry bypassed vs the OpenTelemetry API alone.

    python benchmarks/telemetry_overhead.py [--requests 3000] [--rounds 5]

Runs our server twice per round as a subprocess, once with
``EXEC_SERVER_TELEMETRY=off`` (the API is never called) and once as shipped
(API only, no SDK: spans are skipped and instruments are the API's no-op
proxies), and sends ``environment/status`` requests back to back on one
connection.  Prints the median requests per second of each and the overhead.
The target is an overhead under 3 %.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import RawClient  # noqa: E402
from server_process import running_server  # noqa: E402


def measure(env_extra, requests: int) -> float:
    env = dict(os.environ, **env_extra)
    with running_server(env=env) as (_server, url):
        client = RawClient(url)
        client.initialize()
        for _ in range(200):  # warm-up
            client.call("environment/status", {})
        started = time.perf_counter()
        for _ in range(requests):
            client.call("environment/status", {})
        elapsed = time.perf_counter() - started
        client.close()
        return requests / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    off, api = [], []
    for _ in range(args.rounds):
        off.append(measure({"EXEC_SERVER_TELEMETRY": "off"}, args.requests))
        api.append(measure({}, args.requests))
    off_rate, api_rate = statistics.median(off), statistics.median(api)
    print("telemetry off: %.0f req/s; API only (no SDK): %.0f req/s; overhead %.1f %%"
          % (off_rate, api_rate, (off_rate - api_rate) / off_rate * 100))
    return 0


if __name__ == "__main__":
    sys.exit(main())
