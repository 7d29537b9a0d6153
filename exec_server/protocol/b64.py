"""Base64 for the server: re-exports :mod:`fs_helper.b64` (one implementation for both)."""

from fs_helper.b64 import decode, decode_trusted, encode

__all__ = ["decode", "decode_trusted", "encode"]
