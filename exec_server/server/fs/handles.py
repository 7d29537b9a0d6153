"""File handles of one connection: ``fs/open``, ``fs/readBlock``, ``fs/writeBlock``, ``fs/close``.

Handles belong to the connection (PROTOCOL.md 8.4) and are closed when it
ends.  At most ``max_open_files`` are open at once (a named limit).  An
atomic ``replace`` handle (our ``atomicReplace`` extension,
:mod:`~exec_server.server.fs.atomic`) writes a temporary file beside its
target, put in place by ``fs/close``; one that is discarded, or still open
when the connection ends, is removed and the target stays as it was.

Block reads and writes may run on several request threads at once, so the
connection binds each to its open handle as it dispatches it, in arrival
order, and the handle counts them (:meth:`FileHandles.begin`,
:meth:`FileHandles.end`); ``fs/close`` waits (at most
:data:`CLOSE_BLOCKS_WAIT` s) for those that arrived before it, so a
pipelined close never overtakes a write.  Every close takes its handle as
it arrives (:meth:`FileHandles.begin_close`): block operations that arrive
after it find the handle gone, and an ``fs/open`` of its id waits for it;
one that may block (that wait, an atomic commit's fsync) runs on a thread
of its own.  An ``fs/open`` is registered as it arrives
(:meth:`FileHandles.begin_open`): block operations and a close sent right
behind it wait for it (at most :data:`OPEN_WAIT` s) instead of finding no
handle, as on the reference, which runs requests one after another.  A
descriptor is never closed under a running block operation: the last of
them closes it (:meth:`FileHandles.end`) when its close gave up waiting or
the connection ended.  A close that arrived before the connection ended
still finishes (its thread holds the exit as a request's does: the ``exec-server`` command waits 1 s for
those).  Thread-safe.
"""

import errno
import logging
import os
import stat
import threading
from typing import Any, Dict, List, Optional, Tuple

from fs_helper.errors import FsError, INTERNAL_ERROR, INVALID_REQUEST, NOT_FOUND, os_error
from fs_helper.opening import open_file

from exec_server.server.fs import atomic
from exec_server.server.fs.handle_state import Awaiting as _Awaiting, Handle as _Handle, Opening as _Opening, \
    discard as _discard

from exec_server.protocol.errors import RpcError

log = logging.getLogger(__name__)

#: Longest handle id, bytes (reference 0.169.0 behaviour).
MAX_HANDLE_ID_BYTES = 32
#: Largest ``len`` of one ``fs/readBlock`` and decoded chunk of one ``fs/writeBlock``, bytes (PROTOCOL.md 8.4).
MAX_BLOCK_BYTES = 1_048_576
#: Largest file offset the OS takes (i64); larger u64 offsets are -32600 like the reference's.
MAX_FILE_OFFSET = 2 ** 63 - 1
#: Longest wait of ``fs/close`` for the block reads and writes of its handle sent before it, seconds.
CLOSE_BLOCKS_WAIT = 30.0
#: Longest wait of a block operation or ``fs/close`` for the ``fs/open`` sent before it (which may wait
#: ``CLOSE_BLOCKS_WAIT`` s for an earlier close of the id), seconds.
OPEN_WAIT = CLOSE_BLOCKS_WAIT + 5.0


def _check_block_length(direction: str, length: int) -> None:
    """-32600 ``file read|write block length must be between 1 and 1048576`` unless 1 <= length <= the limit."""
    if not 1 <= length <= MAX_BLOCK_BYTES:
        raise RpcError("file %s block length must be between 1 and %d" % (direction, MAX_BLOCK_BYTES),
                       code=INVALID_REQUEST)


def rpc_error(error: FsError) -> RpcError:
    return RpcError(error.message, code=error.code)


