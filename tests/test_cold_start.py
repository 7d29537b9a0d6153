"""What a cold start loads: only what the path taken so far needs (#17).

Each case runs in a new interpreter and reads ``sys.modules``; the figures
themselves are measured by ``benchmarks/bench.py``, not here.
"""

import json
import os
import subprocess
import sys

import pytest

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
                                              "exec_server.client", "ctypes") if name in sys.modules)}
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


_FAMILIES = r"""
import json, sys, time
from exec_server.server.config import ServerConfig
from exec_server.server.dispatcher import Dispatcher
from exec_server.server.sessions import SessionRegistry

WATCHED = ("fs_helper.operations", "exec_server.server.handlers.fs", "exec_server.server.fs.handles",
           "exec_server.server.fs.helper", "exec_server.server.handlers.process",
           "exec_server.server.process.managed", "exec_server.server.process.spawn", "subprocess", "uuid", "platform",
           "concurrent.futures", "shutil", "tempfile", "exec_server.server.process.output",
           "exec_server.server.process.spool")
sent, loaded = [], {}
registry = SessionRegistry(ServerConfig())
connection = Dispatcher(registry).open_connection(lambda *texts: sent.extend(texts), "x: ")

def step(name, *texts):
    answers = len(sent) + sum('"id"' in text for text in texts)
    for text in texts:
        connection.receive(text)
    deadline = time.monotonic() + 20
    while len(sent) < answers and time.monotonic() < deadline:
        time.sleep(0.01)
    loaded[name] = sorted(module for module in WATCHED if module in sys.modules)

step("initialize", '{"id":1,"method":"initialize","params":{"clientName":"cold"}}', '{"method":"initialized"}',
     '{"id":2,"method":"environment/info"}')
step("fs", '{"id":3,"method":"fs/getMetadata","params":{"path":"file://%s"}}' % sys.argv[1])
step("process", '{"id":4,"method":"process/start","params":{"processId":"p","argv":["true"],"cwd":"file:///",'
     '"env":{},"tty":false}}')
connection.close()
registry.close_all()
print(json.dumps({"loaded": loaded, "sent": [json.loads(text) for text in sent]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux path and program")
def test_handler_families_load_on_their_first_request(tmp_path):
    """``initialize`` loads neither the fs nor the process code; each loads with its family's first request."""
    done = subprocess.run([sys.executable, "-c", _FAMILIES, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    by_id = {message.get("id"): message for message in outcome["sent"]}
    assert "sessionId" in by_id[1]["result"] and by_id[2]["result"]["platformOs"] == "linux"
    assert by_id[3]["result"]["isDirectory"] is True
    assert by_id[4]["result"]["processId"] == "p"
    loaded = outcome["loaded"]
    assert loaded["initialize"] == []
    assert {"exec_server.server.handlers.fs", "fs_helper.operations"} <= set(loaded["fs"])
    assert not {"exec_server.server.handlers.process", "exec_server.server.process.managed"} & set(loaded["fs"])
    assert {"exec_server.server.handlers.process", "exec_server.server.process.managed",
            "exec_server.server.process.spawn", "subprocess", "exec_server.server.process.output",
            "exec_server.server.process.spool"} <= set(loaded["process"])


_STOP = r"""
import json, subprocess, sys
from exec_server.server.config import ServerConfig
from exec_server.server.dispatcher import Dispatcher
from exec_server.server.sessions import SessionRegistry
dispatcher = Dispatcher(SessionRegistry(ServerConfig()))
dispatcher.stop_fs_helpers()
loaded = "exec_server.server.fs.helper" in sys.modules
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
dispatcher.fs_helpers.add(child)  # a helper started after the shutdown
print(json.dumps({"loaded": loaded, "status": child.wait(timeout=20)}))
"""


@pytest.mark.skipif(sys.platform.startswith("win"), reason="SIGKILL status")
def test_shutdown_loads_no_fs_helper_code_and_still_kills_later_helpers():
    """Stopping the fs helpers of a server that never ran one imports nothing (it runs in signal handlers)."""
    done = subprocess.run([sys.executable, "-c", _STOP], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"loaded": False, "status": -9}


def test_the_stdio_command_answers_initialize_without_shutil_tempfile_or_ctypes():
    """argparse finds the terminal's width with shutil, the spool's directory needs tempfile, the malloc tuning
    ctypes: ~2-3 ms each of a cold start, loaded now only to print help, once output is spooled, or by the first
    ``process/*`` or ``fs/*`` request (``-X importtime`` lists every import)."""
    init = b'{"id":1,"method":"initialize","params":{"clientName":"cold"}}\n'
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "exec_server", "--listen", "stdio"], input=init,
                          capture_output=True, timeout=60, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert done.returncode == 0 and b'"sessionId"' in done.stdout, done.stderr[-2000:]
    imported = {line.rsplit(b"|", 1)[1].strip() for line in done.stderr.splitlines()
                if line.startswith(b"import time:")}
    assert b"exec_server.server.stdio" in imported
    assert not {b"shutil", b"tempfile", b"ctypes"} & imported


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_commands_malloc_tuning_waits_for_the_first_fs_or_process_request(tmp_path):
    """``exec-server`` tunes malloc (``server/allocator.py``) at the first request that can send large buffers."""
    lines = [b'{"id":1,"method":"initialize","params":{"clientName":"cold"}}', b'{"method":"initialized"}',
             b'{"id":2,"method":"environment/info"}']
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    env.pop("EXEC_SERVER_MALLOC_TUNING", None)
    command = [sys.executable, "-m", "exec_server", "--log-level", "debug", "--listen", "stdio"]
    tuned = b"malloc trim threshold 1048576 bytes: set"
    done = subprocess.run(command, input=b"\n".join(lines) + b"\n", capture_output=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.count(b'"result"') == 2, done.stderr[-2000:]
    assert tuned not in done.stderr
    lines.append(b'{"id":3,"method":"fs/getMetadata","params":{"path":"file://%s"}}' % str(tmp_path).encode())
    done = subprocess.run(command, input=b"\n".join(lines) + b"\n", capture_output=True, timeout=60, env=env)
    assert done.returncode == 0 and b'"isDirectory":true' in done.stdout, done.stderr[-2000:]
    assert done.stderr.count(tuned) == 1
