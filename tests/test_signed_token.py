"""Signed bearer tokens (``--ws-auth signed-bearer-token``), on ours and the reference.

Every row of the token table is sent as a raw upgrade request to both
servers (HS256 secret of 34 bytes, issuer ``iss-x``, audience ``aud-y``,
default skew) and each answer is compared with the reference's measured one:
status, ``text/plain`` body, and no content type where there is no body.
Rows where ours differs on purpose say so (``ours=``) and README.rst lists them.
"""

import json
import subprocess
import sys
import time
import warnings
from urllib.parse import urlsplit

import jwt
import pytest

from conftest import http_request, reference_binary, start_ours, start_reference
from exec_server.server.auth import (MIN_SECRET_BYTES, SignedBearerToken, load_shared_secret)

SECRET = "0123456789abcdefghijklmnopqrstuvwx"  # 34 bytes
ISSUER, AUDIENCE = "iss-x", "aud-y"
UPGRADE = (b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


def mint(claims, secret: str = SECRET, algorithm: str = "HS256", headers=None) -> str:
    """A token signed with PyJWT; ``claims`` may be a dict or raw JSON text (odd types, duplicates)."""
    payload = claims if isinstance(claims, str) else json.dumps(claims)
    with warnings.catch_warnings():  # HS384/HS512 with a 34-byte key warn about its length
        warnings.simplefilter("ignore")
        if algorithm == "none":
            return jwt.PyJWS().encode(payload.encode(), None, algorithm="none", headers=headers)
        return jwt.PyJWS().encode(payload.encode(), secret.encode(), algorithm=algorithm, headers=headers)


def claims(now: int, **changes):
    """Valid claims (iss, aud, exp in 5 minutes) with ``changes``; a change of None removes the claim."""
    values = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300}
    values.update(changes)
    return {key: value for key, value in values.items() if value is not None}


def bearer(token: str) -> bytes:
    return b"Authorization: Bearer " + token.encode() + b"\r\n"


OK = ("101", "")
INVALID = ("401", "invalid websocket jwt")
HEADER = ("401", "invalid authorization header")
MISSING = ("401", "missing websocket bearer token")
EXPIRED = ("401", "expired websocket jwt")
NOT_YET = ("401", "websocket jwt is not valid yet")
ISSUER_MISMATCH = ("401", "websocket jwt issuer mismatch")
AUDIENCE_MISMATCH = ("401", "websocket jwt audience mismatch")

