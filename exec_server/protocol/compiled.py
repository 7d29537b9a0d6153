"""Compiled schema checks: the accept path of request validation, without jsonschema.

fastjsonschema turns a schema into a plain Python function.  Importing it
costs ~3-5 ms on top of what the server imports anyway (~25-35 ms in a bare
interpreter) where jsonschema (with referencing, attrs, rpds and its
metaschemas) costs ~60-100 ms, most of a cold start (``exec-server --listen
stdio`` answering ``initialize``, ``exec-server run``); a compiled check of
``process/start`` params takes ~3 us against jsonschema's ~20-50 us.

A compiled check only ever *accepts*.  :class:`~exec_server.protocol.schemas.SchemaSet`
asks jsonschema again about every instance a compiled check rejects, and
jsonschema's verdict and its serde-style error stand.  So the two must never
disagree the other way (compiled accepts, jsonschema rejects).  fastjsonschema
compiles our 2020-12 files with its newest generator (draft 2019-09 from
2.22, draft-07 in 2.21, which Python 3.9 gets), so a schema is compiled only
where nothing in it, or in any schema it references, can be read differently
(:func:`check_safe`):

- only the keywords of :data:`SAFE_KEYWORDS`, which mean the same in
  draft-07, 2019-09 and 2020-12 for any JSON instance;
- an ``enum`` or ``const`` of strings only (Python's ``1 == True`` would let
  ``true`` through an ``enum`` of numbers);
- a ``$ref`` with no sibling but annotations (fastjsonschema ignores the
  siblings, 2020-12 applies them);
- ``$id`` and ``$schema`` on a file's root only, ``$schema`` being 2020-12
  (a nested dialect would lose our integer rule on the jsonschema side);
- member and definition names of letters, digits and ``_`` (fastjsonschema
  2.21 escapes a backslash in a name wrongly), and no two references whose
  generated function names collide (fastjsonschema names a function after the
  lowercased reference, punctuation made ``_``: ``fileUri`` and ``fileuri``
  would share one);
- one file per ``$id``.

Anything else keeps that schema on jsonschema alone.  And fastjsonschema
counts ``1.0`` as an ``integer`` (as JSON Schema does) where serde and our
jsonschema type checker do not: a check also rejects any instance holding a
float (no field of ours takes one), so jsonschema judges it.
``tests/test_compiled_schemas.py`` checks the shipped schemas compile, that
both libraries agree on generated instances, and each rule above.

The shipped schema files are compiled ahead of time: the checks of every
``*.params.json`` stand as plain functions in
:mod:`exec_server.protocol.prebuilt_checks` (written by :func:`prebuilt_source`,
``python -m exec_server.protocol.prebuild --write``), with the CRC-32 of the
files they were made from.  A server whose files have that digest imports that
module and neither imports fastjsonschema (~3-5 ms with ``decimal``) nor
compiles (~1-6 ms a method, on its first request); with any other files it
compiles them as above.  The tests fail when the module is not current.

The module is sans-IO: it compiles from the schema dicts it is given.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Callable, Dict, List, Optional, Set
from urllib.parse import unquote

LOG = logging.getLogger(__name__)

#: Keywords a schema may use to be compiled (with the value rules of :func:`check_safe`).
SAFE_KEYWORDS = frozenset({
    "$schema", "$id", "$ref", "$defs", "$comment", "title", "description",
    "type", "properties", "required", "additionalProperties", "items",
    "enum", "const", "minimum", "maximum", "maxProperties",
})
#: The only dialect a compiled schema may name (on its root).
DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: Keywords that may stand beside a ``$ref`` without changing what it accepts.
ANNOTATIONS = frozenset({"description", "title", "$comment"})
_SCHEMA_MAPS = ("properties", "$defs")  # members whose values are all schemas
_JSON_TYPES = frozenset({"null", "boolean", "object", "array", "number", "string", "integer"})
_NAME = re.compile(r"[A-Za-z0-9_]+\Z")
_NOT_COMPILED = False  # in CompiledChecks._checks: jsonschema alone checks this schema
_NOT_PREBUILT = object()  # prebuilt_checks has nothing to say about a schema: compile it here
#: The module holding the shipped schemas' checks compiled ahead of time (:func:`prebuilt_source`).
PREBUILT_MODULE = "exec_server.protocol.prebuilt_checks"


class Unsafe(ValueError):
    """A schema uses something a compiled check could read differently from jsonschema (:func:`check_safe`)."""


def _check_types(value: Any) -> None:
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(name, str) and name in _JSON_TYPES for name in names):
        raise Unsafe("type %r" % (value,))


def _check_names(keyword: str, names: Any) -> None:
    if not all(isinstance(name, str) and _NAME.match(name) for name in names):
        raise Unsafe("%s with a name other than letters, digits and _" % keyword)


def check_safe(schema: Any, refs: Set[str], root: bool = True) -> None:
    """Raise :class:`Unsafe` unless ``schema`` follows the rules of this module's text.

    Adds each ``$ref`` found to ``refs``.
    """
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise Unsafe("a schema that is not an object")
    if "$ref" in schema and not set(schema) - {"$ref"} <= ANNOTATIONS:
        raise Unsafe("$ref beside %s" % sorted(set(schema) - {"$ref"} - ANNOTATIONS))
    for keyword, value in schema.items():
        if keyword not in SAFE_KEYWORDS or (keyword in ("$id", "$schema") and not root):
            raise Unsafe("keyword %r" % keyword)
        if keyword == "type":
            _check_types(value)
        elif keyword in ANNOTATIONS or keyword == "$id":
            if not isinstance(value, str):
                raise Unsafe("%s that is not a string" % keyword)
        elif keyword == "$schema":
            if value != DIALECT:
                raise Unsafe("$schema %r" % (value,))
        elif keyword in _SCHEMA_MAPS:
            if not isinstance(value, dict):
                raise Unsafe("%s is not an object" % keyword)
            _check_names(keyword, value)
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
            if not isinstance(value, list):
                raise Unsafe("required %r" % (value,))
            _check_names(keyword, value)
        elif keyword == "$ref":
            if not isinstance(value, str):
                raise Unsafe("$ref %r" % (value,))
            refs.add(value)


def _function_name(uri: str) -> str:
    """The name fastjsonschema gives the function of the schema at ``uri`` (RefResolver.get_scope_name)."""
    name = unquote(uri).replace("~1", "_").replace("~0", "_")
    return re.sub(r"[^a-zA-Z0-9]", "_", name).lower().rstrip("_")


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
    """Whether a float, or anything ``json.loads`` never makes (a ``Decimal``), is anywhere in ``value``.

    Strings and member names are not looked into.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, float) or not (item is None or isinstance(item, (str, int))):
            return True
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

    _import_failed_logged = False

    def __init__(self, schemas: Dict[str, dict], uri_of: Callable[[str], str], digest: Optional[int] = None):
        self._schemas = schemas
        self._uri_of = uri_of
        self._digest = digest  # the files' CRC-32 (files_digest), None for schemas not read from files
        uris = [uri_of(name) for name in schemas]
        self._by_uri = dict(zip(uris, schemas))
        self._shared_ids = {uri for uri in uris if uris.count(uri) > 1}
        self._checks: Dict[str, Any] = {}  # file name -> check, or _NOT_COMPILED

    def check(self, name: str) -> Optional[Callable[[Any], Any]]:
        """The compiled check of ``name``, or None if it is not compiled (jsonschema decides alone).

        The check returns on an instance the schema accepts and raises
        otherwise (fastjsonschema's ``JsonSchemaException``, or anything else
        on data it cannot handle).

        Raises:
            KeyError: no schema is named ``name``.
        """
        check = self._checks.get(name)
        if check is None:
            check = self._checks[name] = self._compile(name) or _NOT_COMPILED
        return check or None

    def _check_documents(self, name: str) -> None:
        """Check ``name`` and every file it references (:func:`check_safe`).

        Raises:
            Unsafe: a rule of this module's text is broken.
        """
        seen: List[str] = []
        todo = [name]
        functions: Dict[str, str] = {}  # fastjsonschema's function name -> the reference it is for

        def claim(uri: str) -> None:
            uri = uri.rstrip("#")
            other = functions.setdefault(_function_name(uri), uri)
            if other != uri:
                raise Unsafe("%s and %s would share one fastjsonschema function" % (other, uri))

        claim(self._uri_of(name))
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.append(current)
            uri = self._uri_of(current)
            if uri in self._shared_ids:
                raise Unsafe("another file has the $id %s" % uri)
            refs: Set[str] = set()
            check_safe(self._schemas[current], refs)
            for ref in refs:
                claim(uri + ref if ref.startswith("#") else ref)
                document = ref.split("#", 1)[0]
                if document:
                    if document not in self._by_uri:
                        raise Unsafe("a reference outside the schema files: %s" % ref)
                    todo.append(self._by_uri[document])

    def _compile(self, name: str) -> Optional[Callable[[Any], Any]]:
        prebuilt = self._prebuilt(name)
        if prebuilt is not _NOT_PREBUILT:
            return prebuilt
        try:
            self._check_documents(name)
        except Unsafe as error:
            LOG.debug("%s is checked by jsonschema alone: %s", name, error)
            return None
        try:
            import fastjsonschema
        except Exception as error:  # not installed, or a broken install: jsonschema alone is always right
            if not CompiledChecks._import_failed_logged:
                CompiledChecks._import_failed_logged = True
                LOG.warning("fastjsonschema cannot be imported (%r): every request is validated by jsonschema, "
                            "which slows a cold start", error)
            return None
        try:
            return _without_floats(fastjsonschema.compile(*self._definition(name), **_OPTIONS))
        except Exception as error:  # a schema fastjsonschema cannot compile: jsonschema alone is always right
            LOG.warning("%s is checked by jsonschema alone: fastjsonschema cannot compile it: %r", name, error)
            return None

    def _prebuilt(self, name: str) -> Any:
        """The check of ``name`` from :data:`PREBUILT_MODULE` (None: jsonschema alone), or ``_NOT_PREBUILT``.

        ``_NOT_PREBUILT`` unless the files are those the module was made from
        and it has a word on ``name``.
        """
        if self._digest is None:
            return _NOT_PREBUILT
        try:  # the rules of this module's text hold for a prebuilt check too (~0.2 ms a method, once)
            self._check_documents(name)
        except Unsafe as error:
            LOG.debug("%s is checked by jsonschema alone: %s", name, error)
            return None
        try:
            import importlib
            module = importlib.import_module(PREBUILT_MODULE)
            if module.DIGEST != self._digest or name not in module.CHECKS:
                return _NOT_PREBUILT
        except Exception as error:  # missing or broken (a source tree being regenerated): compile here
            LOG.debug("no prebuilt checks (%r): compiling %s", error, name)
            return _NOT_PREBUILT
        check = module.CHECKS[name]
        return None if check is None else _without_floats(check)

    def _definition(self, name: str):
        """fastjsonschema's arguments for schema ``name``: (its schema, the handlers of every file's URI)."""
        def load(uri: str) -> dict:
            # a fresh copy each time: fastjsonschema rewrites the references of what it is given
            document = self._by_uri[uri]
            return json.loads(json.dumps(_absolute_refs(self._schemas[document], uri)))

        # a handler for the scheme of each file's URI, so no reference is ever fetched from a network
        handlers = {uri.split(":", 1)[0]: load for uri in self._by_uri}
        return load(self._uri_of(name)), handlers

    def source(self, name: str) -> Optional[str]:
        """The Python source fastjsonschema generates for ``name``, or None where it is not compiled.

        Raises:
            ImportError: fastjsonschema is not installed.
        """
        try:
            self._check_documents(name)
        except Unsafe:
            return None
        import fastjsonschema
        return fastjsonschema.compile_to_code(*self._definition(name), **_OPTIONS)


#: fastjsonschema's options for every check: no defaults written into the params, no format checks.
_OPTIONS = {"use_default": False, "use_formats": False, "detailed_exceptions": False}
