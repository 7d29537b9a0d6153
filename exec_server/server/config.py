"""Server settings and limits, one frozen value passed to every component.

Durations are float seconds and sizes are bytes.  Defaults are the Codex
exec-server reference's values where it has one (PROTOCOL.md sections 1.3,
1.5, 5.5 and 6); the others are this project's named limits.

:class:`ServerConfig` is a named tuple, not a dataclass: ``dataclasses``
imports ``inspect`` (~9 ms), which no other start-up path needs.
"""

import errno
import os
from typing import NamedTuple, Optional

from exec_server.common.durations import check_seconds

MIB = 1024 * 1024
GIB = 1024 * MIB
#: Default allowed clock difference for the ``exp`` and ``nbf`` of signed
#: bearer tokens, seconds (the reference's ``--ws-max-clock-skew-seconds``).
DEFAULT_MAX_CLOCK_SKEW = 30


class _Settings(NamedTuple):
    """The fields of :class:`ServerConfig`, each with its default and meaning; ServerConfig checks their ranges."""

    #: Requests of one connection handled at the same time (PROTOCOL.md 1.5);
    #: 1 restores the reference's serial order.  Further requests wait in the
    #: connection's queue.
    concurrent_requests: int = 16
    #: Requests of one connection waiting for a free slot.  One more is
    #: refused, without being run, with -32001 ``Server overloaded; retry
    #: later.`` (the Codex app-server's overload error; its queue holds 128),
    #: and so is one whose message would take the messages of the requests
    #: running or waiting past ``max_message_bytes`` together.
    max_queued_requests: int = 128
    #: Largest incoming WebSocket message or stdio line, in bytes.  A larger
    #: one closes the WebSocket with 1009 (message too big).  128 MiB leaves
    #: room for a 64 MiB file sent base64-encoded (PROTOCOL.md 1.3).
    max_message_bytes: int = 128 * MIB
    #: Output bytes retained per process for ``process/read`` (reference
    #: ``RETAINED_OUTPUT_BYTES_PER_PROCESS``); older chunks are evicted.
    retained_output_bytes: int = 1 * MIB
    #: Output chunks retained per process (``RETAINED_OUTPUT_CHUNKS_PER_PROCESS``).
    retained_output_chunks: int = 50_000
    #: Where the output spool's private directory (mode 0700) is made; None:
    #: the system's temporary directory.  Removed at shutdown.
    spool_dir: Optional[str] = None
    #: Output bytes one process keeps on disk past the in-memory retention
    #: (its spool); past it the oldest spooled output is evicted.  0 keeps
    #: output in memory only, as the reference does.
    spool_bytes_per_process: int = 1 * GIB
    #: Output bytes all processes of the server keep on disk together; a
    #: spool that would pass it stops taking output (later output is retained
    #: in memory only, with a logged warning), as after ENOSPC.
    spool_bytes_total: int = 4 * GIB
    #: Output chunks one process's spool indexes (17 bytes of memory each);
    #: past it the oldest spooled output is evicted.
    spool_chunks_per_process: int = 1_048_576
    #: Most decoded output bytes one ``process/read`` returns, whatever its
    #: ``maxBytes`` (null included); a read it stops has ``nextSeq`` after its
    #: last chunk, and the client reads on from there.
    max_read_bytes: int = 16 * MIB
    #: Most output chunks one ``process/read`` returns, whatever its ``maxBytes``
    #: (each costs ~450 bytes of memory while the result is built); as many
    #: as the reference retains (``RETAINED_OUTPUT_CHUNKS_PER_PROCESS``).
    max_read_chunks: int = 50_000
    #: Memory the large results of all connections may hold while they are
    #: built and sent, in bytes: a ``process/read`` that reads spooled output
    #: and an ``fs/readFile`` each count ``RESULT_COST_PER_BYTE`` (3) times the
    #: bytes they may return, and the read ``RESULT_COST_PER_CHUNK`` (512) per
    #: chunk (:mod:`~exec_server.server.budget`).  One that
    #: does not fit waits up to ``send_timeout`` for others to be sent, then
    #: is -32001 ``Server overloaded; retry later.``; one alone always runs.
    #: Small ones (1/64 of it each) that fit pass a waiting large one while
    #: they hold under 1/8 together (:class:`~exec_server.server.budget.ByteBudget`).
    max_result_bytes_in_flight: int = 512 * MIB
    #: How long a closed process stays readable and keeps its id, seconds.
    closed_process_retention: float = 80.0
    #: How long a session outlives its connection, seconds (PROTOCOL.md 7): a
    #: resume within it reattaches; at its end every process group of the
    #: session is killed and the session is forgotten.
    detached_session_ttl: float = 80.0
    #: Processes a session may hold at once (running, or closed and retained).
    #: One more ``process/start`` is -32600.
    max_processes_per_session: int = 1024
    #: Sessions the server keeps at once (attached or detached).  One more
    #: ``initialize`` drops the oldest detached session with nothing running,
    #: or is -32600 if there is none.
    max_sessions: int = 256
    #: WebSocket connections served at once.  At the limit, the connection
    #: silent longest for at least ``evict_idle_after`` seconds that is not
    #: initialized, or has no request in flight and no running process, is
    #: closed (1013 try again later) to make room; if there is none, the
    #: upgrade is HTTP 503.
    max_connections: int = 256
    #: TCP connections accepted and not yet upgraded to a WebSocket (the HTTP
    #: request or TLS handshake in progress, /readyz), each holding a thread
    #: for up to ``upgrade_timeout``; one more is closed at once, unread.
    max_pending_upgrades: int = 256
    #: Of those, how many one peer address may have; one more from it is
    #: closed at once, unread (one source cannot take every slot and fail
    #: ``/readyz`` and every other client).
    max_pending_upgrades_per_address: int = 64
    #: Seconds without a JSON-RPC message after which a connection with
    #: nothing running may be closed for a new one at ``max_connections``.
    evict_idle_after: float = 10.0
    #: File handles (``fs/open``) one connection may hold at once; one more is -32600.
    max_open_files: int = 64
    #: Bytes accepted by ``process/write`` and not yet read by the child, per
    #: process.  A write that would go past it is -32603 ``stdin queue is
    #: full: ...`` (``data.reason`` ``stdinQueueFull``) and is not queued; a
    #: single chunk into an empty queue is always accepted (its size is
    #: bounded by ``max_message_bytes``).
    max_stdin_queue_bytes: int = 8 * MIB
    #: Process containment on Linux (``--linux-sandbox-pid-namespace``, the
    #: reference's option; README "Process containment"): ``isolate`` runs
    #: each child in its own PID namespace, so a kill or the server's death
    #: takes every process it ever started (falls back to ``inherit`` with one
    #: log line where a start-up probe fails); ``inherit`` keeps the server's
    #: PID namespace (process group, a marker every descendant inherits, the
    #: guardian for the server's own death).
    pid_namespace: str = "isolate"
    #: Whether the guardian (README "Process containment") covers each
    #: ``isolate`` child while it starts too: ``setpriv`` arms its
    #: parent-death signal after its exec and ``unshare --kill-child`` its
    #: child's after its fork, so a server killed in between (SIGKILL, the
    #: OOM killer during a burst of starts) leaves that tree running.  Costs
    #: one more ``exec`` a start (``env -u``, ~0.8 ms) and the guardian's
    #: start and its sweep at the interpreter's exit (~170 ms of a one-shot
    #: ``run``).  The ``exec-server`` command's WebSocket server turns it
    #: on; ``run``'s embedded server and a stdio server leave it off.
    guard_isolated_starts: bool = False
    #: Interval of the server's WebSocket Ping frames, seconds (0 disables;
    #: the reference pings every 30 s).
    ping_interval: float = 5.0
    #: A WebSocket connection from which nothing (no frame, no Pong) arrived
    #: for this many seconds is closed, which detaches its session (0: never;
    #: only with ``ping_interval`` set, and it must exceed it).  The
    #: reference never closes a silent connection (PROTOCOL.md 1.3).
    keepalive_timeout: float = 10.0
    #: When a resume finds its session held by another connection, that
    #: connection is sent a Ping; if nothing arrives from it within this many
    #: seconds it is closed and the resume succeeds (else -32010).  0 skips
    #: the probe (-32010 at once, as the reference).
    takeover_probe_timeout: float = 2.0
    #: A write to a connection whose peer takes under
    #: :data:`~exec_server.common.keepalive.MIN_SEND_RATE` (4 KiB/s) over this
    #: many seconds (it stopped reading, or trickles) marks the connection
    #: dead and closes it.  What it takes is the bytes its TCP acknowledged
    #: where Linux tells (``tcpi_bytes_acked``), else the bytes the socket
    #: accepted.
    send_timeout: float = 10.0
    #: Seconds for a client to send the whole HTTP upgrade request (request
    #: line and headers); then the socket is closed.
    upgrade_timeout: float = 10.0
    #: Seconds after the upgrade for ``initialize`` to succeed; then the
    #: WebSocket is closed with 1008 (policy violation).  0: no limit.
    initialize_timeout: float = 10.0
    #: Upper bound of :meth:`ExecServer.shutdown` (Close frames, process
    #: trees, fs helpers, thread joins), seconds; what has not finished by
    #: then is abandoned (trees are always killed first).
    shutdown_timeout: float = 5.0
    #: How long a ``wss://`` client has to complete the TLS handshake, seconds
    #: (more than 0); one that does not is disconnected.
    tls_handshake_timeout: float = 10.0
    #: Bytes read from a child's pipe or PTY at a time (one output event at most).
    read_chunk_bytes: int = 64 * 1024
    #: After a child exits, how long to wait for its pipes to reach EOF before
    #: ``process/exited`` is sent anyway (a grandchild may hold them), seconds.
    exit_output_grace: float = 0.05


