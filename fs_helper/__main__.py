"""``python -m fs_helper``: one JSON request on stdin, one JSON response on stdout.

Request (PROTOCOL.md 10): ``{"operation": "fs/readFile", "params": {...},
"policy": {"entries": [[path, access], ...]}}``.  Response:
``{"status": "ok", "payload": {"operation": ..., "response": {...}}}`` or
``{"status": "error", "payload": {"code": ..., "message": ...}}``.  Exit
status 0 whenever a response was written; diagnostics (tracebacks of
unexpected errors, whose response is a short -32603) go to stderr.
"""

import json
import os
import sys
import traceback

from .confined import CONFINED_OPERATIONS
from .errors import INTERNAL_ERROR, FsError
from .policy import Policy


def main() -> int:
    try:
        request = json.loads(sys.stdin.buffer.read())
        operation = request["operation"]
        handler = CONFINED_OPERATIONS[operation]
        params = request.get("params") or {}
        policy = Policy(request.get("policy", {}).get("entries", []))
    except (ValueError, KeyError, TypeError) as exc:
        print("fs_helper: bad request: %s" % exc, file=sys.stderr)
        return 2
    try:
        os.chdir("/")
        response = {"status": "ok", "payload": {"operation": operation, "response": handler(params, policy)}}
    except FsError as exc:
        response = {"status": "error", "payload": exc.to_dict()}
    except Exception as exc:  # a bug or an odd input: a short message; the traceback stays on stderr
        traceback.print_exc(file=sys.stderr)
        response = {"status": "error", "payload": {"code": INTERNAL_ERROR,
                                                   "message": "fs helper error: %s" % type(exc).__name__}}
    sys.stdout.write(json.dumps(response, separators=(",", ":")))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
