"""Writes :mod:`exec_server.protocol.prebuilt_checks`: the shipped params schemas compiled ahead of time.

A developer tool, never imported by a server: after changing a schema file (or
upgrading fastjsonschema), run::

    python -m exec_server.protocol.prebuild --write

``tests/test_compiled_schemas.py`` fails while the module is not current.
The module holds fastjsonschema's generated functions for every
``*.params.json`` that :mod:`exec_server.protocol.compiled` would compile,
each shared function once, with its own stand-ins for the two names the
generated code imports (``JsonSchemaValueException`` from fastjsonschema and
``Decimal``, which ``json.loads`` never makes: an instance holding one is
judged by jsonschema, see ``compiled._has_float``), so loading it imports
neither.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Dict, List, Optional, Tuple

from exec_server.protocol.compiled import PREBUILT_MODULE, _function_name
from exec_server.protocol.schemas import SchemaSet

#: The lines fastjsonschema puts before the first function, which the module's own header replaces.
_HEADER = re.compile(r'VERSION = "[^"]*"|from decimal import Decimal|NoneType = type\(None\)|'
                     r"from fastjsonschema import JsonSchemaValueException(, JsonSchemaValuesException)?|")

_PREAMBLE = '''"""The shipped params schemas' checks, compiled ahead of time: generated, do not edit.

Written by ``python -m exec_server.protocol.prebuild --write`` from fastjsonschema {version}'s
code for the schema files whose CRC-32 is ``DIGEST``; a server with other files compiles them itself
(:mod:`exec_server.protocol.compiled`).  ``CHECKS`` maps each file to its check, None where
jsonschema alone decides.
"""
# flake8: noqa


class JsonSchemaValueException(ValueError):
    """The instance does not match (fastjsonschema's exception, stood in for: jsonschema words the error)."""


JsonSchemaValuesException = JsonSchemaValueException
Decimal = float  # json.loads never makes a decimal.Decimal; compiled._has_float sends one to jsonschema
NoneType = type(None)
DIGEST = {digest:#010x}
GENERATOR = "fastjsonschema {version}"
'''


def _split(code: str) -> Tuple[List[str], Dict[str, str]]:
    """(the lines before the first function, each function's text by name) of fastjsonschema's code."""
    head, _, body = code.partition("\ndef ")
    functions = {}
    for chunk in body.split("\ndef ") if body else []:
        functions[chunk[:chunk.index("(")]] = "def " + chunk.rstrip() + "\n"
    return head.splitlines(), functions


def prebuilt_source(schemas: SchemaSet) -> str:
    """The text of :data:`~exec_server.protocol.compiled.PREBUILT_MODULE` for ``schemas`` (read from files).

    Raises:
        ValueError: ``schemas`` were not read from files, or two schemas'
            code defines one function differently.
        ImportError: fastjsonschema is not installed.
    """
    import fastjsonschema

    if schemas.digest is None:
        raise ValueError("only schemas read from files can be prebuilt")
    functions: Dict[str, str] = {}
    checks: Dict[str, Optional[str]] = {}
    for name in schemas.names():
        if not name.endswith(".params.json"):
            continue
        code = schemas.compiled_checks.source(name)
        if code is None:
            checks[name] = None
            continue
        head, own = _split(code)
        unknown = [line for line in head if not _HEADER.fullmatch(line)]
        if unknown:  # a fastjsonschema this module does not know: say so, rather than write fewer checks
            raise ValueError("%s: fastjsonschema's code begins with %r" % (name, unknown))
        for function, text in own.items():
            if functions.setdefault(function, text) != text:
                raise ValueError("%s is generated differently for two schemas" % function)
        checks[name] = "validate_" + _function_name(schemas.uri_of(name))
    table = "".join("    %r: %s,\n" % item for item in sorted(checks.items()))
    return "\n\n".join([_PREAMBLE.format(version=fastjsonschema.VERSION, digest=schemas.digest)]
                       + [text for _name, text in sorted(functions.items())]
                       + ["CHECKS = {\n%s}\n" % table])


def module_path() -> str:
    """The file of :data:`~exec_server.protocol.compiled.PREBUILT_MODULE` in this package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), PREBUILT_MODULE.rsplit(".", 1)[1] + ".py")


def main(argv: List[str]) -> int:
    text = prebuilt_source(SchemaSet.load())
    if argv == ["--write"]:
        with open(module_path(), "w", encoding="utf-8") as handle:
            handle.write(text)
        return 0
    if argv:
        sys.stderr.write("usage: python -m exec_server.protocol.prebuild [--write]\n")
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
