"""Records on disk of the mount point files a server has made, so that a later server removes a killed one's.

A server killed with SIGKILL cannot remove the empty mount point files of
its sandboxes (:mod:`~exec_server.server.fs.mount_points`); they would stay
in the user's folders for good (an empty ``.git`` file breaks ``git``
there).  So each server that has made such files keeps a record of them,
with each file's identity, in a folder of its user:
``$TMPDIR/exec-server-mount-points-<uid>/`` (mode 0700; a folder that is not
the user's own, or that others may write, is not used, and files are then
cleaned only by the server that made them, as before).  A record is a JSON
object ``{path: [device, inode, change time in ns]}`` in
``<pid>-<random>.json``, held under an exclusive ``flock`` for as long as
its server lives (:mod:`~exec_server.common.owner_lock`).  Before each
sandboxed ``process/start``, a server sweeps the folder: a record whose
lock it can take belongs to a server that is gone; each file it names that
is still that same empty file (mode 0444, as made) is removed, then the
record; a file that is a mount point in any mount namespace this process
can see (``/proc/*/mountinfo``: a live sandbox of another server binds it as
an existing path, or one that outlived the killed server) is kept, and so
is its record, for a later sweep: removing it would take the mount away
there, and that sandbox could then make the protected path.  A record not
owned by this user is dropped unread.  A sandbox in which the folder would
be writable gets an empty tmpfs over it, as over the folders of the same
name in ``/tmp`` and ``/var/tmp`` (other servers' TMPDIR), see
:func:`~exec_server.server.fs.helper.bubblewrap_command`: a sandboxed
process cannot forge a record naming a file to remove.  Left: a server
whose TMPDIR lies elsewhere keeps its records where another server's
sandbox may be allowed to write; a record forged there can name only an
empty 0444 file that no namespace mounts.

The reference keeps a registry of the same kind for its own sandbox
(``codex-bwrap-synthetic-mount-targets`` in the temporary folder).
"""

import json
import logging
import os
import re
import stat
import time
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from exec_server.common import owner_lock

log = logging.getLogger(__name__)

#: Age past which a staged record (``*.json.new``) no live server holds is removed, seconds.
STAGED_RECORD_AGE = 60.0

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

Identity = Tuple[int, int, int]


def default_folder() -> str:
    """``$TMPDIR/exec-server-mount-points-<uid>`` (the folder :func:`tempfile.gettempdir` picks)."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), folder_name())


def folder_name() -> str:
    """``exec-server-mount-points-<uid>``: the records folder's name, wherever it is."""
    return "exec-server-mount-points-%d" % os.geteuid()


class MountRecords:
    """One server's record of the mount point files it made, and the sweep of gone servers' records.

    Not thread-safe: used under :attr:`MountPoints.lock`.  ``folder`` None:
    :func:`default_folder`, chosen at first use.
    """

    def __init__(self, folder: Optional[str] = None):
        self._folder = folder
        self._usable: Optional[bool] = None  # as found by the last check (None: not checked yet)
        self._fd: Optional[int] = None  # our record, locked while it exists
        self._name = ""

    def folder(self) -> Optional[str]:
        """The registry folder, made if missing (checked at each call); None where records cannot be kept safely."""
        try:
            import fcntl  # noqa: F401 (POSIX only: elsewhere no records)
        except ImportError:
            return None
        if self._folder is None:
            self._folder = default_folder()
        try:
            try:
                os.mkdir(self._folder, 0o700)
            except FileExistsError:
                pass
            info = os.lstat(self._folder)
            problem = None
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
                problem = "not a private folder of this user"
        except OSError as error:
            problem = str(error)
        if problem is not None and self._usable is not False:  # said once, not at every sandboxed start
            log.warning("mount point records not kept in %s: %s", self._folder, problem)
        self._usable = problem is None
        return self._folder if self._usable else None

    def guarded(self) -> List[str]:
        """The record folders a sandbox must not write, resolved as a profile's folders are (TMPDIR may lie behind
        a symlink): this server's (made if missing), and those of the same name in ``/tmp`` and ``/var/tmp``
        where they exist (other servers', whose TMPDIR is the default)."""
        own = self.folder()
        folders = [os.path.realpath(own)] if own is not None else []
        for parent in ("/tmp", "/var/tmp"):
            other = os.path.realpath(os.path.join(parent, folder_name()))
            if other not in folders and os.path.isdir(other):
                folders.append(other)
        return folders

    def save(self, made: Dict[str, Identity]) -> None:
        """Record ``made`` (path -> identity) as this server's files; nothing left to record removes the record."""
        folder = self.folder()
        if folder is None:
            return
        try:
            if not made:
                if self._fd is not None:
                    fd, self._fd = self._fd, None
                    try:
                        os.unlink(os.path.join(folder, self._name))
                    finally:
                        os.close(fd)
                return
            if self._fd is None:
                self._create(folder)
            assert self._fd is not None
            data = json.dumps(made).encode("ascii")  # names not in UTF-8 are escaped surrogates
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError as error:
            log.warning("mount point record not written: %s", error)

    def _create(self, folder: str) -> None:
        """Make our record, locked before a sweep can see it."""
        name = "%d-%s.json" % (os.getpid(), os.urandom(6).hex())
        self._fd, self._name = owner_lock.hold(os.path.join(folder, name)), name

    def sweep(self) -> int:
        """Remove the files recorded by servers that are gone, and their records; returns how many files."""
        folder = self.folder()
        if folder is None:
            return 0
        try:
            names = os.listdir(folder)
        except OSError:
            return 0
        for name in names:  # a record staged by a server killed before it renamed it (owner_lock.hold)
            if name.endswith(".json.new") and _stale(os.path.join(folder, name)):
                _drop(os.path.join(folder, name))
        return sum(_sweep_record(os.path.join(folder, name)) for name in names
                   if name.endswith(".json") and name != self._name)


