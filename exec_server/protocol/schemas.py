"""JSON Schema validation of request params (draft 2020-12), serde-style errors.

Schemas live in the top-level ``schemas/`` folder (shipped in the wheel as the
``exec_server.schemas`` package data): ``<method>.params.json`` and
``<method>.result.json``, e.g. ``schemas/process/start.params.json``.  They are
loaded once (:meth:`SchemaSet.load`; the shipped files are checked against
the metaschema by the tests and the packaging check, other files on first use); ``$ref``s resolve offline
through a :class:`referencing.Registry`.  jsonschema does not promise that a
validator may be used by two threads at once, so each validation checks one
out of a per-schema free list and returns it afterwards: validators are built
once and reused by every connection, never shared concurrently.

A request's params are first checked by a compiled check
(:mod:`exec_server.protocol.compiled`, fastjsonschema): most requests are
valid, and that path neither imports jsonschema (~60-100 ms of a cold start)
nor spends its ~20-50 us per request.  Params the compiled check rejects are
validated again by jsonschema, whose verdict stands.

Failures become -32602 errors worded like the reference's serde messages
(PROTOCOL.md 2.3, :mod:`exec_server.protocol.schema_errors`): ``missing field
`processId` ``, ``invalid type: number, expected a string``, ``unknown variant
`kill`, expected `interrupt` ``.  The error's ``data`` holds the JSON path of
the offending value.
"""

from __future__ import annotations

import collections
import json
import os
import zlib
from typing import TYPE_CHECKING, Any, Deque, Dict, Iterable, List, Optional, Tuple

from exec_server.protocol.compiled import ANNOTATIONS, CompiledChecks
from exec_server.protocol.errors import InvalidParams
from exec_server.protocol.schema_errors import first_error, serde_message

if TYPE_CHECKING:
    import jsonschema
    import referencing

_URN = "urn:exec-server:"


def _libraries():
    """jsonschema and referencing, imported on the first validation rather than at start-up.

    Importing them (with attrs and rpds) is ~60 ms, most of a cold start; a
    server that answers ``/readyz`` has not needed them yet.
    """
    global jsonschema, referencing
    import jsonschema
    import jsonschema.validators
    import referencing
    import referencing.exceptions

    return jsonschema, referencing


