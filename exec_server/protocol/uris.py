"""File URIs for the server: re-exports :mod:`fs_helper.uris` (one implementation for both)."""

from fs_helper.uris import RELATIVE_URL, UriError, path_to_uri, platform_os, uri_to_path

__all__ = ["RELATIVE_URL", "UriError", "path_to_uri", "platform_os", "uri_to_path"]
