"""The HTTP side of the WebSocket server before an upgrade: each request read within its limits and time.

:class:`RequestHandler` is werkzeug's handler with the bounds a server on a
network needs: the request line and header block limits (64 KiB each, at
most 99 header lines), ``upgrade_timeout`` for the whole exchange until
the upgrade, a 400 for what the reference refuses (a request line without a
version, a header with a control character), and no traceback or version
string for anyone.  The WSGI application it serves is
:class:`~exec_server.server.upgrade.WebSocketApp`.
"""

import logging
import re
from urllib.parse import urlsplit

from werkzeug.serving import WSGIRequestHandler

from exec_server.common.keepalive import abort_socket
from exec_server.server.auth import ENVIRON_AUTHORIZATION

log = logging.getLogger("exec_server.server.upgrade")  # the name its messages always had

#: Most bytes of a request's header block (its lines after the request line, their line ends included): past it,
#: 431.  http.client alone allows 100 lines of 64 KiB, ~6 MiB held per connection before any credential is seen.
MAX_HEADER_BYTES = 64 * 1024

#: Most bytes of empty lines (CRLF) skipped before a request line (RFC 9112 2.2 asks a server to skip at least one;
#: the reference skips them); past it, 400.
MAX_LEADING_EMPTY_BYTES = 64 * 1024

#: A header field line: a token, a colon, a value without control characters (a tab and obs-text may be), its end.
_FIELD_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r?\n\Z")

ENVIRON_HANDLER = "exec_server.request_handler"
ENVIRON_NO_VERSION = "exec_server.request_line_without_version"


class _HeaderBlock:
    """The request's input while http.server reads its header block: a line that would take the block past
    ``limit`` bytes is refused as too long (431, as a line over http.client's own limit), unread."""

    def __init__(self, raw, limit: int):
        self._raw, self._left, self._limit = raw, limit, limit

    malformed = False  # a line read is not a field line (RFC 9110 5.1, 5.5) nor the block's end

    def readline(self, size: int = -1) -> bytes:
        line = self._raw.readline(self._left + 1 if size < 0 else min(size, self._left + 1))
        if len(line) > self._left:
            import http.client

            raise http.client.LineTooLong("header block over %d bytes" % self._limit)
        self._left -= len(line)
        if line not in (b"\r\n", b"\n", b"") and not _FIELD_LINE.match(line):
            self.malformed = True
        return line


def _framing_invalid(headers, version: str) -> bool:
    """Whether the request's content cannot be delimited (RFC 9112 6.3), a 400 as on the reference: a
    ``Transfer-Encoding`` whose last coding is not ``chunked`` or in an HTTP/1.0 request, or (without one) a
    ``Content-Length`` that is not one decimal number under 2**64, the same in each such field."""
    codings = ",".join(headers.get_all("Transfer-Encoding") or [])
    if codings:
        return version != "HTTP/1.1" or codings.rsplit(",", 1)[-1].strip(" \t").lower() != "chunked"
    lengths = [value.strip(" \t") for value in headers.get_all("Content-Length") or []]
    if not all(value.isascii() and value.isdigit() for value in lengths):
        return True
    numbers = {int(value) for value in lengths}
    return len(numbers) > 1 or any(number >= 2 ** 64 for number in numbers)


