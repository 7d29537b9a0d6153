"""Compiled schema checks: the accept path of request validation, without jsonschema.

fastjsonschema turns a schema into a plain Python function.  Importing it
costs ~10-15 ms where jsonschema (with referencing, attrs, rpds and its
metaschemas) costs ~60-100 ms, most of a cold start (``exec-server --listen
stdio`` answering ``initialize``, ``exec-server run``); a compiled check of
``process/start`` params takes ~3 us against jsonschema's ~20-50 us.

A compiled check only ever *accepts*.  :class:`~exec_server.protocol.schemas.SchemaSet`
asks jsonschema again about every instance a compiled check rejects, and
jsonschema's verdict and its serde-style error stand.  So the two must never
disagree the other way (compiled accepts, jsonschema rejects), and a schema is
compiled only if every keyword in it, and in every schema it references,
means the same to both libraries whatever their draft: :data:`SAFE_KEYWORDS`.
Anything else (a ``format``, ``pattern``, ``oneOf``, an ``enum`` with a number
in it: Python's ``1 == True`` would let ``true`` through) keeps that schema on
jsonschema alone.  And fastjsonschema counts ``1.0`` as an ``integer`` (as
JSON Schema does) where serde and our jsonschema type checker do not: a check
also rejects any instance holding a float (no field of ours takes one), so
jsonschema judges it.  ``tests/test_compiled_schemas.py`` checks the shipped
schemas compile and that both libraries agree on generated instances.

The module is sans-IO: it compiles from the schema dicts it is given.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict, Iterable, Optional, Set

LOG = logging.getLogger(__name__)

#: Keywords a schema may use to be compiled, and what their values may be.
#: Each means the same in draft 2019-09 and 2020-12 (fastjsonschema's
#: newest draft; our files say 2020-12) for any JSON instance.
SAFE_KEYWORDS = frozenset({
    "$schema", "$id", "$ref", "$defs", "$comment", "title", "description",
    "type", "properties", "required", "additionalProperties", "items",
    "enum", "const", "minimum", "maximum", "maxProperties",
})
_SCHEMA_MAPS = ("properties", "$defs")  # members whose values are all schemas
_JSON_TYPES = frozenset({"null", "boolean", "object", "array", "number", "string", "integer"})


class Unsafe(ValueError):
    """A schema uses something :data:`SAFE_KEYWORDS` does not allow."""


def _check_types(value: Any) -> None:
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(name, str) and name in _JSON_TYPES for name in names):
        raise Unsafe("type %r" % (value,))


def check_safe(schema: Any, refs: Set[str], root: bool = True) -> None:
    """Raise :class:`Unsafe` unless every keyword of ``schema`` is in :data:`SAFE_KEYWORDS`.

    Adds each ``$ref`` found to ``refs``; ``$id`` is allowed on the root only
    (a nested one would change how the references under it resolve).
    """
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise Unsafe("a schema that is not an object")
    for keyword, value in schema.items():
        if keyword not in SAFE_KEYWORDS or (keyword == "$id" and not root):
            raise Unsafe("keyword %r" % keyword)
        if keyword == "type":
            _check_types(value)
        elif keyword in _SCHEMA_MAPS:
            if not isinstance(value, dict):
                raise Unsafe("%s is not an object" % keyword)
            for member in value.values():
                check_safe(member, refs, root=False)
        elif keyword in ("items", "additionalProperties"):
            check_safe(value, refs, root=False)
        elif keyword in ("enum", "const"):
            # strings only: Python's == makes 1 and true, 1 and 1.0 the same
            values = value if keyword == "enum" else [value]
            if not isinstance(values, list) or not all(isinstance(item, str) for item in values):
                raise Unsafe("%s with a value that is not a string" % keyword)
        elif keyword in ("minimum", "maximum", "maxProperties"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise Unsafe("%s %r" % (keyword, value))
        elif keyword == "required":
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise Unsafe("required %r" % (value,))
        elif keyword == "$ref":
            if not isinstance(value, str):
                raise Unsafe("$ref %r" % (value,))
            refs.add(value)


def _absolute_refs(node: Any, base: str) -> Any:
    """``node`` with each ``#...`` reference made ``base#...``.

    fastjsonschema joins references with ``urllib.parse.urljoin``, which
    leaves ``#/$defs/x`` unjoined under a ``urn:`` base; jsonschema reads
    both spellings the same.
    """
    if isinstance(node, list):
        return [_absolute_refs(item, base) for item in node]
    if not isinstance(node, dict):
        return node
    copy = {key: _absolute_refs(value, base) for key, value in node.items()}
    ref = copy.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        copy["$ref"] = base + ref
    return copy


def _has_float(value: Any) -> bool:
    """Whether a float is anywhere in ``value`` (a parsed JSON value; strings are not looked into)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is float:
            return True
        if type(item) is dict:
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return False


