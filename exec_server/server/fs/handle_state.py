"""The state behind a connection's file handles (:mod:`exec_server.server.fs.handles`).

A :class:`Handle` is an open file; an :class:`Opening` an ``fs/open`` that
arrived and has not finished; an :class:`Awaiting` what a block operation or
a close sent right behind such opens is bound to, until one of them opens.
"""

import os
from typing import Any, List, NamedTuple, Optional, Tuple

from exec_server.server.fs import atomic


def discard(entry: "Handle") -> None:
    """Close a handle nobody will close any more; an atomic one's temporary file is removed (target unchanged),
    one written in place cut at its furthest write (what was written, as the reference's replace leaves it)."""
    try:
        entry.cut()
    except OSError:
        pass
    try:
        os.close(entry.fd)
    except OSError:
        pass
    if entry.replacement is not None:
        atomic.discard(entry.replacement.temporary)


class Handle:
    """An open handle: its descriptor and mode; for an atomic one, where its file goes at close."""

    __slots__ = ("fd", "mode", "replacement", "busy", "orphaned", "claimed", "cut_at_close", "end")

    def __init__(self, fd: int, mode: str, replacement: Optional[atomic.Replacement] = None,
                 cut_at_close: bool = False):
        self.fd, self.mode, self.replacement = fd, mode, replacement
        #: written over, not emptied at the open, and cut at ``end`` (the end of the furthest write) by its
        #: close: an atomic replace written in place, whose writes may come from the file itself
        self.cut_at_close, self.end = cut_at_close, 0
        self.busy = 0  # block operations bound to it (begin) and not ended
        self.orphaned = False  # nobody closes it any more: the last end() does
        self.claimed = False  # a close that arrived before it was open takes it: later requests find no handle

    def cut(self) -> None:
        """One written in place (``cut_at_close``): cut the file at its furthest write.  Raises OSError."""
        if self.cut_at_close:
            os.ftruncate(self.fd, self.end)

    @property
    def closes_slowly(self) -> bool:
        """Whether closing it may block: it waits for block operations bound to it, or commits (fsync)."""
        return self.replacement is not None or self.busy > 0


class Opening:
    """An ``fs/open`` that arrived and has not finished (``FileHandles.begin_open``)."""

    __slots__ = ("handle_id", "after", "opens_before", "done", "entry", "waiters", "closing", "abandoned")

    def __init__(self, handle_id: str, after: List[Any], opens_before: List["Opening"]) -> None:
        self.handle_id = handle_id
        self.after = after  # what the closes of the id that arrived before it took: it waits for them
        self.opens_before = opens_before  # the id's opens that arrived before it: it runs after them, in order
        self.done = False
        self.entry: Optional[Handle] = None  # what it opened (None: it failed, or never ran)
        self.waiters = 0  # block operations that arrived meanwhile: busy on its handle once it is open
        self.closing = False  # an fs/close of the id arrived meanwhile: that close takes the handle
        self.abandoned = False  # that close stopped waiting: the handle stays open, for a later close


class Awaiting(NamedTuple):
    """What ``FileHandles.begin`` (``begin_close``) binds a block operation (a close) to while the id's
    ``fs/open`` requests still run: it uses the handle of the first of them that opens, in arrival order."""

    openings: Tuple[Opening, ...]
    closes_slowly = True  # a close of it waits for the opens: on a thread of its own

    def opened(self) -> Optional[Handle]:
        return next((opening.entry for opening in self.openings if opening.entry is not None), None)
