"""Output spooled to disk: a process's output past the in-memory budget, readable by seq.

:class:`SpoolStore` is one per server (the session registry owns it): a private directory (mode 0700, created on first
use under ``spool_dir`` or the system's temporary directory, removed by :meth:`SpoolStore.close` or at interpreter exit;
one left by a server that was killed (SIGKILL, the OOM killer) is removed by the next server that makes its own there,
see :func:`reclaim_stale_spools`) and the byte budget all processes share (``spool_bytes_total``). :class:`Spool` is one
process's spool: its output chunks written through to segment files (mode 0600) as they arrive, and an index of them
kept in three flat arrays (seq, end offset, stream code), so a chunk costs 17 bytes of memory and no Python object.
Segment files are unlinked as soon as made (as ``tempfile.TemporaryFile``): their descriptors alone keep them, so their
space comes back when those are closed or the server's process ends, however it ends (``df`` counts them, ``du`` not).

Chunks never span segments. Past ``spool_bytes_per_process`` (or ``spool_chunks_per_process``) the oldest segment is
closed: eviction is oldest first and a segment at a time. When the shared budget is spent or a write fails (ENOSPC,
EDQUOT, any OSError, also from the unlink of a new segment) the spool stops taking output: what it holds stays readable,
later output is retained in memory only, and one warning is logged. A read (:meth:`Spool.read`) takes a contiguous range
of chunks with one ``os.pread`` per segment and hands back slices of that buffer. Thread-safe.

Not on Windows (no ``os.pread``): there :meth:`SpoolStore.spool` returns None and output is retained in memory only.
"""

import array
import bisect
import logging
import os
import stat
import threading
import weakref
from typing import Callable, List, Optional, Tuple

from exec_server.common import owner_lock

log = logging.getLogger(__name__)

#: Stream names by the code the index stores.
STREAMS = ("stdout", "stderr", "pty")
_CODES = {name: code for code, name in enumerate(STREAMS)}
#: Largest segment file; a process's budget is split in about eight segments, so eviction frees ~1/8 at a time.
SEGMENT_BYTES = 64 * 1024 * 1024
_MIN_SEGMENT_BYTES = 64 * 1024
#: Segments a per-process budget is split into.
SEGMENTS_PER_BUDGET = 8
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

#: Name prefix of the spool directories, and the file in each that its server holds locked (flock) while it lives.
SPOOL_PREFIX = "exec-server-spool-"
OWNER_LOCK = "owner.lock"

#: A chunk read back: (seq, stream, bytes as a memoryview slice of the read buffer).
SpooledChunk = Tuple[int, str, memoryview]


