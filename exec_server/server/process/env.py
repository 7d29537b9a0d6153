"""Build a child's environment from ``env`` and ``envPolicy``.

Follows the Codex exec-server rules (PROTOCOL.md 5.2,
``codex-rs/core/src/exec_env.rs``).  Pure functions, no I/O.
"""

import fnmatch
from typing import Any, Dict, Iterable, Mapping, Optional

#: Variables kept by ``inherit: "core"`` (``LANG`` as reference 0.169.0 does).
CORE_VARIABLES = ("HOME", "LOGNAME", "PATH", "SHELL", "USER", "USERNAME", "TMPDIR", "TEMP", "TMP", "LANG")
#: Names dropped unless ``ignoreDefaultExcludes`` is true.
DEFAULT_EXCLUDES = ("*KEY*", "*SECRET*", "*TOKEN*")
#: Control variables never passed to a child.
REMOVED_VARIABLES = ("CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE",)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern.upper()) for pattern in patterns)


def child_environment(
    env: Mapping[str, str],
    policy: Optional[Mapping[str, Any]],
    server_environ: Mapping[str, str],
) -> Dict[str, str]:
    """The exact environment of a child process.

    Args:
        env: the request's ``env``, laid over everything else.
        policy: the request's ``envPolicy`` (already schema-checked) or None;
            without one the child gets exactly ``env``.
        server_environ: the server's own environment.
    Returns:
        a new dict of names to values.
    """
    if policy is None:
        result = dict(env)
    else:
        inherit = policy["inherit"]
        if inherit == "all":
            result = dict(server_environ)
        elif inherit == "core":
            result = {k: v for k, v in server_environ.items() if k.upper() in CORE_VARIABLES}
        else:
            result = {}
        if not policy["ignoreDefaultExcludes"]:
            result = {k: v for k, v in result.items() if not _matches(k, DEFAULT_EXCLUDES)}
        if policy["exclude"]:
            result = {k: v for k, v in result.items() if not _matches(k, policy["exclude"])}
        result.update(policy["set"])
        if policy["includeOnly"]:
            result = {k: v for k, v in result.items() if _matches(k, policy["includeOnly"])}
        result.update(env)
    for name in REMOVED_VARIABLES:
        result.pop(name, None)
    return result
