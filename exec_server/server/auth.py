"""Authentication of WebSocket upgrades: capability tokens and signed bearer tokens.

Both modes read ``Authorization: Bearer <token>`` (PROTOCOL.md 1.2) as the
Codex exec-server reference 0.169.0 does: only the first ``Authorization``
header counts, the scheme is ``bearer`` in any case, and the answers are 401
with a ``text/plain`` body naming the failure.  ``/readyz`` is never
authenticated; an ``Origin`` header is refused (403) before authentication is
looked at (both in :mod:`exec_server.server.websocket`).

* :class:`CapabilityToken` keeps only the token's SHA-256 digest and compares
  digests in constant time.
* :class:`SignedBearerToken` verifies an HS256 JWT with PyJWT against a shared
  secret, then checks ``exp``, ``nbf``, ``iss`` and ``aud`` as the reference
  does (its measured behaviour; differences are listed in README.rst).

PyJWT (about 85 ms to import) is imported only when a signed-token check is
built.  Both are immutable after construction and safe to use from every connection
thread at once.
"""

import hashlib
import hmac
import re
import time
from typing import Any, List, Optional, Tuple

from exec_server.common.bearer import check_token
from exec_server.server.config import DEFAULT_MAX_CLOCK_SKEW

UNAUTHORIZED = "401 Unauthorized"
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")

#: WSGI environ key holding every ``Authorization`` header value, in order
#: (set by :class:`exec_server.server.websocket.RequestHandler`).
ENVIRON_AUTHORIZATION = "exec_server.authorization"

MISSING_TOKEN = "missing websocket bearer token"
INVALID_HEADER = "invalid authorization header"
INVALID_JWT = "invalid websocket jwt"
EXPIRED_JWT = "expired websocket jwt"
IMMATURE_JWT = "websocket jwt is not valid yet"
ISSUER_MISMATCH = "websocket jwt issuer mismatch"
AUDIENCE_MISMATCH = "websocket jwt audience mismatch"

#: Shortest shared secret accepted, in bytes after trimming (the reference's).
MIN_SECRET_BYTES = 32
#: Largest clock skew accepted: the reference keeps it in a signed 64-bit integer.
MAX_CLOCK_SKEW = 2 ** 63 - 1

#: The characters Rust's ``str::trim`` removes (Unicode White_Space).  Python's
#: ``str.strip()`` differs (it also removes U+001C..U+001F), so the secret is
#: trimmed with this set, exactly as the reference trims it.
RUST_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
                   "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")

# A compact JWS segment: unpadded base64url (PyJWT alone would accept '=' padding).
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*\Z")
_I64_MIN, _I64_MAX = -2 ** 63, 2 ** 63 - 1
# Header fields the reference types as strings; x5c is a list of strings.
_HEADER_STRINGS = ("typ", "cty", "kid", "jku", "x5u", "x5t", "x5t#S256")


def bearer_token(environ) -> Tuple[Optional[str], Optional[str]]:
    """The bearer token of an upgrade request: ``(token, None)`` or ``(None, refusal text)``.

    Only the first ``Authorization`` header counts; its value must be
    visible ASCII, split at the first space into the scheme ``bearer`` (any
    case) and a non-empty token (spaces around it are trimmed).  Query
    parameters and other headers are never read.
    """
    values: Optional[List[str]] = environ.get(ENVIRON_AUTHORIZATION)
    if values is None:
        single = environ.get("HTTP_AUTHORIZATION")
        values = [] if single is None else [single]
    if not values:
        return None, MISSING_TOKEN
    value = values[0].strip(" \t")
    if any(not (char == "\t" or " " <= char <= "~") for char in value):
        return None, INVALID_HEADER
    scheme, space, token = value.partition(" ")
    token = token.strip(" \t")
    if not space or scheme.lower() != "bearer" or not token:
        return None, INVALID_HEADER
    return token, None


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
            ValueError: the file cannot be read, or its token could never be sent
                (:func:`~exec_server.common.bearer.check_token`: empty, a line break...).
        """
        try:
            with open(path, encoding="utf-8") as handle:
                token = handle.read()
        except OSError as exc:
            raise ValueError("failed to read websocket token file %s: %s" % (path, exc.strerror or exc)) from None
        except UnicodeDecodeError:
            raise ValueError("failed to read websocket token file %s: stream did not contain valid UTF-8"
                             % path) from None
        if token.endswith("\n"):
            token = token[:-1]
        if token.endswith("\r"):
            token = token[:-1]
        try:
            return cls.from_token(check_token(token))
        except ValueError as exc:
            raise ValueError("the token file %s: %s" % (path, exc)) from None

    def check(self, environ) -> Optional[Tuple[str, bytes]]:
        """None when authorized, else ``(status, body)`` with the reference's texts."""
        token, refusal = bearer_token(environ)
        if refusal is not None:
            return UNAUTHORIZED, refusal.encode("ascii")
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        if not hmac.compare_digest(digest, self._digest):
            return UNAUTHORIZED, b"invalid websocket bearer token"
        return None


