"""Capability-token authentication of WebSocket upgrades (PROTOCOL.md 1.2).

The server keeps only the token's SHA-256 digest and compares digests in
constant time.  ``/readyz`` is never authenticated; an ``Origin`` header is
refused (403) before authentication is looked at.
"""

import hashlib
import hmac
import re
from typing import Optional, Tuple

UNAUTHORIZED = "401 Unauthorized"
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")


class CapabilityToken:
    """Checks ``Authorization: Bearer <token>`` against a SHA-256 digest."""

    def __init__(self, sha256_hex: str):
        if not _HEX_DIGEST.match(sha256_hex):
            raise ValueError("--ws-token-sha256 must be 64 hexadecimal digits")
        self._digest = bytes.fromhex(sha256_hex)

    @classmethod
    def from_token(cls, token: str) -> "CapabilityToken":
        return cls(hashlib.sha256(token.encode("utf-8")).hexdigest())

    @classmethod
    def from_file(cls, path: str) -> "CapabilityToken":
        """Read the token from ``path``; one trailing newline is ignored.

        Raises:
            OSError: the file cannot be read.  ValueError: it is empty.
        """
        with open(path, encoding="utf-8") as handle:
            token = handle.read()
        if token.endswith("\n"):
            token = token[:-1]
        if token.endswith("\r"):
            token = token[:-1]
        if not token:
            raise ValueError("the token file %s is empty" % path)
        return cls.from_token(token)

    def check(self, environ) -> Optional[Tuple[str, bytes]]:
        """None when authorized, else ``(status, body)`` with the reference's texts."""
        header = environ.get("HTTP_AUTHORIZATION")
        if header is None:
            return UNAUTHORIZED, b"missing websocket bearer token"
        scheme, _, token = header.strip().partition(" ")
        if not token or scheme.lower() != "bearer":
            return UNAUTHORIZED, b"invalid authorization header"
        digest = hashlib.sha256(token.strip().encode("utf-8")).digest()
        if not hmac.compare_digest(digest, self._digest):
            return UNAUTHORIZED, b"invalid websocket bearer token"
        return None