def _stale(path: str) -> bool:
    """Whether ``path`` has not changed for :data:`STAGED_RECORD_AGE` seconds (a live server renames it at once)."""
    try:
        return time.time() - os.lstat(path).st_mtime > STAGED_RECORD_AGE
    except OSError:
        return False


def _drop(path: str) -> None:
    """Remove the file at ``path`` if no live server holds it."""
    fd = owner_lock.take_abandoned(path)
    if fd is not None:
        try:
            os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)


def _sweep_record(path: str) -> int:
    """The record at ``path``, if its server is gone: remove its files that are unchanged, then it."""
    fd = owner_lock.take_abandoned(path)
    if fd is None:  # its server lives, or another sweep took it
        return 0
    removed = kept = 0
    mounted: List[Set[str]] = []  # read once, at the first file to remove

    def in_use(file: str) -> bool:  # a live sandbox's mount: unlinking the file would unmount it there
        if not mounted:
            mounted.append(mount_points_in_use())
        return file in mounted[0]

    try:
        if os.fstat(fd).st_uid != os.geteuid():
            made = {}  # not written by a server of this user: its files are not looked at
        else:
            try:
                with os.fdopen(os.dup(fd), "rb") as record:
                    made = json.loads(record.read() or b"{}")
            except ValueError:  # cut by the kill: its files cannot be told, only the record goes
                made = {}
        for file, identity in made.items() if isinstance(made, dict) else ():
            outcome = remove_if_made(file, identity, in_use)
            removed += outcome is True
            kept += outcome is None
        if not kept:
            os.unlink(path)
    except OSError:  # another sweep removed it first
        pass
    finally:
        os.close(fd)
    if removed:
        log.info("removed %d mount point files of a server that is gone", removed)
    if kept:
        log.info("kept %d mount point files of a server that is gone: still mounted in a sandbox", kept)
    return removed


def remove_if_made(file: str, identity: Sequence[int], in_use: Optional[Callable[[str], bool]] = None
                   ) -> Optional[bool]:
    """Remove ``file`` if it is still the empty read-only (0444) file made, ``identity`` ``(device, inode,
    change time in ns)``; returns True when removed, None when ``in_use(file)`` kept it, else False.

    Checked and removed in its folder, opened once without following a
    symlink: a sandboxed process that may write above it cannot swap the
    folder for a symlink in between and so send the unlink to a file of the
    same name elsewhere (a worktree's ``.git``).
    """
    folder = None
    try:
        folder = os.open(os.path.dirname(file), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC)
        name = os.path.basename(file)
        info = os.lstat(name, dir_fd=folder)
        if not (stat.S_ISREG(info.st_mode) and info.st_size == 0 and stat.S_IMODE(info.st_mode) == 0o444
                and [info.st_dev, info.st_ino, info.st_ctime_ns] == list(identity)):
            return False
        if in_use is not None and in_use(file):
            return None
        os.unlink(name, dir_fd=folder)
        return True
    except (OSError, TypeError, ValueError):  # gone, its folder went or is no folder; a malformed record
        return False
    finally:
        if folder is not None:
            os.close(folder)


def _unescape(field: bytes) -> str:
    """A mountinfo path: ``\\040`` and the like are its octal escapes."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda match: bytes([int(match.group(1), 8) & 0xFF]), field))


def mount_points_in_use(proc: str = "/proc") -> Set[str]:
    """The mount points of every mount namespace this process can read (``proc/<pid>/mountinfo``, each namespace
    once); empty without ``/proc``."""
    points: Set[str] = set()
    seen: Set[str] = set()
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return points
    for pid in pids:
        try:
            namespace = os.readlink("%s/%s/ns/mnt" % (proc, pid))
        except OSError:  # gone, or not ours to inspect: its mountinfo is read anyway
            namespace = None
        if namespace is not None:
            if namespace in seen:
                continue
            seen.add(namespace)
        try:
            with open("%s/%s/mountinfo" % (proc, pid), "rb") as lines:
                for line in lines:
                    fields = line.split(b" ", 5)
                    if len(fields) > 4:
                        points.add(_unescape(fields[4]))
        except OSError:
            pass
    return points