def load_shared_secret(path: str) -> bytes:
    """Read a signed-bearer-token secret as the reference does: UTF-8, trimmed, 32 bytes or more.

    The file is read once; the key is the UTF-8 encoding of its text with
    Unicode whitespace trimmed from both ends (:data:`RUST_WHITESPACE`).

    Raises:
        ValueError: unreadable, not UTF-8, empty or shorter than
            :data:`MIN_SECRET_BYTES`, with the reference's message; the
            caller should report it and not start.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ValueError("failed to read websocket auth secret %s: %s" % (path, exc.strerror or exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("failed to read websocket auth secret %s: stream did not contain valid UTF-8"
                         % path) from None
    secret = text.strip(RUST_WHITESPACE).encode("utf-8")
    if not secret:
        raise ValueError("websocket auth secret %s must not be empty" % path)
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError("signed websocket bearer secret %s must be at least %d bytes" % (path, MIN_SECRET_BYTES))
    return secret


def _is_i64(value: Any) -> bool:
    return type(value) is int and _I64_MIN <= value <= _I64_MAX


def _is_text(value: Any) -> bool:
    """A JSON string without lone surrogates (the reference rejects ``"\\ud800"`` in iss/aud)."""
    return isinstance(value, str) and not any("\ud800" <= char <= "\udfff" for char in value)


class SignedBearerToken:
    """Checks ``Authorization: Bearer <HS256 JWT>`` as the reference's ``signed-bearer-token`` mode.

    Args:
        secret: the HMAC key (see :func:`load_shared_secret`).
        issuer: required ``iss``; None or "" checks nothing.
        audience: required ``aud`` (equal, or in the list); None or "" checks nothing.
        max_clock_skew: seconds ``exp`` and ``nbf`` may be off (integer, 0 or more).
        clock: returns the Unix time in seconds (tests pass a fixed one).

    Raises:
        ValueError: a negative or too large skew, or a secret PyJWT cannot use.
    """

    def __init__(self, secret: bytes, issuer: Optional[str] = None, audience: Optional[str] = None,
                 max_clock_skew: int = DEFAULT_MAX_CLOCK_SKEW, clock=time.time):
        import jwt

        if type(max_clock_skew) is not int or max_clock_skew < 0:
            raise ValueError("--ws-max-clock-skew-seconds must be a whole number of seconds, 0 or more")
        if max_clock_skew > MAX_CLOCK_SKEW:
            raise ValueError("websocket auth clock skew must fit in a signed 64-bit integer")
        try:
            jwt.encode({"exp": 0}, secret, algorithm="HS256")
        except jwt.PyJWTError as exc:
            raise ValueError("the websocket auth secret cannot be used as an HS256 key: %s" % exc) from None
        self._secret = secret
        self.issuer = issuer or None
        self.audience = audience or None
        self.max_clock_skew = max_clock_skew
        self._clock = clock

    @classmethod
    def from_file(cls, path: str, **settings) -> "SignedBearerToken":
        """Raises ValueError as :func:`load_shared_secret` and the constructor."""
        return cls(load_shared_secret(path), **settings)

    def check(self, environ) -> Optional[Tuple[str, bytes]]:
        """None when authorized, else ``(status, body)`` with the reference's texts."""
        token, refusal = bearer_token(environ)
        if refusal is None:
            refusal = self.refusal(token)
        return None if refusal is None else (UNAUTHORIZED, refusal.encode("ascii"))

    def refusal(self, token: str) -> Optional[str]:
        """None if ``token`` is accepted, else the reference's refusal text.

        The order is the reference's: anything malformed, badly signed or
        mistyped is ``invalid websocket jwt`` before any time is compared;
        then ``exp``, ``nbf``, ``iss``, ``aud``.  Times are compared in whole
        seconds (``exp + skew < now`` is expired), as the reference does, so
        PyJWT's own float comparison of exp/nbf is switched off.
        """
        import jwt

        segments = token.split(".")
        if len(segments) != 3 or not all(_SEGMENT.match(segment) for segment in segments):
            return INVALID_JWT
        try:
            decoded = jwt.decode_complete(
                token, self._secret, algorithms=["HS256"],
                options={"require": ["exp"], "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False})
        except (jwt.PyJWTError, RecursionError):
            # PyJWT 2.10-2.12 let a header nested ~20000 deep raise RecursionError (a 500 for anyone)
            return INVALID_JWT
        header, claims = decoded["header"], decoded["payload"]
        if not self._types_ok(header, claims):
            return INVALID_JWT
        now = int(self._clock())
        exp, nbf = claims["exp"], claims.get("nbf")
        if exp + self.max_clock_skew < now:
            return EXPIRED_JWT
        if nbf is not None and nbf - self.max_clock_skew > now:
            return IMMATURE_JWT
        if self.issuer is not None and claims.get("iss") != self.issuer:
            return ISSUER_MISMATCH
        audience = claims.get("aud")
        if self.audience is not None and not (audience == self.audience
                                              or (isinstance(audience, list) and self.audience in audience)):
            return AUDIENCE_MISMATCH
        return None

    @staticmethod
    def _types_ok(header: dict, claims: dict) -> bool:
        """The reference's type rules for known header fields and claims (PyJWT leaves these open)."""
        if header.get("alg") != "HS256":
            return False
        if any(header.get(name) is not None and not _is_text(header[name]) for name in _HEADER_STRINGS):
            return False
        x5c = header.get("x5c")
        if x5c is not None and not (isinstance(x5c, list) and all(_is_text(item) for item in x5c)):
            return False
        if header.get("jwk") is not None:  # an embedded key is never used with a shared secret
            return False
        nbf, iss, aud = claims.get("nbf"), claims.get("iss"), claims.get("aud")
        if not _is_i64(claims.get("exp")) or (nbf is not None and not _is_i64(nbf)):
            return False
        if iss is not None and not _is_text(iss):
            return False
        if aud is not None and not (_is_text(aud) or (isinstance(aud, list) and all(_is_text(a) for a in aud))):
            return False
        return not isinstance(claims.get("sub"), (dict, list))
