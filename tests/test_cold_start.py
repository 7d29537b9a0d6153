"""What a cold start loads: only what the path taken so far needs (#17).

Each case runs in a new interpreter and reads ``sys.modules``; the figures
themselves are measured by ``benchmarks/bench.py``, not here.
"""

import json
import os
import subprocess
import sys

_LISTENER = r"""
import http.client, json, sys, threading
from exec_server.server.app import make_server
server = make_server("ws://127.0.0.1:0")
threading.Thread(target=server.serve_forever, daemon=True).start()
conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
conn.request("GET", "/readyz")
response = conn.getresponse()
outcome = {"status": response.status,
           "loaded": sorted(name for name in ("wsproto", "h11", "jsonschema", "exec_server.server.websocket",
                                              "exec_server.client") if name in sys.modules)}
response.read()
conn.close()
{after}
server.shutdown()
print(json.dumps(outcome))
"""

_UPGRADE = r"""
from exec_server.client.api import Client
with Client.connect("ws://127.0.0.1:%d" % server.port, timeout=10) as client:
    outcome["upgraded"] = client.run(["sh", "-c", "printf ok"], timeout=30).stdout.decode()
"""


def _listener(after=""):
    done = subprocess.run([sys.executable, "-c", _LISTENER.replace("{after}", after)], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_readyz_loads_no_websocket_code():
    outcome = _listener()
    assert outcome["status"] == 200
    assert outcome["loaded"] == []


def test_the_first_upgrade_loads_the_websocket_side():
    outcome = _listener(after=_UPGRADE)
    assert outcome["upgraded"] == "ok"