class _FloatSeen(ValueError):
    """An instance with a float in it: jsonschema decides (see the module's text)."""


def _without_floats(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def accept(instance: Any) -> Any:
        check(instance)
        if _has_float(instance):
            raise _FloatSeen("a float: fastjsonschema counts 1.0 as an integer, serde does not")
        return instance

    return accept


class CompiledChecks:
    """Compiled checks of the schemas of one :class:`SchemaSet`, built on first use.

    Args:
        schemas: every schema by file name (``process/start.params.json``).
        uri_of: the ``$id`` a file name is known by.

    Thread-safe: a check is a pure function; two threads compiling the same
    schema at once both get a working one.
    """

    def __init__(self, schemas: Dict[str, dict], uri_of: Callable[[str], str]):
        self._schemas = schemas
        self._by_uri = {uri_of(name): name for name in schemas}
        self._uri_of = uri_of
        self._checks: Dict[str, Any] = {}  # file name -> check, or False: not compiled

    def check(self, name: str) -> Optional[Callable[[Any], Any]]:
        """The compiled check of ``name``, or None if it is not compiled (jsonschema decides alone).

        The check returns on an instance the schema accepts and raises
        otherwise (fastjsonschema's ``JsonSchemaException``, or anything else
        on data it cannot handle).
        """
        check = self._checks.get(name)
        if check is None:
            check = self._checks[name] = self._compile(name) or False
        return check or None

    def _documents(self, name: str) -> Iterable[str]:
        """``name`` and every file it references, each once; raises :class:`Unsafe`."""
        seen, todo = [], [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.append(current)
            refs: Set[str] = set()
            check_safe(self._schemas[current], refs)
            for ref in refs:
                document = ref.split("#", 1)[0]
                if document:
                    if document not in self._by_uri:
                        raise Unsafe("a reference outside the schema files: %s" % ref)
                    todo.append(self._by_uri[document])
        return seen

    def _compile(self, name: str) -> Optional[Callable[[Any], Any]]:
        try:
            self._documents(name)
            import fastjsonschema
        except (Unsafe, ImportError) as error:
            LOG.debug("%s is checked by jsonschema alone: %s", name, error)
            return None

        def load(uri: str) -> dict:
            # a fresh copy each time: fastjsonschema rewrites the references of what it is given
            document = self._by_uri[uri]
            return json.loads(json.dumps(_absolute_refs(self._schemas[document], uri)))

        try:
            # a handler for the scheme of each file's URI, so no reference is ever fetched from a network
            handlers = {uri.split(":", 1)[0]: load for uri in self._by_uri}
            return _without_floats(fastjsonschema.compile(
                load(self._uri_of(name)), handlers=handlers, use_default=False, use_formats=False,
                detailed_exceptions=False))
        except Exception as error:  # a schema fastjsonschema cannot compile: jsonschema alone is always right
            LOG.debug("%s is checked by jsonschema alone: fastjsonschema: %r", name, error)
            return None
