"""Decode a ``sandbox`` member (FileSystemSandboxContext) into a policy.

PROTOCOL.md section 9.  Shapes are checked by the JSON Schema first; this
module rejects the variants the project does not support (-32602, messages
starting with ``unsupported sandbox``) and tells whether the profile needs
enforcement.  Enforcement happens in the fs helper for file operations and
through bubblewrap for processes; a profile that cannot be enforced on this
host is refused with -32603 ``sandbox unavailable: ...`` and never runs
unconfined.
"""

import sys
from typing import List, NamedTuple, Optional, Tuple

from exec_server.protocol.errors import InternalError, InvalidParams, InvalidRequest
from exec_server.protocol.uris import UriError, uri_to_path


class SandboxPolicy(NamedTuple):
    """A profile that restricts the file system and/or the network."""

    entries: Tuple[Tuple[str, str], ...]  # (file URI or ":minimal", access)
    restrict_network: bool
    restrict_file_system: bool


def parse_sandbox(sandbox: Optional[dict], windows: Optional[bool] = None,
                  process: bool = False) -> Optional[SandboxPolicy]:
    """The policy to enforce, or None when the profile restricts nothing.

    ``process``: the profile is ``process/start``'s (the reference words a
    bad path there otherwise than for the fs methods).

    Raises:
        InvalidParams: an unsupported variant (glob patterns, special paths
            other than ``minimal``, a Windows sandbox level), or an entry's
            path that is not a file URI of this host (the URI's own error, as
            the reference; a URI with a host is -32600 for the fs methods).
        InvalidRequest: a URI with a host, for the fs methods.
    """
    if sandbox is None:
        return None
    if windows is None:
        windows = sys.platform.startswith("win")
    level = sandbox.get("windowsSandboxLevel")
    if windows and level != "disabled":
        raise InvalidParams("unsupported sandbox windowsSandboxLevel `%s`" % level)
    permissions = sandbox["permissions"]
    kind = permissions["type"]
    if kind in ("disabled", "external"):
        return None
    file_system = permissions.get("file_system") or {"type": "unrestricted"}
    entries: List[Tuple[str, str]] = []
    if file_system["type"] == "restricted":
        for entry in file_system.get("entries") or []:
            path = entry["path"]
            access = "none" if entry["access"] == "deny" else entry["access"]
            if path["type"] == "glob_pattern":
                raise InvalidParams("unsupported sandbox path type `glob_pattern`")
            if path["type"] == "special":
                value = path.get("value") or {}
                special = value.get("kind") if isinstance(value, dict) else None
                if special != "minimal":
                    raise InvalidParams("unsupported sandbox special path `%s`" % special)
                entries.append((":minimal", access))
            else:
                entries.append((_checked_uri(path.get("path", ""), windows, process), access))
    restrict_network = permissions.get("network") == "restricted"
    if file_system["type"] != "restricted" and not restrict_network:
        return None
    return SandboxPolicy(tuple(entries), restrict_network, file_system["type"] == "restricted")


def _checked_uri(uri: str, windows: bool, process: bool) -> str:
    """``uri`` if it is a file URI of this host, or the reference's error for it."""
    try:
        uri_to_path(uri, windows)
    except UriError as error:
        if error.kind != "host":
            raise InvalidParams(error.message) from None
        if process:
            raise InvalidParams("failed to prepare process sandbox: invalid sandbox permission path: "
                                + error.message) from None
        raise InvalidRequest("invalid sandbox permission path URI: " + error.message) from None
    return uri


def unavailable(policy: SandboxPolicy, why: str) -> InternalError:
    """-32603 ``sandbox unavailable: <why>`` for a profile this host cannot enforce.

    The request then fails; it never runs unconfined (PROTOCOL.md 9).
    """
    return InternalError("sandbox unavailable: %s" % why)
