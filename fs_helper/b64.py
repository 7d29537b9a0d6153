"""Strict standard base64 with the reference's error texts: the one implementation of the package.

The reference decodes byte fields with Rust's ``base64`` crate; its messages
(``Invalid symbol 33, offset 0.``, ``Invalid padding``, ...) are reproduced
so that error texts match (PROTOCOL.md 2.3).  Pure functions.

Every output chunk goes through here twice (the server encodes it, the
client decodes it), so the work is done by pybase64 (SIMD; about 5 us for
64 KiB against 200 us for the standard library's strict decode on a 2-core
machine).  fs_helper stands alone and may run where only the standard
library is importable: then :mod:`base64` does the same work, slower.
"""

import base64
import binascii
import re

try:
    import pybase64 as _codec
except ImportError:  # pragma: no cover - pybase64 is a dependency of the package
    _codec = base64
_encode_str = getattr(_codec, "b64encode_as_string", None)

_SYMBOLS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_ALPHABET = frozenset(_SYMBOLS)
_ALPHABET_INDEX = {char: value for value, char in enumerate(_SYMBOLS)}
_PAD = ord("=")
_NOT_IN_ALPHABET = re.compile(rb"[^A-Za-z0-9+/]")


def decode(text: str) -> bytes:
    """Decode standard base64 with canonical padding, as the reference's decoder does.

    Accepted: the standard alphabet, ``=`` padding to a multiple of 4
    characters, zero trailing bits (``QQ==``, not ``QR==``).  Nothing else:
    no whitespace, no missing or extra padding.

    Raises:
        ValueError: invalid input; the message is the reference's text
            (``Invalid symbol 33, offset 0.``, ``Invalid input length: 1``,
            ``Invalid last symbol 66, offset 1.``, ``Invalid padding``).
    """
    # A str's isascii() is a flag, not a scan, and pybase64 reads an ASCII str in place: no
    # 87 KB bytes copy of a 64 KiB chunk's text (one buffer fewer to fault in: ~25 -> ~7 us).
    if text.isascii() and len(text) % 4 == 0:
        padding_at = text.find("=")
        if padding_at == -1 or padding_at >= len(text) - 2:
            try:
                decoded = _codec.b64decode(text, validate=True)  # the fast path
            except binascii.Error:
                pass  # describe the problem below
            else:
                if padding_at == -1 or _zero_trailing_bits(text, padding_at):
                    return decoded
    raise ValueError(_describe(text.encode("utf-8", "surrogatepass")))


def _zero_trailing_bits(text: str, padding_at: int) -> bool:
    """Whether the last symbol before the padding leaves no bits set beyond the decoded bytes."""
    mask = 0x0F if len(text) - padding_at == 2 else 0x03
    return not _ALPHABET_INDEX[ord(text[padding_at - 1])] & mask


def _describe(data: bytes) -> str:
    """The first error the reference's decoder (Rust ``base64`` 0.22, ``STANDARD``) reports for ``data``.

    The same checks in the same order: an invalid last byte of a length
    4n+1 input; the complete quads before the last one, left to right; then
    the last (possibly partial) quad: its padding, its length, the padding
    count, and the trailing bits of its last symbol.
    """
    length, remainder = len(data), len(data) % 4
    if remainder == 1 and data[-1] != _PAD and data[-1] not in _ALPHABET:
        return _invalid_symbol(length - 1, data[-1])
    quads_end = max(0, length - remainder - (4 if remainder == 0 else 0))
    invalid = _NOT_IN_ALPHABET.search(data, 0, quads_end)  # in C: a 64 MiB message costs no Python loop
    if invalid is not None:
        return _invalid_symbol(invalid.start(), data[invalid.start()])
    symbols, padding, first_padding, accumulated = 0, 0, 0, 0
    for index, char in enumerate(data[quads_end:]):
        if char == _PAD:
            if index < 2:
                return _invalid_symbol(quads_end + index, char)
            if not padding:
                first_padding = index
            padding += 1
            continue
        if padding:
            return _invalid_symbol(quads_end + first_padding, _PAD)
        if char not in _ALPHABET:
            return _invalid_symbol(quads_end + index, char)
        accumulated |= _ALPHABET_INDEX[char] << (26 - 6 * symbols)
        symbols += 1
        last_symbol = char
    if length and symbols < 2:
        return "Invalid input length: %d" % (quads_end + symbols)
    if (padding + symbols) % 4:
        return "Invalid padding"
    if accumulated & (0xFFFFFFFF >> (symbols * 6 // 8 * 8)):
        return "Invalid last symbol %d, offset %d." % (last_symbol, quads_end + symbols - 1)
    return "Invalid input"  # unreachable: the fast path accepts everything else


def _invalid_symbol(offset: int, char: int) -> str:
    return "Invalid symbol %d, offset %d." % (char, offset)


def encode(data) -> str:
    """Standard base64 with padding of ``data`` (bytes, bytearray or memoryview)."""
    if _encode_str is not None:
        return _encode_str(data)  # straight to str: no ASCII check and copy of the bytes (~6 us a 64 KiB chunk)
    return _codec.b64encode(data).decode("ascii")


def decode_trusted(text: str) -> bytes:
    """Decode base64 this process produced itself (retained output): no validation, no error texts."""
    return _codec.b64decode(text)
