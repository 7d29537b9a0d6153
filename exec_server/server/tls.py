"""TLS for ``wss://`` listeners: the server's :class:`ssl.SSLContext`.

The context comes from the standard :mod:`ssl` module: TLS 1.2 or newer,
the certificate chain and key given, and, with a client CA file, client
certificates required and checked against it.
"""

import ssl
from typing import Optional


class EncryptedKey(ValueError):
    """A private key file is encrypted: no passphrase is ever asked for (:func:`refuse_passphrase`)."""


def refuse_passphrase() -> bytes:
    """``load_cert_chain``'s ``password``: an encrypted key is refused (OpenSSL otherwise asks for its
    passphrase on the terminal, and a server started by a service manager or without one waits there).

    Raises:
        EncryptedKey: always (called only for an encrypted key).
    """
    raise EncryptedKey("the private key is encrypted")


def _certificate_without_key(path: str) -> bool:
    """Whether the PEM file ``path`` holds a certificate and no private key."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(1 << 20)
    except OSError:
        return False
    return b"-----BEGIN CERTIFICATE-----" in text and b"PRIVATE KEY-----" not in text


def server_context(certfile: str, keyfile: Optional[str] = None,
                   client_ca: Optional[str] = None) -> ssl.SSLContext:
    """A server-side context for ``certfile``/``keyfile`` (PEM).

    Args:
        certfile: the server's certificate chain, PEM.
        keyfile: its private key, PEM (None: the key is in ``certfile``).
        client_ca: PEM file of the CAs client certificates must chain to;
            when given, a client without a valid certificate is refused
            during the handshake.
    Raises:
        ValueError: a file is missing or unreadable, the key does not
            match the certificate, is encrypted, or is missing; the message
            names the file.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile, password=refuse_passphrase)
    except EncryptedKey:
        raise ValueError("cannot load the TLS key %s: it is encrypted (a passphrase protects it); give the key "
                         "unencrypted, readable by the server's user alone (openssl pkey -in KEY -out PLAIN)"
                         % (keyfile or certfile)) from None
    except (OSError, ssl.SSLError) as exc:
        if keyfile is None and isinstance(exc, ssl.SSLError) and _certificate_without_key(certfile):
            raise ValueError("cannot load the TLS certificate %s: no private key in it (give --tls-keyfile)"
                             % certfile) from None
        raise ValueError("cannot load the TLS certificate %s / key %s: %s" % (certfile, keyfile or certfile, exc)) \
            from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError("cannot load the client CA file %s: %s" % (client_ca, exc)) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
