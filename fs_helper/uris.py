"""``file://`` URIs <-> native paths, following WHATWG URL parsing.

Every path on the wire is an absolute file URI (PROTOCOL.md 8.1):
percent-escapes are decoded and dot segments resolved when parsing, and
emitted URIs are percent-encoded.  Pure functions, no I/O.  Shared by the
server (``exec_server.protocol.uris``) and the sandboxed helper, so it imports nothing
of ``exec_server``.
"""

import ntpath
import posixpath
import sys
from typing import Optional
from urllib.parse import quote, unquote, urlsplit

RELATIVE_URL = "invalid URI: relative URL without a base"

#: Characters left as they are in an emitted path (WHATWG's path
#: percent-encode set encodes space, ``"#<>?`{}`` and controls; ``%`` is
#: encoded too so that every path round-trips).
_PATH_SAFE = "/!$&'()*+,;=:@[]^|~-._"


def platform_os(platform: Optional[str] = None) -> str:
    """Rust ``std::env::consts::OS`` name of the platform: linux, macos, windows."""
    platform = platform or sys.platform
    if platform.startswith("win"):
        return "windows"
    if platform == "darwin":
        return "macos"
    return "linux" if platform.startswith("linux") else platform


class UriError(Exception):
    """A URI that is not a usable file URI on this host.

    ``kind`` is ``"relative"``, ``"scheme"``, ``"query"``, ``"fragment"``, ``"host"`` or ``"nul"``; ``message`` is
    the protocol text; ``code`` the JSON-RPC code the file system methods use
    (host errors are -32600, the others -32602).
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = -32600 if kind == "host" else -32602


def _resolve_dots(path: str) -> str:
    parts = []
    for segment in path.split("/")[1:]:
        decoded = segment.lower()
        if decoded in (".", "%2e"):
            continue
        if decoded in ("..", ".%2e", "%2e.", "%2e%2e"):
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    resolved = "/" + "/".join(parts)
    if path.endswith(("/.", "/..", "/")) and resolved != "/":
        resolved += "/"
    return resolved


def uri_to_path(uri: str, windows: Optional[bool] = None) -> str:
    """Native absolute path of a file URI.

    Args:
        uri: e.g. ``file:///tmp/a%20b``.
        windows: parse for a Windows host (default: this host).
    Returns:
        the native path (``/tmp/a b``); a trailing slash is kept off except
        for the root.
    Raises:
        UriError: relative text or a plain path (``relative``), another
            scheme (``scheme``), a query or a fragment, even empty (``?``:
            ``query``, ``#``: ``fragment``), a host part (``host``), or a NUL
            byte (``%00``, ``nul``).
    """
    if windows is None:
        windows = sys.platform.startswith("win")
    text = uri.strip()
    scheme_end = text.find(":")
    scheme = text[:scheme_end] if scheme_end > 0 else ""
    if not scheme or not scheme[0].isalpha() or not all(c.isalnum() or c in "+-." for c in scheme):
        raise UriError("relative", RELATIVE_URL)
    if scheme.lower() != "file":
        raise UriError("scheme", "unsupported path URI scheme `%s`" % scheme.lower())
    before_fragment, fragment_mark, _ = text.partition("#")
    if "?" in before_fragment:  # even an empty one: the reference's texts, -32602
        raise UriError("query", "query parameters are not allowed in path URIs")
    if fragment_mark:
        raise UriError("fragment", "fragments are not allowed in path URIs")
    parts = urlsplit(text.replace("\\", "/"))
    host = parts.netloc
    if host.lower() == "localhost":
        host = ""
    raw_path = parts.path or "/"
    if not raw_path.startswith("/"):
        raw_path = "/" + raw_path
    raw_path = _resolve_dots(raw_path)
    if host:
        shown = "file://%s%s" % (host.lower(), raw_path)
        raise UriError("host", "'%s' is invalid on '%s'" % (shown, "windows" if windows else platform_os()))
    path = unquote(raw_path, errors="surrogateescape")
    if "\x00" in path:  # no OS call takes it (reference: -32602, same text)
        raise UriError("nul", "'file://%s' is invalid on '%s'" % (raw_path, "windows" if windows else platform_os()))
    if windows:
        drive = path.lstrip("/")
        if len(drive) >= 2 and drive[1] == ":":
            path = drive.replace("/", "\\")
            if len(path) == 2:
                path += "\\"
        else:
            raise UriError("host", "'file://%s' is invalid on 'windows'" % raw_path)
        return path.rstrip("\\") if len(path) > 3 else path
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    return path


def path_to_uri(path: str, windows: Optional[bool] = None) -> str:
    """``file://`` URI of an absolute native path, percent-encoded.

    Raises:
        ValueError: the path is not absolute.
    """
    if windows is None:
        windows = sys.platform.startswith("win")
    if windows:
        if not ntpath.isabs(path):
            raise ValueError("path is not absolute: %r" % path)
        path = "/" + path.replace("\\", "/")
    elif not posixpath.isabs(path):
        raise ValueError("path is not absolute: %r" % path)
    return "file://" + quote(path, safe=_PATH_SAFE, errors="surrogateescape")