# name -> (request(now) -> (path, extra header bytes), the reference's answer, ours if it differs)
TABLE = {
    "valid": (lambda n: ("/", bearer(mint(claims(n)))), OK),
    "valid with iat": (lambda n: ("/", bearer(mint(claims(n, iat=n)))), OK),
    "valid with extra claims": (lambda n: ("/", bearer(mint(claims(n, sub="me", jti=5, role="x")))), OK),
    "aud list containing": (lambda n: ("/", bearer(mint(claims(n, aud=["other", AUDIENCE])))), OK),
    "aud list not containing": (lambda n: ("/", bearer(mint(claims(n, aud=["other"])))), AUDIENCE_MISMATCH),
    "aud empty list": (lambda n: ("/", bearer(mint(claims(n, aud=[])))), AUDIENCE_MISMATCH),
    "scheme bearer": (lambda n: ("/", b"Authorization: bearer " + mint(claims(n)).encode() + b"\r\n"), OK),
    "scheme BEARER": (lambda n: ("/", b"Authorization: BEARER " + mint(claims(n)).encode() + b"\r\n"), OK),
    "two spaces": (lambda n: ("/", b"Authorization: Bearer  " + mint(claims(n)).encode() + b"\r\n"), OK),
    "tab after scheme": (lambda n: ("/", b"Authorization: Bearer\t" + mint(claims(n)).encode() + b"\r\n"), HEADER),
    "token then junk": (lambda n: ("/", b"Authorization: Bearer " + mint(claims(n)).encode() + b" x\r\n"), INVALID),
    "no header": (lambda n: ("/", b""), MISSING),
    "Bearer and nothing": (lambda n: ("/", b"Authorization: Bearer \r\n"), HEADER),
    "empty Authorization": (lambda n: ("/", b"Authorization: \r\n"), HEADER),
    "Basic scheme": (lambda n: ("/", b"Authorization: Basic dXNlcjpwYXNz\r\n"), HEADER),
    "Token scheme, valid jwt": (lambda n: ("/", b"Authorization: Token " + mint(claims(n)).encode() + b"\r\n"),
                                HEADER),
    "non-ASCII byte": (lambda n: ("/", b"Authorization: Bearer \xe9" + mint(claims(n)).encode() + b"\r\n"), HEADER),
    "no exp": (lambda n: ("/", bearer(mint(claims(n, exp=None)))), INVALID),
    "wrong secret": (lambda n: ("/", bearer(mint(claims(n), secret="another-secret-of-thirty-four-byte"))), INVALID),
    "HS384": (lambda n: ("/", bearer(mint(claims(n), algorithm="HS384"))), INVALID),
    "HS512": (lambda n: ("/", bearer(mint(claims(n), algorithm="HS512"))), INVALID),
    "alg none": (lambda n: ("/", bearer(mint(claims(n), algorithm="none"))), INVALID),
    "not a JWT": (lambda n: ("/", bearer("not-a-jwt")), INVALID),
    "two segments": (lambda n: ("/", bearer(mint(claims(n)).rsplit(".", 1)[0])), INVALID),
    "four segments": (lambda n: ("/", bearer(mint(claims(n)) + ".x")), INVALID),
    "padded signature": (lambda n: ("/", bearer(mint(claims(n)) + "=")), INVALID),
    "payload JSON array": (lambda n: ("/", bearer(mint("[1]"))), INVALID),
    "typ missing": (lambda n: ("/", bearer(mint(claims(n), headers={"typ": None}))), OK),
    "typ foo": (lambda n: ("/", bearer(mint(claims(n), headers={"typ": "foo"}))), OK),
    "kid present": (lambda n: ("/", bearer(mint(claims(n), headers={"kid": "k1"}))), OK),
    "typ number": (lambda n: ("/", bearer(mint(claims(n), headers={"typ": 5}))), INVALID),
    "exp float": (lambda n: ("/", bearer(mint(claims(n, exp=n + 300.0)))), INVALID),
    "exp string": (lambda n: ("/", bearer(mint(claims(n, exp=str(n + 300))))), INVALID),
    "exp i64 max": (lambda n: ("/", bearer(mint(claims(n, exp=2 ** 63 - 1)))), OK),
    "exp 2**63": (lambda n: ("/", bearer(mint(claims(n, exp=2 ** 63)))), INVALID),
    "exp 0": (lambda n: ("/", bearer(mint(claims(n, exp=0)))), EXPIRED),
    "exp -20 s": (lambda n: ("/", bearer(mint(claims(n, exp=n - 20)))), OK),
    "exp -59 s": (lambda n: ("/", bearer(mint(claims(n, exp=n - 59)))), EXPIRED),
    "exp -120 s": (lambda n: ("/", bearer(mint(claims(n, exp=n - 120)))), EXPIRED),
    "nbf +20 s": (lambda n: ("/", bearer(mint(claims(n, nbf=n + 20)))), OK),
    "nbf +120 s": (lambda n: ("/", bearer(mint(claims(n, nbf=n + 120)))), NOT_YET),
    "nbf string": (lambda n: ("/", bearer(mint(claims(n, nbf="x")))), INVALID),
    "nbf null": (lambda n: ("/", bearer(mint('{"iss":"iss-x","aud":"aud-y","exp":%d,"nbf":null}' % (n + 300)))), OK),
    "iat +3600 s": (lambda n: ("/", bearer(mint(claims(n, iat=n + 3600)))), OK),
    "iat string": (lambda n: ("/", bearer(mint(claims(n, iat="x")))), OK),
    "iss missing": (lambda n: ("/", bearer(mint(claims(n, iss=None)))), ISSUER_MISMATCH),
    "iss different": (lambda n: ("/", bearer(mint(claims(n, iss="other")))), ISSUER_MISMATCH),
    "iss case differs": (lambda n: ("/", bearer(mint(claims(n, iss="ISS-X")))), ISSUER_MISMATCH),
    "iss null": (lambda n: ("/", bearer(mint('{"iss":null,"aud":"aud-y","exp":%d}' % (n + 300)))), ISSUER_MISMATCH),
    "iss number": (lambda n: ("/", bearer(mint(claims(n, iss=5)))), INVALID),
    "iss lone surrogate": (lambda n: ("/", bearer(mint('{"iss":"\\ud800","aud":"aud-y","exp":%d}' % (n + 300)))),
                           INVALID),
    "aud missing": (lambda n: ("/", bearer(mint(claims(n, aud=None)))), AUDIENCE_MISMATCH),
    "aud different": (lambda n: ("/", bearer(mint(claims(n, aud="other")))), AUDIENCE_MISMATCH),
    "aud number": (lambda n: ("/", bearer(mint(claims(n, aud=5)))), INVALID),
    "aud object": (lambda n: ("/", bearer(mint(claims(n, aud={"a": AUDIENCE})))), INVALID),
    "aud list with number": (lambda n: ("/", bearer(mint(claims(n, aud=[AUDIENCE, 1])))), INVALID),
    "sub number": (lambda n: ("/", bearer(mint(claims(n, sub=5)))), OK),
    "sub object": (lambda n: ("/", bearer(mint(claims(n, sub={})))), INVALID),
    "expired and wrong iss": (lambda n: ("/", bearer(mint(claims(n, exp=n - 120, iss="other")))), EXPIRED),
    "nbf future and wrong aud": (lambda n: ("/", bearer(mint(claims(n, nbf=n + 120, aud="other")))), NOT_YET),
    "wrong iss and wrong aud": (lambda n: ("/", bearer(mint(claims(n, iss="a", aud="b")))), ISSUER_MISMATCH),
    "no exp and wrong iss": (lambda n: ("/", bearer(mint(claims(n, exp=None, iss="other")))), INVALID),
    "iss number and expired": (lambda n: ("/", bearer(mint(claims(n, iss=5, exp=n - 120)))), INVALID),
    "wrong secret and expired": (lambda n: ("/", bearer(mint(claims(n, exp=n - 120), secret="x" * 34))), INVALID),
    "query ?token=": (lambda n: ("/?token=" + mint(claims(n)), b""), MISSING),
    "query ?access_token=": (lambda n: ("/?access_token=" + mint(claims(n)), b""), MISSING),
    "query string ignored": (lambda n: ("/?x=1", bearer(mint(claims(n)))), OK),
    "token in Sec-WebSocket-Protocol": (lambda n: ("/", b"Sec-WebSocket-Protocol: " + mint(claims(n)).encode()
                                                   + b"\r\n"), MISSING),
    "first of two headers valid": (lambda n: ("/", bearer(mint(claims(n))) + bearer("junk")), OK),
    "first of two headers invalid": (lambda n: ("/", bearer("junk") + bearer(mint(claims(n)))), INVALID),
    "Origin with a valid token": (lambda n: ("/", b"Origin: http://a\r\n" + bearer(mint(claims(n)))), ("403", "")),
    "path /foo with a valid token": (lambda n: ("/foo", bearer(mint(claims(n)))), ("404", "")),
    # Known differences (README.rst): PyJWT refuses critical header extensions it does not implement.
    "crit header": (lambda n: ("/", bearer(mint(claims(n), headers={"crit": ["exp"]}))), OK, INVALID),
    # ... and decodes JSON with Python's json module, where the last of duplicate keys wins.
    "duplicate iss": (lambda n: ("/", bearer(mint('{"iss":"iss-x","iss":"iss-x","aud":"aud-y","exp":%d}'
                                                  % (n + 300)))), INVALID, OK),
}


