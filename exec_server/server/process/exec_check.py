"""What ``execve`` would say of a program, told before the containment chain runs it.

The ``isolate`` chain's last step (``env``, ``dumb-init``) starts the program
with ``execvp``, which runs a file the kernel refuses as ENOEXEC with
``/bin/sh`` (an executable data file's lines would run as commands) and tells
a missing ``#!`` interpreter as its own exit 127.  So :func:`check_executable`
reads the start of the file as the kernel's loaders do (Linux
``fs/binfmt_elf.c``, ``fs/binfmt_script.c``) and raises the OSError that
``execve`` would, as ``inherit`` mode (``Popen``) and the reference report it.
"""

import errno
import functools
import os
import stat
import sys
from typing import Optional

#: Bytes of a file's start the kernel reads to choose how to run it (``BINPRM_BUF_SIZE``).
EXEC_HEADER_BYTES = 256
#: Script interpreters the kernel follows in a row (a ``#!`` naming a script...: ``BINPRM_MAX_RECURSION``).
MAX_INTERPRETER_DEPTH = 4
#: The smallest ELF header (32-bit); a shorter file is not one the ELF loader takes.
ELF32_HEADER_BYTES = 52
#: ELF ``e_type`` values the loader runs: an executable, a position-independent one (or a shared object).
ELF_RUNNABLE_TYPES = (2, 3)
#: ELF ``e_machine`` values a kernel runs natively, by ``os.uname().machine`` (its own and its compat
#: modes: i386 on x86-64, 32-bit ARM on AArch64); another machine's ELF file needs binfmt_misc.
ELF_MACHINES = {"x86_64": (62, 3), "aarch64": (183, 40), "arm64": (183, 40), "i386": (3,), "i686": (3,),
                "armv7l": (40,), "ppc64le": (21,), "ppc64": (21, 20), "s390x": (22,), "riscv64": (243,)}
#: Where binfmt_misc lists the formats registered beside ELF and ``#!``.
BINFMT_MISC = "/proc/sys/fs/binfmt_misc"


def check_executable(path: str, cwd: str, depth: int = 0) -> None:
    """Raise what ``execve(path)`` would for a file the kernel cannot run; nothing for one it can.

    Args:
        path: the program (absolute, or relative to ``cwd``).
        cwd: the child's working directory, where a relative ``#!``
            interpreter is looked up.
    Raises:
        OSError: ENOENT (missing, or a ``#!`` interpreter that is), EACCES
            (not a regular file, or not executable), ENOEXEC (neither a
            runnable ELF file of this machine nor ``#!``, unless binfmt_misc
            has formats registered: the kernel may run it), or the error of
            the ``stat`` (ELOOP, ENOTDIR); always with ``path`` as its file
            name, as the kernel names the script and not its interpreter.
    """
    path = os.path.join(cwd, path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    if not stat.S_ISREG(mode) or not os.access(path, os.X_OK):  # a directory, FIFO or device: never opened
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(EXEC_HEADER_BYTES)
    except OSError:  # executable, not readable: the kernel's to judge
        return
    if head.startswith(b"#!"):
        interpreter = _interpreter(head)
        if interpreter is None:
            raise OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC), path)
        if depth < MAX_INTERPRETER_DEPTH:
            try:
                check_executable(os.fsdecode(interpreter), cwd, depth + 1)
            except OSError as refused:
                raise OSError(refused.errno, refused.strerror, path) from None
        return
    if _runnable_elf(head) or _binfmt_misc_formats():
        return
    raise OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC), path)


def _interpreter(head: bytes) -> Optional[bytes]:
    """The interpreter a ``#!`` line names, as ``binfmt_script`` splits it (spaces and tabs; a ``\\r`` is part of
    the name); None where the kernel says ENOEXEC (no name, or one cut off at the end of the buffer)."""
    buffer = head.ljust(EXEC_HEADER_BYTES, b"\0")[:EXEC_HEADER_BYTES - 1]  # the kernel's, NUL-terminated
    line = buffer[2:].split(b"\n", 1)[0]
    if b"\n" not in buffer:
        name_and_after = line.lstrip(b" \t")
        if not name_and_after or not any(end in name_and_after for end in (b" ", b"\t", b"\0")):
            return None
    words = line.split(b"\0", 1)[0].replace(b"\t", b" ").split(b" ")
    return next((word for word in words if word), None)


def _runnable_elf(head: bytes) -> bool:
    """Whether ``head`` starts an ELF file this host's loader runs: a whole header, a runnable type, this host's
    byte order and one of its machines (any, on a machine :data:`ELF_MACHINES` does not know)."""
    if not head.startswith(b"\x7fELF") or len(head) < ELF32_HEADER_BYTES or head[4] not in (1, 2):
        return False
    if head[5] != (1 if sys.byteorder == "little" else 2):
        return False
    elf_type, machine = int.from_bytes(head[16:18], sys.byteorder), int.from_bytes(head[18:20], sys.byteorder)
    machines = ELF_MACHINES.get(_kernel_machine())
    return elf_type in ELF_RUNNABLE_TYPES and (machines is None or machine in machines)


@functools.lru_cache(maxsize=1)
def _kernel_machine() -> str:
    """This kernel's ``os.uname().machine``, read once: it does not change while the server runs."""
    return os.uname().machine


def _binfmt_misc_formats() -> bool:
    """Whether binfmt_misc has formats registered (False where it is not mounted: none can be seen)."""
    try:
        return any(name not in ("register", "status") for name in os.listdir(BINFMT_MISC))
    except OSError:
        return False
