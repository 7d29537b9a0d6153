"""The package's shape: three layers whose imports point one way, no cycles, small modules.

Layers (README.rst, "Module map"): ``cli`` on top; ``client`` and ``server``
beside each other, never importing each other; ``common`` (what both ends
share: telemetry, tree kill, WebSocket framing over a socket) below them;
``protocol`` (sans-IO) at the bottom, importing nothing above it and no
socket, thread or subprocess module.  ``fs_helper`` runs alone inside the
sandbox and never imports ``exec_server``.  Every import counts, including
the ones made inside a function, so a cycle cannot hide behind a lazy import.
"""

import ast
import os
from typing import Dict, Iterator, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("exec_server", "fs_helper")
MAX_MODULE_LINES = 400
#: Modules a program writes (and a test keeps current), which nobody edits: no size limit.
GENERATED = {"exec_server.protocol.prebuilt_checks"}

#: layer -> the layers of exec_server it may import (besides itself).
ALLOWED = {
    "protocol": set(),
    "common": {"protocol"},
    "server": {"protocol", "common"},
    "client": {"protocol", "common"},
    "cli": {"protocol", "common", "server", "client"},
}
#: What the sans-IO layer must not import (CONVENTIONS.md, Architecture 1).
IO_MODULES = {"socket", "selectors", "select", "ssl", "threading", "subprocess", "wsproto", "werkzeug",
              "simple_websocket", "asyncio", "psutil"}


def _modules() -> Dict[str, str]:
    """Dotted module name -> file path, for every module of both packages."""
    found = {}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


MODULES = _modules()


def _imports(module: str) -> Iterator[Tuple[str, int]]:
    """(imported name, line) for every import statement in the module, wherever it stands."""
    path = MODULES[module]
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    is_package = path.endswith("__init__.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                candidate = prefix + "." + alias.name
                yield (candidate if candidate in MODULES else prefix), node.lineno


def _internal(name: str) -> str:
    """The module of this project that an imported name refers to ('' for a third-party name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "exec_server" and len(parts) > 1 else ""


def test_every_module_belongs_to_a_layer():
    stray = [m for m in MODULES if m.startswith("exec_server.") and _layer(m) not in ALLOWED
             and m not in ("exec_server.__main__",)]
    assert stray == [], "modules outside protocol/common/server/client/cli: %s" % stray


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in ALLOWED))
def test_imports_point_down(module):
    layer = _layer(module)
    wrong = []
    for name, line in _imports(module):
        target = _internal(name)
        if target.startswith("exec_server.") and _layer(target) not in ALLOWED[layer] | {layer}:
            wrong.append("line %d imports %s (%s may import only %s)"
                         % (line, target, layer, sorted(ALLOWED[layer]) or "nothing above it"))
        if layer == "protocol" and name.split(".")[0] in IO_MODULES:
            wrong.append("line %d imports %s: protocol is sans-IO" % (line, name))
    assert wrong == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("fs_helper")))
def test_fs_helper_stands_alone(module):
    assert [n for n, _ in _imports(module) if n.split(".")[0] == "exec_server"] == []


def test_no_asyncio_anywhere():
    assert [m for m in MODULES if any(n.split(".")[0] == "asyncio" for n, _ in _imports(m))] == []


def _graph() -> Dict[str, Set[str]]:
    graph = {}
    for module in MODULES:
        edges = set()
        for name, _line in _imports(module):
            target = _internal(name)
            # A package's __init__ is imported on the way to any of its modules; that
            # is not an edge of ours unless the import names the package itself.
            if target and target != module:
                edges.add(target)
        graph[module] = edges
    return graph


def _cycles(graph: Dict[str, Set[str]]):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    graph = _graph()
    # The top-level package only names its public exports (imported on first use);
    # it is where a user starts, not a layer, so its edges are left out.
    graph.pop("exec_server", None)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_small(module):
    if module in GENERATED:
        pytest.skip("generated")
    with open(MODULES[module], encoding="utf-8") as handle:
        lines = sum(1 for _ in handle)
    assert lines <= MAX_MODULE_LINES, "%s has %d lines (at most %d)" % (module, lines, MAX_MODULE_LINES)


#: What ``exec-server run`` (embedded server) and ``Client`` without a connection must not import:
#: each is paid by every one-shot command (README "Performance", (c)).
START_UP_FREE = ("wsproto", "ssl", "psutil", "werkzeug", "http.server", "jsonschema", "exec_server.client.group",
                 "exec_server.client.websocket", "exec_server.server.app", "uuid", "platform", "fs_helper.operations",
                 "exec_server.server.handlers.fs")


def test_one_shot_start_up_imports_only_what_it_needs():
    import subprocess
    import sys

    probe = ("import sys, exec_server.cli.run, exec_server.cli.embedded, exec_server.client.api; "
             "print(' '.join(m for m in %r if m in sys.modules))" % (START_UP_FREE,))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []


def _module_map() -> Set[str]:
    """The files README.rst's module map names (``one line per module``), as paths from the repository root."""
    with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as handle:
        text = handle.read()
    block = text.split("One line per module::\n\n", 1)[1].split("\n\n", 1)[0]
    named, folders = set(), []  # folders: (indent, name) of the enclosing directories
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        entry = line.strip().split("   ")[0].strip()  # the name column; the description follows after spaces
        folders = [(depth, name) for depth, name in folders if depth < indent]
        if entry.endswith("/"):
            folders.append((indent, entry.rstrip("/")))
            continue
        for name in entry.split(", "):  # "serve.py, run.py, cp.py" names several
            named.add("/".join([folder for _depth, folder in folders] + [name]))
    return named


def test_the_readme_module_map_names_every_module():
    """A newcomer reads the map first: every module (``__init__.py`` of a package excepted) has its line."""
    actual = {os.path.relpath(path, ROOT).replace(os.sep, "/") for path in MODULES.values()}
    named = _module_map()
    unnamed = sorted(path for path in actual - named if not path.endswith("/__init__.py"))
    assert (unnamed, sorted(named - actual)) == ([], [])