def start(kind: str, folder, extra_args=()):
    secret_file = folder / "secret"
    secret_file.write_text(SECRET + "\n")  # trimmed, as the reference trims it
    args = ["--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", str(secret_file), *extra_args]
    if kind == "reference":
        return start_reference(str(folder), args)
    from exec_server.cli.options import auth_from, server_parser

    return start_ours(auth=auth_from(server_parser().parse_args(args)))


@pytest.fixture(scope="module", params=["ours", pytest.param("reference", marks=pytest.mark.reference)])
def jwt_server(request, tmp_path_factory):
    running = start(request.param, tmp_path_factory.mktemp("jwt"),
                    ["--ws-issuer", ISSUER, "--ws-audience", AUDIENCE])
    yield running
    running.stop()


@pytest.fixture(scope="module", params=["ours", pytest.param("reference", marks=pytest.mark.reference)])
def audience_only_server(request, tmp_path_factory):
    running = start(request.param, tmp_path_factory.mktemp("jwt"), ["--ws-audience", AUDIENCE])
    yield running
    running.stop()


def ask(server, path: str, extra: bytes):
    """(status, content type or None, body) of a GET ``path`` upgrade request."""
    raw = b"GET " + path.encode() + b" HTTP/1.1\r\n" + UPGRADE + extra + b"\r\n"
    response = http_request(urlsplit(server.url).port, raw)
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert "www-authenticate" not in headers
    return lines[0].split(" ")[1], headers.get("content-type"), body.decode("utf-8", "replace")


