"""Build a child's environment from ``env`` and ``envPolicy``.

Follows the Codex exec-server rules (PROTOCOL.md 5.2,
``codex-rs/core/src/exec_env.rs``).  Pure functions, no I/O.
"""

import re
from typing import Any, Dict, Iterable, Mapping, Optional

#: Variables kept by ``inherit: "core"`` (``LANG`` as reference 0.169.0 does).
CORE_VARIABLES = ("HOME", "LOGNAME", "PATH", "SHELL", "USER", "USERNAME", "TMPDIR", "TEMP", "TMP", "LANG")
#: Names dropped unless ``ignoreDefaultExcludes`` is true.
DEFAULT_EXCLUDES = ("*KEY*", "*SECRET*", "*TOKEN*")
#: Control variables never passed to a child.
REMOVED_VARIABLES = ("CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE",)
_NOT_QUESTION = re.compile(r"[^?]")


def _fits(text: str, at: int, piece: str) -> bool:
    """Whether ``piece`` (``?`` any one character, else literal) matches ``text`` at ``at``."""
    if at < 0 or at + len(piece) > len(text):
        return False
    offset = 0
    for run in piece.split("?"):
        if run and not text.startswith(run, at + offset):
            return False
        offset += len(run) + 1
    return True


def _utf32(text: str) -> int:
    return int.from_bytes(text.encode("utf-32-le", "surrogatepass"), "little")


def _find(text: str, piece: str, start: int, end: int) -> int:
    """The first position from ``start`` where ``piece`` fits and ends by ``end``; -1 if none.

    The places where its longest run of literal characters occurs are the candidates, each compared
    whole at once: both as UTF-32 integers, the ``?`` lanes masked out (a loop over the runs of each
    would make ``*A?A?...`` against a long name far slower than the reference).
    """
    if "?" not in piece:
        return text.find(piece, start, end)
    run = max(piece.split("?"), key=len)
    if not run:  # only "?": any characters do
        return start if start + len(piece) <= end else -1
    offset = piece.index(run)
    limit = end - (len(piece) - offset - len(run))  # where the run must end by
    if limit < start + offset + len(run):
        return -1  # (a negative limit would count from the end of the text)
    # one lane of 32 bits per character: all ones where the piece has a literal, zero for "?"
    mask = _utf32(_NOT_QUESTION.sub("\x01", piece).replace("?", "\x00")) * 0xFFFFFFFF
    wanted = _utf32(piece) & mask
    found = text.find(run, start + offset, limit)
    while found >= 0:
        if _utf32(text[found - offset:found - offset + len(piece)]) & mask == wanted:
            return found - offset
        found = text.find(run, found + 1, limit)
    return -1


def glob_match(name: str, pattern: str) -> bool:
    """Whether ``name`` matches ``pattern`` as the reference's wildmatch does: ``*`` any characters, ``?`` any
    one, every other character itself (``[`` too: no classes, no escapes).

    Matched here piece by piece (the pieces between stars, each at its first place), not through
    ``fnmatch``: its classes differ from the reference, and it compiles and caches a regular expression per
    pattern (up to 32768 of them, each as large as a client's message may make it: memory never returned).
    """
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return len(name) == len(pattern) and _fits(name, 0, pattern)
    first, last = pieces[0], pieces[-1]
    end = len(name) - len(last)
    if end < len(first) or not _fits(name, 0, first) or not _fits(name, end, last):
        return False
    position = len(first)
    for piece in pieces[1:-1]:
        found = _find(name, piece, position, end) if piece else position
        if found < 0:
            return False
        position = found + len(piece)
    return True


def _matches(name: str, patterns: Iterable[str]) -> bool:
    upper = name.upper()
    return any(glob_match(upper, pattern.upper()) for pattern in patterns)


def child_environment(
    env: Mapping[str, str],
    policy: Optional[Mapping[str, Any]],
    server_environ: Mapping[str, str],
) -> Dict[str, str]:
    """The exact environment of a child process.

    Args:
        env: the request's ``env``, laid over everything else.
        policy: the request's ``envPolicy`` (already schema-checked) or None;
            without one the child gets exactly ``env``.
        server_environ: the server's own environment.
    Returns:
        a new dict of names to values.
    """
    if policy is None:
        result = dict(env)
    else:
        inherit = policy["inherit"]
        if inherit == "all":
            result = dict(server_environ)
        elif inherit == "core":
            result = {k: v for k, v in server_environ.items() if k.upper() in CORE_VARIABLES}
        else:
            result = {}
        if not policy["ignoreDefaultExcludes"]:
            result = {k: v for k, v in result.items() if not _matches(k, DEFAULT_EXCLUDES)}
        if policy["exclude"]:
            result = {k: v for k, v in result.items() if not _matches(k, policy["exclude"])}
        result.update(policy["set"])
        if policy["includeOnly"]:
            result = {k: v for k, v in result.items() if _matches(k, policy["includeOnly"])}
        result.update(env)
    for name in REMOVED_VARIABLES:
        result.pop(name, None)
    return result