class SpoolStore:
    """The spool directory and the byte budget shared by every process of one server.  Thread-safe.

    Args:
        directory: where the private spool directory is made (None: the
            system's temporary directory).
        bytes_per_process: disk bytes one process's spool may hold; 0
            disables spooling.
        bytes_total: disk bytes all spools together may hold.
        chunks_per_process: chunks one process's index may hold.
        write: ``os.write``; the file layer's seam (tests inject OSError).
    """

    def __init__(self, directory: Optional[str], bytes_per_process: int, bytes_total: int,
                 chunks_per_process: int, write: Callable[[int, memoryview], int] = os.write):
        self.bytes_per_process = bytes_per_process
        self.bytes_total = bytes_total
        self.chunks_per_process = chunks_per_process
        self.segment_bytes = max(_MIN_SEGMENT_BYTES, min(SEGMENT_BYTES, bytes_per_process // SEGMENTS_PER_BUDGET))
        self.write = write
        self._parent = directory
        self._lock = threading.Lock()
        self._path: Optional[str] = None
        self._used = 0
        self._files = 0
        self._closed = False
        self._finalizer: Optional[weakref.finalize] = None

    @property
    def enabled(self) -> bool:
        return self.bytes_per_process > 0 and self.bytes_total > 0 and hasattr(os, "pread")

    @property
    def used(self) -> int:
        """Bytes all spools hold now."""
        with self._lock:
            return self._used

    @property
    def path(self) -> Optional[str]:
        """The private directory, once made."""
        with self._lock:
            return self._path

    def spool(self, label: str) -> Optional["Spool"]:
        """A new, empty spool (its first file is made on its first write); None if spooling is off."""
        if not self.enabled or self._closed:
            return None
        return Spool(self, label)

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes of the shared budget; False if that would pass it."""
        with self._lock:
            if self._closed or self._used + size > self.bytes_total:
                return False
            self._used += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._used -= size

    def new_file(self) -> Tuple[int, str]:
        """Create a segment file (mode 0600) in the private directory and unlink it; (fd, the name it had).

        Raises:
            OSError: the directory or file cannot be made or unlinked (the spool then stops).
        """
        with self._lock:
            if self._closed:
                raise OSError("the output spool is closed")
            if self._path is None:
                import tempfile  # here: tempfile (random) and shutil cost a server's start-up ~3 ms (#17)
                self._path = tempfile.mkdtemp(prefix=SPOOL_PREFIX, dir=self._parent)  # mode 0700
                owner = _lock_owner(self._path)
                self._finalizer = weakref.finalize(self, _remove_spool_dir, self._path, owner)
                threading.Thread(target=reclaim_stale_spools, args=(os.path.dirname(self._path), self._path),
                                 name="exec-server-spool-reclaim", daemon=True).start()  # off the output path
            self._files += 1
            path = os.path.join(self._path, "%08d.spool" % self._files)
        fd = os.open(path, _FLAGS, 0o600)
        try:
            os.unlink(path)  # the descriptor keeps it: no output stays on disk after the process, however it ends
        except BaseException:
            os.close(fd)
            raise
        return fd, path

    def close(self) -> None:
        """Stop spooling and remove the directory (call after every spool is discarded)."""
        with self._lock:
            self._closed = True
            finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer()


def _lock_owner(path: str) -> Optional[int]:
    """Hold ``path``'s owner lock for this process's life (:func:`owner_lock.hold`); None without flock."""
    try:
        return owner_lock.hold(os.path.join(path, OWNER_LOCK))
    except OSError as exc:  # no flock here (ENOLCK: NFS without lockd; Windows): spool on, never reclaimed by others
        log.warning("output spool %s: no owner lock (%s); a later server cannot tell it is in use", path, exc)
        return None


def _remove_spool_dir(path: str, owner: Optional[int]) -> None:
    import shutil
    shutil.rmtree(path, True)
    if owner is not None:
        os.close(owner)  # the lock goes with the descriptor


def reclaim_stale_spools(parent: str, keep: str) -> List[str]:
    """Remove the spool directories in ``parent`` whose server is gone; returns their paths.

    A directory is stale when its ``owner.lock`` can be locked: the server
    that made it held that lock until it died.  Only directories of this
    user are looked at; one without the file (being made, or of an older
    version) is left alone.  Errors skip the directory.
    """
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not entry.name.startswith(SPOOL_PREFIX) or entry.path == keep:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
        except OSError:
            continue
        fd = owner_lock.take_abandoned(os.path.join(entry.path, OWNER_LOCK))
        if fd is None:
            continue  # its server lives (or the directory is being made)
        try:
            import shutil
            shutil.rmtree(entry.path, True)
            removed.append(entry.path)
            log.info("removed the output spool of a server that is gone: %s", entry.path)
        finally:
            os.close(fd)
    return removed


class _Segment:
    __slots__ = ("fd", "path", "base", "end", "chunks")

    def __init__(self, fd: int, path: str, base: int):
        self.fd = fd
        self.path = path
        self.base = base  # logical offset of the file's first byte
        self.end = base  # logical offset after its last byte
        self.chunks = 0


class Spool:
    """One process's output on disk: append, read by seq, evict oldest first, discard.  Thread-safe.

    Offsets are logical (continuous across segments); a chunk's bytes are
    ``[end of the previous chunk, its end)``.
    """

    def __init__(self, store: SpoolStore, label: str):
        self._store = store
        self._label = label
        self._lock = threading.Lock()  # guards everything below; held around file I/O and close
        self._seqs = array.array("q")
        self._ends = array.array("q")
        self._streams = bytearray()
        self._first_offset = 0  # logical offset of the first indexed chunk
        self._segments: List[_Segment] = []
        self._bytes = 0  # bytes of live segments, as reserved in the store
        self._stopped: Optional[str] = None  # why it takes no more output
        self._discarded = False

    # ---------------------------------------------------------------- writing
    def append(self, seq: int, stream: str, data: bytes) -> bool:
        """Write one chunk through to disk; False (and no further appends) once full or failing."""
        size = len(data)
        with self._lock:
            if self._stopped is not None or self._discarded:
                return False
            store = self._store
            current = self._segments[-1] if self._segments else None
            if current is not None and current.chunks and (
                    current.end - current.base + size > store.segment_bytes
                    or current.chunks * SEGMENTS_PER_BUDGET >= store.chunks_per_process):
                current = None  # seal it; the next write starts a new segment
            while len(self._segments) > (0 if current is None else 1) and (
                    self._bytes + size > store.bytes_per_process or len(self._seqs) >= store.chunks_per_process):
                self._evict_oldest_locked()
            if self._bytes + size > store.bytes_per_process or len(self._seqs) >= store.chunks_per_process:
                return self._stop_locked("a chunk larger than the per-process spool budget")
            if not store.reserve(size):
                return self._stop_locked("the server's spool budget (spool_bytes_total) is spent")
            try:
                if current is None:
                    offset = self._segments[-1].end if self._segments else self._first_offset
                    fd, path = store.new_file()
                    current = _Segment(fd, path, offset)
                    self._segments.append(current)
                view = memoryview(data)
                write = store.write
                while view:
                    view = view[write(current.fd, view):]
            except OSError as exc:
                store.release(size)
                return self._stop_locked("writing failed: %s" % (exc.strerror or exc))
            self._bytes += size
            current.end += size
            current.chunks += 1
            if not self._seqs:
                self._first_offset = current.end - size
            self._seqs.append(seq)
            self._ends.append(current.end)
            self._streams.append(_CODES[stream])
            return True

    def _stop_locked(self, reason: str) -> bool:
        self._stopped = reason
        log.warning("output spool full (%s): later output of %s is retained in memory only", reason, self._label)
        return False

    def _evict_oldest_locked(self) -> None:
        segment = self._segments.pop(0)
        count = segment.chunks
        del self._seqs[:count], self._ends[:count], self._streams[:count]
        self._first_offset = segment.end
        self._drop_file(segment)

    def _drop_file(self, segment: _Segment) -> None:
        size = segment.end - segment.base
        self._bytes -= size
        self._store.release(size)
        try:
            os.close(segment.fd)  # unlinked when made: closing it frees its disk space
        except OSError:
            pass

    def _forget_cut_locked(self, segment: _Segment, cut: int) -> None:
        """Drop from the index ``segment``'s chunks from index ``cut`` on (its file no longer holds them): a later
        read skips them (a seq gap, which the client reports as lost output), not indexed and unreadable forever."""
        stop = bisect.bisect_right(self._ends, segment.end, cut)
        if stop <= cut:
            return
        del self._seqs[cut:stop], self._ends[cut:stop], self._streams[cut:stop]
        segment.chunks -= stop - cut
        if cut == 0:  # the first indexed chunk now starts in the next segment
            self._first_offset = segment.end

    def discard(self) -> None:
        """Close every segment file (freeing its space) and forget the index (the process is forgotten); idempotent."""
        with self._lock:
            self._discarded = True
            segments, self._segments = self._segments, []
            for segment in segments:
                self._drop_file(segment)
            self._seqs = array.array("q")
            self._ends = array.array("q")
            self._streams = bytearray()

    # ---------------------------------------------------------------- reading
    @property
    def stopped(self) -> bool:
        with self._lock:
            return self._stopped is not None

    @property
    def disk_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._seqs)

    def first_after(self, after_seq: int) -> Optional[int]:
        """The seq of the first spooled chunk after ``after_seq``, or None."""
        with self._lock:
            index = bisect.bisect_right(self._seqs, after_seq)
            return self._seqs[index] if index < len(self._seqs) else None

    def extent_after(self, after_seq: int) -> Tuple[int, int]:
        """Bytes and number of the spooled chunks after ``after_seq`` (what a read from there may return at most)."""
        with self._lock:
            first = bisect.bisect_right(self._seqs, after_seq)
            if first >= len(self._seqs):
                return 0, 0
            return self._ends[-1] - (self._ends[first - 1] if first else self._first_offset), len(self._seqs) - first

    def read(self, after_seq: int, before_seq: int, max_bytes: Optional[int],
             at_least_one: bool = True, max_chunks: Optional[int] = None) -> List[SpooledChunk]:
        """Spooled chunks with ``after_seq < seq < before_seq``, oldest first, within ``max_bytes``.

        The budget follows PROTOCOL.md 5.4: the first chunk always (unless
        ``at_least_one`` is false: a read continuing after other chunks),
        then stop before one that would pass ``max_bytes`` (None: no
        budget); at most ``max_chunks`` chunks (None: no limit).  One
        ``os.pread`` per segment covered; the chunks are slices of those buffers.
        """
        with self._lock:
            seqs, ends = self._seqs, self._ends
            first = bisect.bisect_right(seqs, after_seq)
            stop = bisect.bisect_left(seqs, before_seq, first)
            if max_chunks is not None:
                stop = min(stop, first + max_chunks)
            if first >= stop:
                return []
            start = ends[first - 1] if first else self._first_offset
            if max_bytes is not None:
                fitting = bisect.bisect_right(ends, start + max_bytes, first, stop)
                if fitting == first and not at_least_one:
                    return []
                stop = max(first + 1, fitting)
            chunks: List[SpooledChunk] = []
            index = first
            for segment in self._segments:
                if segment.end <= start:
                    continue
                if index >= stop:
                    break
                last = min(stop, bisect.bisect_right(ends, segment.end, index, stop))
                begin = ends[index - 1] if index > first else start
                begin = max(begin, segment.base)
                want = ends[last - 1] - begin
                try:
                    buffer = memoryview(os.pread(segment.fd, want, begin - segment.base))
                    trouble = "is shorter than its index"
                except OSError as exc:  # EIO: the disk failed under it; lost as if the file were cut here
                    buffer, trouble = memoryview(b""), "cannot be read (%s)" % (exc.strerror or exc)
                short = len(buffer) < want
                if short:  # the file was cut short behind our back: serve what is whole, forget the rest
                    log.warning("output spool file %s %s: the output it held from there is lost", segment.path, trouble)
                    last = bisect.bisect_right(ends, begin + len(buffer), index, last)
                    self._forget_cut_locked(segment, last)
                streams = self._streams
                position = begin
                for i in range(index, last):
                    end = ends[i]
                    chunks.append((seqs[i], STREAMS[streams[i]], buffer[position - begin:end - begin]))
                    position = end
                if short:
                    break
                index = last
            return chunks