def check_row(server, row) -> None:
    request, expected = row[0], row[1]
    if not server.is_reference and len(row) > 2:
        expected = row[2]
    path, extra = request(int(time.time()))
    status, content_type, body = ask(server, path, extra)
    assert (status, body) == expected
    assert content_type == ("text/plain; charset=utf-8" if body else None)


@pytest.mark.parametrize("name", list(TABLE))
def test_token_table(jwt_server, name):
    check_row(jwt_server, TABLE[name])


OTHER_CONFIG = {
    "no issuer configured: iss other": (lambda n: ("/", bearer(mint(claims(n, iss="other")))), OK),
    "no issuer configured: iss missing": (lambda n: ("/", bearer(mint(claims(n, iss=None)))), OK),
    "no issuer configured: iss number": (lambda n: ("/", bearer(mint(claims(n, iss=5)))), INVALID),
    "no issuer configured: aud other": (lambda n: ("/", bearer(mint(claims(n, aud="zz")))), AUDIENCE_MISMATCH),
    "no issuer configured: expired": (lambda n: ("/", bearer(mint(claims(n, exp=n - 120)))), EXPIRED),
}


@pytest.mark.parametrize("name", list(OTHER_CONFIG))
def test_token_table_without_issuer(audience_only_server, name):
    check_row(audience_only_server, OTHER_CONFIG[name])


def test_readyz_needs_no_token(jwt_server):
    raw = b"GET /readyz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer junk\r\nConnection: close\r\n\r\n"
    assert http_request(urlsplit(jwt_server.url).port, raw).startswith(b"HTTP/1.1 200")


# -- the clock, in whole seconds, with the skew -------------------------------------------------------------

@pytest.mark.parametrize("skew, exp, nbf, refusal", [
    (30, -30, None, None), (30, -31, None, "expired websocket jwt"),
    (30, 300, 30, None), (30, 300, 31, "websocket jwt is not valid yet"),
    (0, 0, None, None), (0, -1, None, "expired websocket jwt"), (0, 300, 0, None),
    (0, 300, 1, "websocket jwt is not valid yet"), (5, -5, None, None), (5, -6, None, "expired websocket jwt"),
])
def test_skew_edges(skew, exp, nbf, refusal):
    now = 1_700_000_000
    check = SignedBearerToken(SECRET.encode(), max_clock_skew=skew, clock=lambda: now + 0.999)
    token = mint({"exp": now + exp, **({} if nbf is None else {"nbf": now + nbf})})
    assert check.refusal(token) == refusal


