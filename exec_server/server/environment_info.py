"""The ``environment/info`` result: shell, directories, platform, capabilities.

PROTOCOL.md 4.4 gives the members and their order.
"""

import os
import sys
from typing import Any, Dict, List

from exec_server import __version__
from exec_server.protocol.uris import path_to_uri, platform_os

#: Capability flags in the reference's order; only implemented features are true.
CAPABILITY_NAMES = (
    "networkProxyLaunch", "networkProxyReviewDomains", "credentialMasking",
    "credentialMaskingCustomProviders", "capabilityDiscoverySandbox", "fsWatchMissing",
    "capabilityDiscoveryV2", "environmentConfigRead", "httpHeaderEnvVars",
    "sandboxedFileStreaming", "fileWriteStreaming", "shellSnapshotV2", "windowsMxc",
    "linuxRootWritePreservesDevices", "linuxApprovedRootWritePreservesRestrictions",
)
#: Capabilities this server implements.
IMPLEMENTED_CAPABILITIES = frozenset({"fileWriteStreaming"})

_SHELL_NAMES = ("bash", "zsh", "sh", "fish", "dash", "ksh", "powershell", "pwsh", "cmd")


def default_shell() -> Dict[str, str]:
    """``{"name", "path"}`` of the user's default shell."""
    if sys.platform.startswith("win"):
        path = os.environ.get("COMSPEC", "cmd.exe")
    else:
        path = os.environ.get("SHELL") or "/bin/sh"
    base = os.path.basename(path).lower()
    if base.endswith(".exe"):
        base = base[:-4]
    name = base if base in _SHELL_NAMES else "sh"
    if name == "pwsh":
        name = "powershell"
    return {"name": name, "path": path}


def _temporary_directories() -> List[str]:
    names = ("TEMP", "TMP") if sys.platform.startswith("win") else ("TMPDIR",)
    found = []
    for name in names:
        value = os.environ.get(name)
        if value:
            uri = path_to_uri(os.path.abspath(value))
            if uri not in found:
                found.append(uri)
    return found


def environment_info() -> Dict[str, Any]:
    """The ``environment/info`` result for this server process."""
    if sys.platform.startswith("win"):
        import tempfile  # Windows only: tempfile (random, shutil) costs a start-up ~3 ms (#17)
        temp_dir = tempfile.gettempdir()
    else:
        temp_dir = os.environ.get("TMPDIR") or "/tmp"
    return {
        "shell": default_shell(),
        "executorVersion": __version__,
        "cwd": path_to_uri(os.getcwd()),
        "userHomeDir": path_to_uri(os.path.expanduser("~")),
        "platformOs": platform_os(),
        "temporaryDirectories": _temporary_directories(),
        "tempDir": path_to_uri(os.path.abspath(temp_dir)),
        "capabilities": {name: name in IMPLEMENTED_CAPABILITIES for name in CAPABILITY_NAMES},
    }