class FileHandles:
    def __init__(self, limit: int):
        self._limit = limit
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a block operation ends
        self._handles: Dict[str, _Handle] = {}
        self._closing: Dict[str, List[Any]] = {}  # handle id -> _Handles (or _Openings) taken by closes still running
        self._opening: Dict[str, List[_Opening]] = {}  # handle id -> its fs/open requests still running
        self._closed = False  # close_all ran: the connection is gone and opens no more

    def begin_open(self, handle_id: str) -> _Opening:
        """An ``fs/open`` of ``handle_id`` was dispatched (call in arrival order): pass what this returns to
        :meth:`open`, and to :meth:`end` when the request ended (run or refused)."""
        with self._lock:
            running = self._opening.setdefault(handle_id, [])
            opening = _Opening(handle_id, list(self._closing.get(handle_id, ())), list(running))
            running.append(opening)
            return opening

    def _pending(self, handle_id: str) -> Optional[_Awaiting]:
        """The id's ``fs/open`` requests still running that no close came after, if any.  Holds the lock."""
        openings = tuple(opening for opening in self._opening.get(handle_id, ()) if not opening.closing)
        return _Awaiting(openings) if openings else None

    def begin(self, handle_id: str) -> Any:
        """A block read or write of ``handle_id`` was dispatched (call in arrival order): the handle it uses.

        The open handle of that id, counted until :meth:`end`, or the
        ``fs/open`` of it still running; None when the id is not open (never
        opened, or an ``fs/close`` of it came first): the operation then
        fails with -32004 after its own checks.
        """
        with self._lock:
            entry = self._handles.get(handle_id)
            if entry is not None and not entry.claimed:
                entry.busy += 1
                return entry
            pending = self._pending(handle_id)
            for opening in pending.openings if pending is not None else ():
                opening.waiters += 1
            return pending

    def begin_close(self, handle_id: str) -> Optional[_Handle]:
        """An ``fs/close`` of ``handle_id`` arrived (call in arrival order): the handle it takes, if open.

        The id is gone from now on, whenever the close runs: a later block
        operation or ``fs/close`` finds no handle, a later ``fs/open`` of the
        id waits for this close, run as ``close(handle_id, commit, taken)``
        (on a thread of its own when :attr:`_Handle.closes_slowly`).
        """
        with self._lock:
            if self._closed:
                return None
            entry = self._handles.get(handle_id)
            taken = entry if entry is not None and not entry.claimed else self._pending(handle_id)
            if taken is entry and entry is not None:
                del self._handles[handle_id]
            for opening in taken.openings if isinstance(taken, _Awaiting) else ():
                opening.closing = True  # the handle it makes is this close's
            if taken is not None:
                self._closing.setdefault(handle_id, []).append(taken)
            return taken

    def end(self, handle: Any) -> None:
        """The request bound to ``handle`` ended: a block operation (:meth:`begin`; the last one closes an
        orphaned handle) or an ``fs/open`` (:meth:`begin_open`)."""
        if isinstance(handle, _Opening):
            with self._lock:
                if not handle.done:  # refused, or failed before it ran: what waits for it gets no handle
                    self._opened(None, handle.handle_id, handle)
            return
        if isinstance(handle, _Awaiting):
            with self._lock:
                for opening in handle.openings:
                    if not opening.done:  # gave up waiting: not counted on the handle when it opens
                        opening.waiters -= 1
                handle = handle.opened()  # counted on it as it opened
            if handle is None:
                return
        with self._lock:
            handle.busy -= 1
            if handle.busy:
                return
            self._idle.notify_all()
            orphaned = handle.orphaned
        if orphaned:
            _discard(handle)

    def open(self, handle_id: str, path: str, mode: str, atomic_replace: bool = False,
             opening: Optional[_Opening] = None) -> bool:
        """Open ``path`` for reading, or create/truncate it for writing (``replace``).

        ``atomic_replace`` (``replace`` only): write a new temporary file
        beside ``path`` (a symlink at ``path`` is followed), put in place by
        :meth:`close`, where that keeps the file what it was
        (:func:`~exec_server.server.fs.atomic.prepare`); else in place.
        Returns True for an atomic handle.  ``opening``: what
        :meth:`begin_open` returned for this request.

        Raises:
            RpcError: -32600 for an empty or duplicate id, a directory, the handle
                limit or a connection already closed; -32004 when missing; OS errors by kind.
        """
        with self._lock:
            entry: Optional[_Handle] = None
            try:
                entry, applied = self._open_locked(handle_id, path, mode, atomic_replace, opening)
            finally:
                self._opened(entry, handle_id, opening)
            return applied

    def _opened(self, entry: Optional[_Handle], handle_id: str, opening: Optional[_Opening]) -> None:
        """An open ended with ``entry`` (None: it failed): it joins the handles, or goes to the close that
        arrived meanwhile; block operations that arrived meanwhile count on it.  Holds the lock."""
        if entry is not None:  # claimed by a close that came first (unless it stopped waiting), it still
            self._handles[handle_id] = entry  # holds the id: a later open of it is a duplicate, as in order
            entry.claimed = opening is not None and opening.closing and not opening.abandoned
        if opening is None:
            return
        if entry is not None:
            entry.busy += opening.waiters
        opening.entry, opening.done = entry, True
        running = self._opening.get(opening.handle_id, [])
        if opening in running:
            running.remove(opening)
            if not running:
                del self._opening[opening.handle_id]
        self._idle.notify_all()

    def _open_locked(self, handle_id: str, path: str, mode: str, atomic_replace: bool,
                     opening: Optional[_Opening]) -> Tuple[_Handle, bool]:
        if handle_id == "":
            raise RpcError("file handle id cannot be empty", code=INVALID_REQUEST)
        if len(handle_id.encode("utf-8")) > MAX_HANDLE_ID_BYTES:
            raise RpcError("file handle ID must not exceed %d bytes" % MAX_HANDLE_ID_BYTES, code=INVALID_REQUEST)
        if self._closed:  # an fs/open still running when its connection ended
            raise RpcError("the connection is closed", code=INVALID_REQUEST)
        if opening is not None and opening.opens_before:  # as in order: the first of them to open owns the id
            self._idle.wait_for(lambda: all(before.done for before in opening.opens_before) or self._closed,
                                OPEN_WAIT)
            if self._closed:
                raise RpcError("the connection is closed", code=INVALID_REQUEST)
        earlier = opening.after if opening is not None else list(self._closing.get(handle_id, ()))
        closing = lambda: any(taken in self._closing.get(handle_id, ()) for taken in earlier)  # noqa: E731
        if closing():  # an fs/close sent before this open is still running
            self._idle.wait_for(lambda: not closing() or self._closed, CLOSE_BLOCKS_WAIT + 1.0)
            if self._closed:
                raise RpcError("the connection is closed", code=INVALID_REQUEST)
            if closing():
                raise RpcError("file handle `%s` is still closing" % handle_id, code=INVALID_REQUEST)
        if handle_id in self._handles:
            raise RpcError("file handle `%s` already exists" % handle_id, code=INVALID_REQUEST)
        if len(self._handles) >= self._limit:
            raise RpcError("too many open file handles (limit %d)" % self._limit, code=INVALID_REQUEST)
        if atomic_replace and not os.path.isdir(path):
            prepared = atomic.prepare(path)
            if prepared is not None:
                return _Handle(prepared[0], "replace", prepared[1]), True
        # in place: the reference's replace empties the file at the open; an atomic one that could not be
        # (the target has a second name...) is cut at its close instead, so an upload of the file onto itself
        # (cp x :x through a local server) reads back what it writes over, unchanged
        cut_at_close = mode != "read" and atomic_replace
        flags = os.O_RDONLY if mode == "read" else os.O_WRONLY | os.O_CREAT | (0 if cut_at_close else os.O_TRUNC)
        try:
            if mode != "read" and os.path.isdir(path):
                raise FsError(INVALID_REQUEST, "path `%s` is not a file" % path)
            fd = open_file(path, flags)  # never waits; refuses a FIFO, device or socket
        except OSError as exc:
            raise rpc_error(os_error(exc)) from None
        except FsError as exc:
            raise rpc_error(exc) from None
        kind = os.fstat(fd).st_mode
        if stat.S_ISDIR(kind):
            os.close(fd)
            raise RpcError("path `%s` is not a file" % path, code=INVALID_REQUEST)
        return _Handle(fd, mode, cut_at_close=cut_at_close and stat.S_ISREG(kind)), False

    def _fd(self, handle_id: str, handle: Any, mode: str) -> int:
        """The descriptor of :meth:`_entry`."""
        return self._entry(handle_id, handle, mode).fd

    def _entry(self, handle_id: str, handle: Any, mode: str) -> _Handle:
        """The handle :meth:`begin` bound (its descriptor open until its operation ends), checked for ``mode``.

        An ``fs/open`` of the id that was still running is waited for first (:data:`OPEN_WAIT`).
        """
        if isinstance(handle, _Awaiting):  # None if the opens failed, or ran past OPEN_WAIT
            with self._lock:
                self._idle.wait_for(lambda: all(opening.done for opening in handle.openings), OPEN_WAIT)
                handle = handle.opened()
        if handle is None:
            raise RpcError("unknown file handle `%s`" % handle_id, code=NOT_FOUND)
        if handle.mode != mode:
            wanted = "write" if mode == "replace" else "read"
            raise RpcError("file handle `%s` is not open for %s" % (handle_id, wanted), code=INVALID_REQUEST)
        return handle

    def read_block(self, handle_id: str, offset: int, length: int, handle: Any) -> Dict[str, Any]:
        """``fs/readBlock`` through ``handle``, what :meth:`begin` returned for it."""
        _check_block_length("read", length)
        fd = self._fd(handle_id, handle, "read")
        if offset > MAX_FILE_OFFSET:  # a u64 the OS cannot seek to (reference: the same EINVAL)
            raise rpc_error(os_error(OSError(errno.EINVAL, os.strerror(errno.EINVAL))))
        try:
            data = os.pread(fd, length, offset)
        except OSError as exc:
            raise rpc_error(os_error(exc)) from None
        return {"chunk": data, "eof": len(data) < length}

    def write_block(self, handle_id: str, offset: int, data: bytes, handle: Any) -> None:
        """``fs/writeBlock`` through ``handle``, what :meth:`begin` returned for it."""
        _check_block_length("write", len(data))  # before the handle, as the reference does
        entry = self._entry(handle_id, handle, "replace")
        fd = entry.fd
        if offset + len(data) > MAX_FILE_OFFSET:
            raise RpcError("file write range exceeds the signed 64-bit file offset limit", code=INVALID_REQUEST)
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            raise rpc_error(os_error(exc)) from None
        if entry.cut_at_close:
            with self._lock:
                entry.end = max(entry.end, offset)

    def close(self, handle_id: str, commit: Optional[bool] = None, taken: Any = None) -> None:
        """Close a handle once the block operations sent before are done; an atomic one's file is put
        in place (:func:`~exec_server.server.fs.atomic.commit`) unless ``commit`` is False.

        ``taken``: what :meth:`begin_close` returned for this close, if anything.
        Block operations still running after :data:`CLOSE_BLOCKS_WAIT` s keep
        the descriptor: the last of them closes it (never a close under them,
        whose descriptor number another file could get); an atomic one's
        replacement is then discarded, with an error.

        Raises:
            RpcError: -32004 ``unknown file handle`` for an unknown id with
                ``commit`` True (the reference's close of an unknown id is no
                error); OS errors of the commit by kind (the temporary file is
                removed); -32603 when the wait ran out for an atomic commit.
        """
        with self._lock:
            entry = self._handles.pop(handle_id, None) if taken is None else taken
            if isinstance(entry, _Awaiting):  # sent right behind its fs/open: the handle that open makes
                pending = entry
                self._idle.wait_for(lambda: all(opening.done for opening in pending.openings), OPEN_WAIT)
                for opening in pending.openings:
                    opening.abandoned = not opening.done  # one that opens later keeps its handle
                entry = pending.opened()
                if entry is not None and self._handles.get(handle_id) is entry:
                    del self._handles[handle_id]
                else:
                    entry = None  # nothing opened, or the connection's end closed it
            stuck = entry is not None and not self._idle.wait_for(lambda: not entry.busy, CLOSE_BLOCKS_WAIT)
            if stuck:
                log.warning("fs/close of %s: block operations still run after %.0f s; the last of them closes it",
                            handle_id, CLOSE_BLOCKS_WAIT)
                entry.orphaned = True
        try:
            if stuck:
                if entry.replacement is not None and commit is not False:
                    raise RpcError("file handle `%s` still has block operations running after %.0f s; the "
                                   "replacement was discarded" % (handle_id, CLOSE_BLOCKS_WAIT), code=INTERNAL_ERROR)
                return
            self._finish(entry, handle_id, commit)
        finally:
            if taken is not None:
                with self._lock:
                    takers = self._closing[handle_id]
                    takers.remove(taken)
                    if not takers:
                        del self._closing[handle_id]
                    self._idle.notify_all()  # an fs/open of the same id may wait for this close

    @staticmethod
    def _finish(entry: Optional[_Handle], handle_id: str, commit: Optional[bool]) -> None:
        if entry is None:
            if commit:
                raise RpcError("unknown file handle `%s`" % handle_id, code=NOT_FOUND)
            return
        if entry.replacement is None:
            try:
                entry.cut()
            except OSError as exc:
                raise rpc_error(os_error(exc)) from None
            finally:
                os.close(entry.fd)
        elif commit is False:
            os.close(entry.fd)
            atomic.discard(entry.replacement.temporary)
        else:
            try:
                atomic.commit(entry.fd, entry.replacement)
            except OSError as exc:
                raise rpc_error(os_error(exc)) from None
            except FsError as exc:  # the target became a FIFO, device or socket meanwhile
                raise rpc_error(exc) from None

    def close_all(self) -> None:
        """Close every handle (the connection ended): atomic handles are discarded, later opens refused.

        A handle whose ``fs/close`` arrived before is left to that close,
        which still puts an atomic replace in place.  Does not wait: a
        handle with block operations still running is closed by the last of
        them to end (:meth:`end`), never under them (its descriptor number
        could be reused by another file meanwhile).
        Operations that had not started yet find it gone.
        """
        with self._lock:
            self._closed = True
            entries = list(self._handles.values())  # not the taken ones: their closes, already sent, finish them
            self._handles.clear()
            now = [entry for entry in entries if not entry.busy]
            for entry in entries:
                entry.orphaned = entry.busy > 0
            self._idle.notify_all()
        for entry in now:
            _discard(entry)