class RequestHandler(WSGIRequestHandler):
    """werkzeug's handler, quiet, closing the TCP connection after an upgrade, and bounded in time.

    Until the WebSocket upgrade, each read waits at most ``upgrade_timeout``
    seconds (the handler's socket timeout) and the whole exchange is cut
    after ``upgrade_timeout`` seconds (a timer shuts the socket down), so a
    client that sends its headers a byte at a time (slowloris) or never
    holds its thread no longer than that.  The server sets
    ``upgrade_timeout`` and ``scheduler`` attributes on itself.
    """

    upgraded = False
    _watchdog = None
    #: http.server's version of a request until its request line is parsed: an answer to a malformed one
    #: (400, 505) gets a status line and headers, not HTTP/0.9's bare body (the reference answers 400).
    default_request_version = "HTTP/1.0"

    def version_string(self) -> str:
        """The ``Server`` header of every answer: the product alone, before any credential is checked (it told
        werkzeug's and Python's versions to anyone)."""
        return "exec-server"

    def setup(self) -> None:
        limit = getattr(self.server, "upgrade_timeout", None)
        scheduler = getattr(self.server, "scheduler", None)
        if limit is not None:
            self.timeout = limit
        super().setup()
        if limit is not None and scheduler is not None:
            self._watchdog = scheduler.call_later(limit, self._upgrade_expired)

    def _upgrade_expired(self) -> None:
        if not self.upgraded:
            log.debug("http: no upgrade within the time limit; closed")
            abort_socket(self.connection)

    def mark_upgraded(self) -> None:
        """The request became a WebSocket: the time limit and the pending-upgrade limit no longer apply."""
        self.upgraded = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        release = getattr(self.server, "upgraded", None)
        if release is not None:
            release(self.request)

    def finish(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        super().finish()

    def take_early_bytes(self) -> bytes:
        """What the peer sent after its upgrade request and the request's reads took in (its first
        frames, if it did not wait for the 101): a WebSocket's first input.  Never waits."""
        sock = self.connection
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            return self.rfile.read1(65536) or b""  # what is buffered, or one read of what has arrived
        except (OSError, ValueError):  # nothing has (a TLS socket's "want read"), or the file is closed
            return b""
        finally:
            sock.settimeout(timeout)

    def parse_request(self) -> bool:
        """http.server's parse, after the empty lines before the request line (RFC 9112 2.2, as the reference
        skips them; at most :data:`MAX_LEADING_EMPTY_BYTES`); then 400 for a request line of blanks alone,
        one without a version, or a header field line whose name is not a token or whose value holds a
        control character (RFC 9110 5.1, 5.5; tab and obs-text allowed), as the reference answers them."""
        skipped = 0
        while self.raw_requestline in (b"\r\n", b"\n"):
            skipped += len(self.raw_requestline)
            if skipped > MAX_LEADING_EMPTY_BYTES:
                return self._bad_line()
            self.raw_requestline = self.rfile.readline(65537)  # http.server's own bound of the request line
            if len(self.raw_requestline) > 65536:  # as http.server answers one without empty lines before it
                self.requestline, self.request_version, self.command = "", "", ""
                self.send_error(414)
                return False
            if not self.raw_requestline:  # the end of the stream: nothing to answer
                self.close_connection = True
                return False
        # Blanks alone (http.server closes without an answer), or HTTP/0.9 ("GET /path"): no header block
        # follows, and http.server would wait for one until the upgrade timeout; answered 400 at once
        words = self.raw_requestline.split()
        if len(words) in (0, 2):
            return self._bad_line()
        # As the reference: a version but HTTP/1.0 or 1.1 (HTTP/1.2, 2.0, http/1.1, a fourth word) is 400, no content;
        # http.server answered 426, 505 or 200, or an HTML page repeating the request line.  (0.9: 400 below.)
        if len(words) != 3 or words[2] not in (b"HTTP/1.0", b"HTTP/1.1", b"HTTP/0.9"):
            return self._bad_line()
        block = _HeaderBlock(self.rfile, MAX_HEADER_BYTES)
        rfile, self.rfile = self.rfile, block
        try:
            if not super().parse_request():
                return False
        finally:
            self.rfile = rfile
        if block.malformed or _framing_invalid(self.headers, self.request_version):  # as the reference refuses them
            return self._bad_request()
        # No "100 Continue" (werkzeug writes one for this header): nothing here reads a request's content, and
        # a WebSocket client takes it for the answer to its upgrade (the reference writes none)
        del self.headers["Expect"]
        target = self.requestline.split()[1:2]
        if target and target[0].startswith("//"):  # http.server made it "/..." (gh-87389): kept, for its 404
            self.path = target[0]  # (and made PATH_INFO again by make_environ)
        try:
            urlsplit(self.path)  # what werkzeug's make_environ does first, outside any error handling
        except ValueError:  # "http://[::1/": a 400 with a status line, not a traceback and no answer
            return self._bad_request()
        return True

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue``: no ``100 Continue`` from http.server either (see :meth:`parse_request`)."""
        return True

    def _bad_line(self) -> bool:
        """400 for a request line http.server would not answer (blanks, no version) or too many empty lines."""
        self.command, self.request_version = "GET", "HTTP/1.0"  # a status line, as for the others
        self.requestline = self.raw_requestline[:200].decode("iso-8859-1").rstrip("\r\n")
        return self._bad_request()

    def _bad_request(self) -> bool:
        """Answer 400 (no body) and close the connection; False, for :meth:`parse_request` to return."""
        self.close_connection = True
        self.send_response(400)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        return False

    def make_environ(self):
        environ = super().make_environ()
        environ[ENVIRON_HANDLER] = self
        if self.path.startswith("//"):  # werkzeug read the target kept by parse_request as an authority
            environ["PATH_INFO"] = self.path.split("?", 1)[0]  # "//readyz" is not "/readyz": the reference's 404
        # every Authorization header in order (the environ joins repeated ones with commas)
        environ[ENVIRON_AUTHORIZATION] = self.headers.get_all("Authorization") or []
        if not self.request_version.startswith("HTTP/1."):
            environ[ENVIRON_NO_VERSION] = True  # ``GET / HTTP/0.9``: answered 400 ...
            self.request_version = "HTTP/1.0"  # ... with a status line (http.server writes none for 0.9)
        return environ

    def log_request(self, code="-", size="-") -> None:
        log.debug("%s %s %s", self.command, getattr(self, "path", "?"), code)

    def log_error(self, format: str, *args) -> None:
        log.debug("http: " + format, *args)
