"""What a bearer token may hold: the server's token file and the client's token are checked alike.

A token travels as ``Authorization: Bearer <token>`` (RFC 6750), an HTTP
header value: printable ASCII, and the server trims spaces around it.  A
token with a line break, a control character or a non-ASCII letter can never
be sent, so a server that accepted it from its token file would refuse every
client, and a client would fail inside the HTTP library.  Credentials written into a URL
(``ws://user:password@host``) are never printed: :func:`shown_url`.
"""

import re


def check_token(token: str) -> str:
    """``token`` if an ``Authorization`` header can carry it.

    Raises:
        ValueError: ``the token is empty``, or ``the token holds a line break, a control character or a
            non-ASCII character (a bearer token is printable ASCII)``, or has spaces around it.
    """
    if not token:
        raise ValueError("the token is empty")
    if not (token.isascii() and token.isprintable()):
        raise ValueError("the token holds a line break, a control character or a non-ASCII character "
                         "(a bearer token is printable ASCII)")
    if token != token.strip(" "):
        raise ValueError("the token begins or ends with a space (the server would trim it)")
    return token


#: ``scheme://`` and the user information of a URL's authority (up to its last ``@``, as ``urlsplit`` reads it).
_USER_INFO = re.compile(r"^([^:/?#]*://)[^/?#]*@")


def shown_url(url: str) -> str:
    """``url`` as messages may print it: any user information (``user:password@``, ``token@``) as ``***@``.

    Found as ``urlsplit`` finds the authority, but by hand: ``urlsplit`` raises on a malformed URL
    (``ws://[::1``), which the message that names it must still show, and ``geturl`` rewrites one.
    """
    return _USER_INFO.sub(r"\1***@", url, count=1)