def _schema_root():
    """The path of the folder holding the schema files."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    packaged = os.path.join(package, "schemas")  # an installed wheel: exec_server/schemas
    if os.path.isdir(packaged):
        return packaged
    return os.path.join(os.path.dirname(package), "schemas")  # a source checkout: schemas/ at the top


def files_digest(files: Dict[str, bytes]) -> int:
    """The CRC-32 of schema files (each name and its bytes, in name order): tells the shipped files apart.

    Line ends count as ``\n`` (a checkout on Windows may have ``\r\n``).
    """
    digest = 0
    for name in sorted(files):
        data = files[name].replace(b"\r\n", b"\n")
        digest = zlib.crc32(data, zlib.crc32(name.encode("utf-8") + b"\0", digest))
    return digest


def _walk_json(root: str) -> Iterable[str]:
    for folder, _dirs, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".json"):
                yield os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")


class SchemaSet:
    """Every schema file, checked, with reusable validators.

    Thread-safe: a validator is used by one thread at a time.
    """

    def __init__(self, schemas: Dict[str, dict], checked: bool = False, digest: Optional[int] = None):
        self._schemas = schemas
        #: The CRC-32 of the files read (:func:`files_digest`), None for schemas given as dicts.
        self.digest = digest
        self._registry_built: Any = None
        # Names whose schema passed check_schema; all of them for the shipped files (checked when the
        # package is built and tested, see check_all), so a server does not spend ~12 ms on the metaschema.
        self._checked: set = set(schemas) if checked else set()
        # Checked-in validators per schema.  A deque's append and pop are
        # thread-safe (collections docs), so this sans-IO module needs no lock.
        self._free: Dict[str, Deque[Any]] = {}
        self._inlined: Dict[str, dict] = {}
        self._members = _MemberValidators()
        self._reusing_class: Optional[type] = None
        self.compiled_checks = CompiledChecks(schemas, self.uri_of, digest)

    @classmethod
    def load(cls, root: Optional[str] = None) -> "SchemaSet":
        """Read every file under ``root`` (default: the package's own schema files).

        A schema from another ``root`` is checked (``check_schema``) before
        its first use.  The package's own files are not checked at run time:
        :meth:`check_all` runs on them in the test suite and in the wheel's
        packaging check (``tests/check_wheel.py``), and the metaschema check
        costs ~12 ms of a cold ``exec-server run`` (8 ms for ``process/start``).

        Raises:
            OSError, ValueError: a file is missing or not JSON.
        """
        shipped = root is None
        root = root or _schema_root()
        files = {}
        for name in _walk_json(root):
            with open(os.path.join(root, name), "rb") as handle:
                files[name] = handle.read()
        schemas = {name: json.loads(data.decode("utf-8")) for name, data in files.items()}
        return cls(schemas, checked=shipped, digest=files_digest(files))

    def check_all(self) -> None:
        """``check_schema`` every schema now (tests and the packaging check call this).

        Raises:
            jsonschema.SchemaError: a schema file is itself invalid (a bug).
        """
        self._checked.clear()
        for name in self._schemas:
            self._check(name)

    def _check(self, name: str) -> None:
        if name not in self._checked:
            jsonschema, _ = _libraries()
            schema = self._schemas[name]
            jsonschema.validators.validator_for(schema).check_schema(schema)
            self._checked.add(name)

    def uri_of(self, name: str) -> str:
        """The URI schema file ``name`` is known by: its ``$id``, else ``urn:exec-server:<name>``."""
        return self._schemas[name].get("$id", _URN + name)

    @property
    def _registry(self) -> Any:
        """The offline ``referencing.Registry`` of every schema, built on first use."""
        if self._registry_built is None:
            _, referencing = _libraries()
            self._registry_built = referencing.Registry().with_resources(
                (self.uri_of(name), referencing.Resource.from_contents(schema))
                for name, schema in self._schemas.items())
        return self._registry_built

    def names(self) -> List[str]:
        return sorted(self._schemas)

    def has(self, name: str) -> bool:
        return name in self._schemas

    def schema(self, name: str) -> dict:
        return self._schemas[name]

    def _checkout(self, name: str):
        free = self._free.get(name)
        if free:
            try:
                return free.pop()
            except IndexError:  # another thread took the last one
                pass
        schema = self._inlined.get(name)
        if schema is None:
            self._check(name)
            schema = self._inlined[name] = self._inline(self._schemas[name], name)
        return self._new_validator(schema)

    def _new_validator(self, schema: dict):
        """A validator for ``schema`` with serde's integers, whose ``properties`` reuse member validators."""
        jsonschema, _ = _libraries()
        cls = jsonschema.validators.validator_for(schema)
        serde_types = cls.TYPE_CHECKER.redefine("integer", _serde_integer)
        if cls is not jsonschema.Draft202012Validator:  # the dialect of every schema file
            return jsonschema.validators.extend(cls, type_checker=serde_types)(schema, registry=self._registry)
        if self._reusing_class is None:
            self._reusing_class = jsonschema.validators.extend(
                cls, {"properties": self._members.properties, "items": _items_to_first_failure,
                      "additionalProperties": _additional_to_first_failure}, type_checker=serde_types)
        return self._members.adopt(self._reusing_class(schema, registry=self._registry))

    def _inline(self, schema: dict, name: str) -> dict:
        """``schema`` with each ``$ref`` replaced by what it points to, if that is exact.

        The result validates the same instances with the same errors and
        skips the per-validation reference lookups (``process/start`` params:
        82 -> 49 us).  The lookups are ``referencing``'s own; a schema whose
        references cannot all be inlined (a cycle, a ``$ref`` with sibling
        assertions) is used as it is.
        """
        resolver = self._registry.resolver(self.uri_of(name))
        try:
            inlined = _inline_refs(schema, resolver, 0)
        except referencing.exceptions.Unresolvable:  # jsonschema will report it when validating
            return schema
        return schema if _has_ref(inlined) else inlined

    def _checkin(self, name: str, validator) -> None:
        self._free.setdefault(name, collections.deque()).append(validator)

    def compiled(self, name: str):
        """The compiled accept check of schema ``name`` (see :mod:`exec_server.protocol.compiled`), or None.

        It returns on an instance the schema accepts and raises otherwise;
        :meth:`validate_params` tries it first.  None: jsonschema alone
        checks this schema (it breaks a rule of ``check_safe``, or
        fastjsonschema cannot be imported).  For a set loaded from another
        folder the file is first checked against the metaschema, which
        imports jsonschema: only the shipped set starts without it.
        """
        self._check(name)  # a schema file that is not ours, before its first use
        return self.compiled_checks.check(name)

    def params_schema_name(self, method: str) -> str:
        return method + ".params.json"

    def validate_params(self, method: str, params: Any) -> None:
        """Check a request's params against ``<method>.params.json``.

        Raises:
            InvalidParams: the params do not match; the message is serde-style
                and ``data`` is ``{"path": "$.argv[0]"}``.
            KeyError: no schema exists for the method (a bug: every routed
                method has one, see ``tests/test_validation.py``).
        """
        name = self.params_schema_name(method)
        check = self.compiled(name)
        if check is not None:
            try:
                check(params)
                return
            except Exception:  # rejected (or data it cannot handle): jsonschema decides, and words the error
                pass
        validator = self._checkout(name)
        try:
            errors = list(validator.iter_errors(params))
        finally:
            self._checkin(name, validator)
        if not errors:
            return
        error = first_error(errors, params)
        raise InvalidParams(serde_message(error), data={"path": error.json_path})

    def validate(self, name: str, instance: Any) -> None:
        """Raise ``jsonschema.ValidationError`` if ``instance`` does not match."""
        validator = self._checkout(name)
        try:
            validator.validate(instance)
        finally:
            self._checkin(name, validator)


def _serde_integer(checker: Any, instance: Any) -> bool:
    """JSON Schema's ``integer`` as serde reads one: a number written without a fraction or exponent.

    JSON Schema counts ``1.0`` as an integer; serde (and the reference) answer
    ``invalid number`` for it in an integer field, and a handler would get a
    float where it needs an int.  ``json`` parses such a number as a float.
    """
    return isinstance(instance, int) and not isinstance(instance, bool)


def _items_to_first_failure(validator: Any, items: Any, instance: Any, schema: Any):
    """jsonschema's ``items``, ending at the first item in error (with all of that item's errors).

    serde reports the first bad item (:func:`~exec_server.protocol.schema_errors.first_error` picks it),
    so the others need no error object: one per item of an ``argv`` of a million numbers (a 2 MB
    message) took ~2 GB and seconds of CPU, and a 128 MiB message could take the server down.
    """
    if items is False or schema.get("prefixItems") or not validator.is_type(instance, "array"):
        yield from jsonschema.Draft202012Validator.VALIDATORS["items"](validator, items, instance, schema)
        return
    for index, item in enumerate(instance):
        errors = list(validator.descend(instance=item, schema=items, path=index))
        if errors:
            yield from errors
            return


def _additional_to_first_failure(validator: Any, extra: Any, instance: Any, schema: Any):
    """jsonschema's ``additionalProperties`` with a schema, ending at the first member in error in input
    order (``env`` of many numbers), as :func:`_items_to_first_failure`."""
    if schema.get("patternProperties") or not validator.is_type(extra, "object") \
            or not validator.is_type(instance, "object"):
        yield from jsonschema.Draft202012Validator.VALIDATORS["additionalProperties"](
            validator, extra, instance, schema)
        return
    declared = schema.get("properties", {})
    for name, value in instance.items():
        if name not in declared:
            errors = list(validator.descend(value, extra, path=name))
            if errors:
                yield from errors
                return


class _MemberValidators:
    """jsonschema's ``properties`` keyword, reusing each member's validator.

    jsonschema's ``descend`` builds a new validator for every member of every
    instance it checks (~4 us each: half the time of validating
    ``process/read`` params, 21 -> 10 us; ``process/start`` 36 -> 19 us).  A
    validator of a :class:`SchemaSet` is used by one thread at a time, so the
    validator of each member's subschema is built once, on first use, and
    kept with it.  It is what ``descend`` would build (same subschema, same
    resolver: a subschema without ``$id`` keeps its parent's), and its
    errors get the same ``path`` and ``schema_path``.  Validators made by
    other keywords, and subschemas with ``$id``, take jsonschema's own path.
    """

    def __init__(self):
        # id(adopted validator) -> (that validator, kept alive so the id stays
        # unique; its member validators by member name)
        self._adopted: Dict[int, Tuple[Any, Dict[str, Any]]] = {}

    def adopt(self, validator: Any) -> Any:
        """Register ``validator`` (kept for good) for member reuse; returns it."""
        self._adopted[id(validator)] = (validator, {})
        return validator

    def properties(self, validator: Any, properties: Dict[str, Any], instance: Any, schema: Any):
        adopted = self._adopted.get(id(validator))
        if adopted is None:
            yield from jsonschema.Draft202012Validator.VALIDATORS["properties"](
                validator, properties, instance, schema)
            return
        if not validator.is_type(instance, "object"):
            return
        members = adopted[1]
        for name, subschema in properties.items():
            if name not in instance:
                continue
            if not isinstance(subschema, dict) or "$id" in subschema:
                yield from validator.descend(instance[name], subschema, path=name, schema_path=name)
                continue
            member = members.get(name)
            if member is None:
                member = members[name] = self.adopt(validator.evolve(schema=subschema))
            for error in member.iter_errors(instance[name]):
                error.path.appendleft(name)
                error.schema_path.appendleft(name)
                yield error


#: How deep references are followed when inlining (a cycle stops here).
_MAX_INLINE_DEPTH = 16


def _inline_refs(node: Any, resolver: "referencing._core.Resolver", depth: int) -> Any:
    if isinstance(node, list):
        return [_inline_refs(item, resolver, depth) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and depth < _MAX_INLINE_DEPTH and set(node) - {"$ref"} <= ANNOTATIONS:
        resolved = resolver.lookup(ref)
        target = resolved.contents
        if isinstance(target, dict) and "$id" not in target:
            return _inline_refs(target, resolved.resolver, depth + 1)
    return {key: _inline_refs(value, resolver, depth) for key, value in node.items()}


def _has_ref(node: Any) -> bool:
    if isinstance(node, list):
        return any(_has_ref(item) for item in node)
    if isinstance(node, dict):
        return "$ref" in node or any(_has_ref(value) for value in node.values())
    return False
