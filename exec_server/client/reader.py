"""The reader thread of one client transport (started by ``Endpoint.attach``).

It holds the endpoint weakly, so an unreferenced client can be garbage
collected (and its stdio child ended by the finalizer) while it reads.

A script that ends with a client still open (no ``with``, no ``close``)
leaves its reader threads, daemon threads, reading as the interpreter exits;
the exit tore the connections down under them and a reader's error, printed
during the interpreter's finalization, aborted the process (SIGABRT, "could
not acquire lock for <stderr> at interpreter shutdown").  So at exit
(:mod:`atexit`, before the finalization) every transport still read is
closed, as a lost connection is (the server's session detaches, its
processes live on for the session's time to live, as when the script is
killed), and its reader ends quietly, within :data:`EXIT_CLOSE_WAIT`.
"""

import atexit
import logging
import threading
import time
import weakref
from typing import Any, Dict

from exec_server.client.transport import Transport
from exec_server.protocol.errors import ExecServerDisconnected
from exec_server.protocol.jsonrpc import EnvelopeError

log = logging.getLogger(__name__)

#: Seconds the interpreter's exit gives the transports still read to close and their readers to end, in all.
EXIT_CLOSE_WAIT = 2.0

_reading: Dict[threading.Thread, Transport] = {}  # the reader threads running, and their transports
_exiting = False  # set at the interpreter's exit: readers end quietly


def read_transport(endpoint_ref: "weakref.ReferenceType[Any]", transport: Transport,
                   generation: int) -> None:
    """Read one transport until it ends; route each message to the endpoint, while it exists.

    A message the endpoint cannot route (``EnvelopeError``) ends the
    transport: the peer is broken.  Whatever ends it, the endpoint is told
    (``_connection_lost``), which recovers or fails.
    """
    reason = "connection to the exec-server closed"
    _reading[threading.current_thread()] = transport
    try:
        while True:
            try:
                text = transport.receive()
            except ExecServerDisconnected as exc:
                reason = str(exc)
                break
            endpoint = endpoint_ref()
            if endpoint is None:
                return
            try:
                endpoint._route(text, generation)
            except EnvelopeError as exc:
                reason = "exec-server sent a malformed message: %s" % exc.description
                # Without a recovery every waiting call raises with this reason: no second report.
                log.log(logging.WARNING if endpoint.on_lost is not None else logging.DEBUG, "%s", reason)
                if hasattr(transport, "kill"):
                    transport.kill(reason)  # a call sending meanwhile raises this cause
                else:
                    transport.close()
                break
            finally:
                del endpoint
    except Exception:
        if not _exiting:
            log.exception("client reader failed")
    finally:
        _reading.pop(threading.current_thread(), None)
    if _exiting:
        return
    endpoint = endpoint_ref()
    if endpoint is not None:
        endpoint._connection_lost(generation, reason)


def closing_finalizer(owner: Any, transport: Transport) -> "weakref.finalize":
    """A finalizer that closes ``transport`` once ``owner`` (its endpoint) is collected; not at the
    interpreter's exit, where :func:`_close_at_exit` closes it first, so its reader ends quietly (closed by
    weakref's own exit handler, it met a lost connection and started a recovery as the interpreter ended)."""
    finalizer = weakref.finalize(owner, transport.close)
    finalizer.atexit = False
    return finalizer


@atexit.register
def _close_at_exit() -> None:
    """Close every transport still read, and wait for their readers, within :data:`EXIT_CLOSE_WAIT`."""
    global _exiting
    _exiting = True
    readers = list(_reading.items())
    deadline = time.monotonic() + EXIT_CLOSE_WAIT
    closers = []
    for _thread, transport in readers:  # at once: each close may wait for its peer's answer
        closer = threading.Thread(target=_quietly_close, args=(transport,), name="exec-server-client-exit",
                                  daemon=True)
        try:
            closer.start()
        except RuntimeError:  # no thread: this one closes it
            _quietly_close(transport)
            continue
        closers.append(closer)
    for thread in closers + [thread for thread, _transport in readers]:
        thread.join(max(0.0, deadline - time.monotonic()))


def _quietly_close(transport: Transport) -> None:
    try:
        transport.close()
    except Exception:  # best effort: the interpreter is exiting
        pass