def test_a_deeply_nested_header_is_an_invalid_token_not_a_server_error(jwt_server, monkeypatch):
    """PyJWT 2.10-2.12 parse the header before the signature and let RecursionError out of ~20000 nested
    arrays (53 KB, under the header limit): a 500 and a logged traceback for anyone, without credentials."""
    import base64

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    token = (b64(b'{"alg":"HS256","x":' + b"[" * 20000 + b"]" * 20000 + b"}") + b"." + b64(b'{"exp":1}')
             + b".AAAA").decode()
    response = http_request(urlsplit(jwt_server.url).port, b"GET / HTTP/1.1\r\n" + UPGRADE + bearer(token) + b"\r\n")
    assert (response.split(b" ", 2)[1].decode(), response.split(b"\r\n\r\n", 1)[1].decode()) == INVALID


def test_an_error_of_the_decoder_is_an_invalid_token(monkeypatch):
    check = SignedBearerToken(SECRET.encode())

    def deep(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")

    monkeypatch.setattr(jwt, "decode_complete", deep)  # what those PyJWT releases raise
    assert check.refusal(mint({"exp": 2 ** 40})) == "invalid websocket jwt"


def test_largest_skew_saturates_like_the_reference():
    check = SignedBearerToken(SECRET.encode(), max_clock_skew=2 ** 63 - 1)
    assert check.refusal(mint({"exp": 0})) is None
    assert check.refusal(mint({"exp": -2 ** 63})) == "expired websocket jwt"
    with pytest.raises(ValueError, match="signed 64-bit"):
        SignedBearerToken(SECRET.encode(), max_clock_skew=2 ** 63)
    with pytest.raises(ValueError):
        SignedBearerToken(SECRET.encode(), max_clock_skew=-1)


# -- the shared secret file ---------------------------------------------------------------------------------

def test_secret_is_trimmed_as_the_reference_trims_it(tmp_path):
    path = tmp_path / "secret"
    for text in (SECRET + "\n", SECRET + "\r\n", "  " + SECRET + "  \n", "\u00a0" + SECRET + "\u00a0"):
        path.write_text(text, encoding="utf-8")
        assert load_shared_secret(str(path)) == SECRET.encode()
    path.write_text(SECRET + "\x1c", encoding="utf-8")  # not Unicode whitespace: str.strip() would drop it
    assert load_shared_secret(str(path)) == (SECRET + "\x1c").encode()
    path.write_text("\u20ac" * 11, encoding="utf-8")  # 33 bytes, 11 characters
    assert len(load_shared_secret(str(path))) == 33 >= MIN_SECRET_BYTES


SECRET_FILES = {
    "missing": None,
    "empty": b"",
    "whitespace only": b"\n\n",
    "31 bytes and a newline": b"x" * 31 + b"\n",
    "not UTF-8": b"\xff" * 40,
}


def server_error(command, secret_file, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([*command, "--listen", "ws://127.0.0.1:0", "--ws-auth", "signed-bearer-token",
                           "--ws-shared-secret-file", secret_file], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("kind", ["ours", pytest.param("reference", marks=pytest.mark.reference)])
@pytest.mark.parametrize("case", list(SECRET_FILES))
def test_unusable_secret_file_stops_startup(tmp_path, kind, case):
    path = tmp_path / "secret"
    if SECRET_FILES[case] is not None:
        path.write_bytes(SECRET_FILES[case])
    if kind == "ours":
        done = server_error([sys.executable, "-m", "exec_server"], str(path))
        assert done.returncode == 2
        message = done.stderr.decode().strip().split("exec-server: ", 1)[1]
    else:
        binary = reference_binary()
        if binary is None:
            pytest.skip("reference server not installed (set EXEC_SERVER_REFERENCE)")
        done = server_error([binary, "exec-server"], str(path))
        assert done.returncode == 1
        message = done.stderr.decode().split("Error: ", 1)[1].split("\n", 1)[0]
    expected = {
        "missing": "failed to read websocket auth secret %s: No such file or directory" % path,
        "empty": "websocket auth secret %s must not be empty" % path,
        "whitespace only": "websocket auth secret %s must not be empty" % path,
        "31 bytes and a newline": "signed websocket bearer secret %s must be at least 32 bytes" % path,
        "not UTF-8": "failed to read websocket auth secret %s: stream did not contain valid UTF-8" % path,
    }[case]
    assert message.startswith(expected)


@pytest.mark.parametrize("args, message", [
    (["--ws-auth", "signed-bearer-token"],
     "`--ws-shared-secret-file` is required when `--ws-auth signed-bearer-token` is set"),
    (["--ws-issuer", "x"],
     "websocket auth flags require `--ws-auth capability-token` or `--ws-auth signed-bearer-token`"),
    (["--ws-auth", "capability-token", "--ws-token-sha256", "ab" * 32, "--ws-audience", "x"],
     "`--ws-shared-secret-file`, `--ws-issuer`, `--ws-audience`, and `--ws-max-clock-skew-seconds` "
     "require `--ws-auth signed-bearer-token`"),
    (["--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", "/nonexistent", "--ws-token-sha256", "ab" * 32],
     "`--ws-token-file` and `--ws-token-sha256` require `--ws-auth capability-token`, not `signed-bearer-token`"),
])
def test_inconsistent_options(args, message):
    done = subprocess.run([sys.executable, "-m", "exec_server", *args], capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and message in done.stderr.decode()


@pytest.mark.parametrize("value", ["-1", "1.5", "abc"])
def test_skew_option_takes_whole_seconds(value):
    done = subprocess.run([sys.executable, "-m", "exec_server", "--ws-auth", "signed-bearer-token",
                           "--ws-shared-secret-file", "/nonexistent", "--ws-max-clock-skew-seconds", value],
                          capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and b"--ws-max-clock-skew-seconds" in done.stderr
    assert b"Traceback" not in done.stderr


NO_KEY = (b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
          b"Connection: close\r\n")


@pytest.mark.parametrize("method, head, status, body", [
    # the method is checked before the token
    (b"POST", UPGRADE + b"Content-Length: 0\r\n", "405", b"Request method must be `GET`"),
    # so is the upgrade itself
    (b"GET", NO_KEY, "400", b"`Sec-WebSocket-Key` header missing"),
    (b"GET", UPGRADE.replace(b"Version: 13", b"Version: 8"), "400",
     b"`Sec-WebSocket-Version` header did not include '13'"),
])
def test_upgrade_is_checked_before_the_token(jwt_server, method, head, status, body):
    response = http_request(urlsplit(jwt_server.url).port, method + b" / HTTP/1.1\r\n" + head + b"\r\n")
    assert response.split(b" ", 2)[1].decode() == status
    assert response.split(b"\r\n\r\n", 1)[1] == body


@pytest.mark.parametrize("key", [b"x", b"dGhlIHNhbXBsZSBub25jZQ", b"dGhlIHNhbXBsZSBub25j!Q==", b"QUFB" * 8,
                                 b"dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
def test_a_key_that_is_not_a_16_byte_nonce_is_refused(server, key):
    """RFC 6455 4.2.1: the key is 16 bytes in base64, once (any text was taken, as the reference takes it)."""
    response = http_request(urlsplit(server.url).port, b"GET / HTTP/1.1\r\n" + NO_KEY
                            + b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
    assert response.split(b" ", 2)[1] == b"400"
    assert response.split(b"\r\n\r\n", 1)[1] == b"`Sec-WebSocket-Key` header is not 16 bytes in base64"
    good = http_request(urlsplit(server.url).port, b"GET / HTTP/1.1\r\n" + UPGRADE + b"\r\n")
    assert good.startswith(b"HTTP/1.1 101")


def test_malformed_header_outside_the_handshake_is_not_a_server_error(server):
    """h11 under wsproto refuses values such as 'Bearer ' (trailing blank): only handshake headers reach it.
    (A control character in any field is 400 before, as on the reference: tests/test_http.py.)"""
    raw = b"GET / HTTP/1.1\r\n" + UPGRADE + b"Authorization: Bearer \r\nX-Note: a\tb \x80\r\n\r\n"
    assert http_request(urlsplit(server.url).port, raw).startswith(b"HTTP/1.1 101")
