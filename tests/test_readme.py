"""README.rst's code blocks run as written, against a server this test starts.

Every ``.. code-block::`` of README.rst is extracted.  Python blocks run in a
fresh interpreter; ``exec-server run`` and ``exec-server cp`` shell lines
(with the ``echo``/``printf`` lines that feed them) run in a shell, in a
temporary directory.  The only change made to a snippet is its
``ws://127.0.0.1:8765``, which becomes the URL of the test's server.  What is
not run is listed below with the reason; a block or line that matches no
rule fails the test, so a new snippet cannot go unchecked.
"""

import os
import re
import shutil
import subprocess
import sys
from typing import List, Optional, Tuple

import pytest

pytestmark = pytest.mark.posix

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.rst")
SNIPPET_URL = "ws://127.0.0.1:8765"

#: (pattern a shell line matches, why it is not run)
SKIPPED_LINES = [
    (r"^python -m pip install", "installs the package; the test runs the installed checkout"),
    (r"^exec-server --listen ws://127\.0\.0\.1:8765", "starts the server; the test provides it at the URL"),
    (r"wss?://0\.0\.0\.0|build-box", "a non-loopback address"),
    (r"/etc/exec-server/", "sets up a non-loopback service's files under /etc (as root)"),
    (r"^exec-server service", "needs Windows (a Windows service)"),
    (r"opentelemetry-instrument|^OTEL_", "needs opentelemetry-distro, not a dependency of the project"),
    (r"^tox\b", "runs the whole test suite, this test included"),
    (r"pyenv", "needs pyenv"),
    (r"\.\./shared/|^C=", "the shared benchmark harness, outside the repository"),
    (r"^python benchmarks/", "a benchmark: minutes of load, measured by hand"),
    (r"--hosts fleet\.txt", "a fleet of non-loopback hosts (fleet.txt)"),
    (r"^\[build-|^build-\d|^HOST +STATUS|^exec-server run: all", "example output, not a command"),
]
#: (pattern a python block matches, why it is not run)
SKIPPED_PYTHON = [
    (r"wss?://build-", "a non-loopback address"),
    (r"/etc/exec-server/", "reads the non-loopback service's secret, set up as root under /etc"),
]
#: Shell lines that run: the CLI on loopback, and the lines that make its input.
RUN_LINES = r"^(exec-server (run|cp) |printf |echo )"
#: Blocks that are not run: a wire example, a systemd unit (needs systemd), a Kubernetes manifest.
TEXT_LANGUAGES = {"text", "ini", "yaml"}


def code_blocks() -> List[Tuple[int, str, str]]:
    """``(line number, language, code)`` of every code-block directive, dedented."""
    with open(README, encoding="utf-8") as readme:
        lines = readme.read().splitlines()
    blocks = []
    for index, line in enumerate(lines):
        match = re.match(r"^\.\. code-block:: *(\S+)", line)
        if not match:
            continue
        body = []
        for following in lines[index + 1:]:
            if following.strip() and not following.startswith(" "):
                break
            body.append(following)
        text = "\n".join(body).strip("\n")
        indent = min(len(row) - len(row.lstrip()) for row in text.splitlines() if row.strip())
        code = "\n".join(row[indent:] for row in text.splitlines()) + "\n"
        blocks.append((index + 1, match.group(1), code))
    return blocks


def shell_lines(code: str) -> List[str]:
    """Logical lines (backslash continuations joined); a comment line is appended to the line above."""
    lines: List[str] = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("#") and lines:
            lines[-1] += "  " + line
        elif line:
            lines.append(line)
    return lines


def skip_reason(line: str) -> Optional[str]:
    for pattern, reason in SKIPPED_LINES:
        if re.search(pattern, line):
            return reason
    return None


BLOCKS = code_blocks()


def test_readme_has_the_blocks_this_test_knows():
    languages = {language for _line, language, _code in BLOCKS}
    assert languages <= {"sh", "python"} | TEXT_LANGUAGES
    assert sum(language == "python" and not any(re.search(p, code) for p, _reason in SKIPPED_PYTHON)
               for _line, language, code in BLOCKS) >= 4
    for _line, language, code in BLOCKS:
        if language == "sh":
            for line in shell_lines(code):
                assert re.match(RUN_LINES, line) or skip_reason(line), "unclassified README line: %s" % line
    assert any(re.match(RUN_LINES, line) and not skip_reason(line)
               for _line, language, code in BLOCKS if language == "sh" for line in shell_lines(code))


def _environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # the exec-server script
    return env


@pytest.mark.parametrize("line_number,code", [(n, c) for n, lang, c in BLOCKS if lang == "python"],
                         ids=lambda value: "line%d" % value if isinstance(value, int) else "")
def test_python_block_runs(line_number, code, server, tmp_path):
    for pattern, reason in SKIPPED_PYTHON:
        if re.search(pattern, code):
            pytest.skip(reason)
    if "with_sandbox" in code and shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap (bwrap) on PATH for the sandbox")
    done = subprocess.run([sys.executable, "-c", code.replace(SNIPPET_URL, server.url)], cwd=str(tmp_path),
                          capture_output=True, timeout=90, env=_environment(), stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    for expected in re.findall(r"print\(.*  # (.+)$", code, re.MULTILINE):  # what a comment says is printed
        assert expected.encode() in done.stdout, (expected, done.stdout)


@pytest.mark.parametrize("line_number,code", [(n, c) for n, lang, c in BLOCKS if lang == "sh"],
                         ids=lambda value: "line%d" % value if isinstance(value, int) else "")
def test_shell_block_runs(line_number, code, server, tmp_path):
    lines = [line for line in shell_lines(code) if re.match(RUN_LINES, line) and not skip_reason(line)]
    if not lines:
        pytest.skip("; ".join(sorted({str(skip_reason(line)) for line in shell_lines(code)})))
    for line in lines:
        command, _, comment = line.partition("  #")
        done = subprocess.run(["sh", "-c", command.replace(SNIPPET_URL, server.url)], cwd=str(tmp_path),
                              capture_output=True, timeout=90, env=_environment(), stdin=subprocess.DEVNULL)
        status = re.search(r"exits with status (\d+)", comment)
        assert done.returncode == (int(status.group(1)) if status else 0), (line, done.stderr)
        assert b"Traceback" not in done.stderr
        printed = re.match(r"\s*prints ([^\s,]+)", comment)
        if printed:
            assert done.stdout.split()[:1] == [printed.group(1).encode()], (line, done.stdout)


def _line_kinds(lines: List[str]) -> List[str]:
    """``id 3`` or ``process/exited`` for each JSON-RPC line (a literal one may hold ``...``)."""
    kinds = []
    for line in lines:
        match = re.match(r'\{"(?:id":(\d+)|method":"([^"]+)")', line)
        assert match, line
        kinds.append("id " + match.group(1) if match.group(1) else match.group(2))
    return sorted(kinds)


def test_the_stdio_exchange_prints_what_readme_shows():
    """The literal ``--listen stdio`` exchange: every answer and notification the text block after it shows."""
    index = next(i for i, (_n, lang, code) in enumerate(BLOCKS)
                 if lang == "sh" and code.startswith("printf ") and "exec-server --listen stdio" in code)
    command, shown = BLOCKS[index][2], BLOCKS[index + 1]
    assert shown[1] == "text"
    for _attempt in range(3):  # the notifications' place varies, never whether they come
        done = subprocess.run(["sh", "-c", command], capture_output=True, timeout=60, env=_environment(),
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
        assert _line_kinds(done.stdout.decode().splitlines()) == _line_kinds(shown[2].splitlines()), done.stdout