class ServerConfig(_Settings):
    """Every setting of a server, immutable; ``ServerConfig(send_timeout=5.0)`` changes one.

    Raises:
        TypeError: a setting of no such name.
        ValueError: a value out of its range (the message names the field), or a
            ``spool_dir`` that is not a directory this process can write in
            (unless ``spool_bytes_per_process`` is 0).
    """

    __slots__ = ()

    def __new__(cls, *args, **settings):
        unknown = sorted(set(settings) - set(cls._fields))
        if unknown:
            raise TypeError("ServerConfig has no setting %s" % ", ".join(unknown))
        config = super().__new__(cls, *args, **settings)
        config._check()
        return config

    def _check(self) -> None:
        for name in ("concurrent_requests", "max_message_bytes", "retained_output_bytes",
                     "retained_output_chunks", "max_processes_per_session", "read_chunk_bytes", "max_open_files",
                     "max_sessions", "max_connections", "max_pending_upgrades", "max_pending_upgrades_per_address",
                     "spool_chunks_per_process", "max_read_bytes", "max_read_chunks", "max_result_bytes_in_flight",
                     "max_stdin_queue_bytes"):
            if getattr(self, name) < 1:
                raise ValueError("%s must be at least 1" % name)
        if self.pid_namespace not in ("isolate", "inherit"):
            raise ValueError("pid_namespace must be isolate or inherit")
        if not isinstance(self.guard_isolated_starts, bool):
            raise ValueError("guard_isolated_starts must be True or False")
        for name in ("max_queued_requests", "spool_bytes_per_process", "spool_bytes_total"):
            if getattr(self, name) < 0:
                raise ValueError("%s must not be negative" % name)
        for name in ("closed_process_retention", "ping_interval", "exit_output_grace", "detached_session_ttl",
                     "keepalive_timeout", "takeover_probe_timeout", "initialize_timeout", "evict_idle_after"):
            check_seconds(getattr(self, name), name)
        for name in ("send_timeout", "upgrade_timeout", "shutdown_timeout", "tls_handshake_timeout"):
            check_seconds(getattr(self, name), name, positive=True)
        if self.spool_dir is not None and self.spool_bytes_per_process:
            # checked now: else, past its first MiB, every process's output would be kept in memory only
            if not os.path.isdir(self.spool_dir):
                missing = errno.ENOTDIR if os.path.exists(self.spool_dir) else errno.ENOENT
                raise ValueError("spool_dir %s: %s" % (self.spool_dir, os.strerror(missing)))
            if not os.access(self.spool_dir, os.W_OK | os.X_OK):
                raise ValueError("spool_dir %s: %s" % (self.spool_dir, os.strerror(errno.EACCES)))
        if self.keepalive_timeout and self.ping_interval and self.keepalive_timeout <= self.ping_interval:
            raise ValueError("keepalive_timeout must exceed ping_interval (a live peer needs a Ping to answer)")
