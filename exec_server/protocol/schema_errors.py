"""serde-style wording of jsonschema's validation errors (PROTOCOL.md 2.3).

The reference decodes params with serde, which reports the first problem it
meets while reading the input: ``missing field `processId` ``, ``invalid
type: number, expected a string``, ``unknown variant `kill`, expected
`interrupt` ``.  jsonschema reports every problem at once; these functions
pick the one serde would have met first and word it as serde does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable, List

from exec_server.protocol.jsonrpc import serde_type_description

if TYPE_CHECKING:
    import jsonschema


def _leaf_errors(errors: Iterable[jsonschema.ValidationError]) -> List[jsonschema.ValidationError]:
    leaves = []
    for error in errors:
        if error.context:
            leaves.extend(_leaf_errors(error.context))
        else:
            leaves.append(error)
    return leaves


def first_error(errors: List[jsonschema.ValidationError], params: Any) -> jsonschema.ValidationError:
    """Pick the error serde would report first.

    serde reports problems of present members in input order while decoding,
    and a missing required member once the object is done; so the shallowest
    ``type`` problem wins, then errors on members in input order (depth
    first), and ``required`` errors of an object after its members' errors.
    """
    errors = _leaf_errors(errors)

    def key(error: jsonschema.ValidationError):
        path = list(error.absolute_path)
        ranks = []
        node = params
        for part in path:
            if isinstance(node, dict):
                keys = list(node)
                ranks.append(keys.index(part) if part in keys else len(keys))
            elif isinstance(node, list):
                ranks.append(part if isinstance(part, int) else 0)
            else:
                ranks.append(0)
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
        # a problem of the value itself sorts before its members (-1); a
        # missing member of an object after all of its present members
        return ranks + [10 ** 9 if error.validator == "required" else -1]

    return min(errors, key=key)


def _expected_text(schema: Dict[str, Any]) -> str:
    types = schema.get("type")
    if isinstance(types, list):
        types = [t for t in types if t != "null"]
        types = types[0] if types else None
    if types == "string":
        return "a string"
    if types == "boolean":
        return "a boolean"
    if types == "integer" and schema.get("title"):
        return schema["title"]  # the Rust type, where it is not u64 or i64 (usize, u16)
    if types == "integer":
        return "u64" if schema.get("minimum") == 0 else "i64"
    if types == "array":
        return "a sequence"
    if types == "object" and schema.get("maxProperties") == 0:
        return "unit"  # a Rust method without params: null or {} only
    if types == "object":
        title = schema.get("title")
        return "struct %s" % title if title else "a map"
    return "a value"


def _variants_text(options: List[Any]) -> str:
    names = ["`%s`" % option for option in options]
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return "%s or %s" % (names[0], names[1])
    return "one of " + ", ".join(names)


def serde_message(error: jsonschema.ValidationError) -> str:
    validator = error.validator
    if validator == "required":
        # jsonschema reports missing members in the order of ``required``,
        # which lists them in declaration order: the first is serde's.
        missing = error.message.split("'")[1] if "'" in error.message else str(error.message)
        return "missing field `%s`" % missing
    if validator == "type" and isinstance(error.instance, (int, float)) and not isinstance(error.instance, bool) \
            and _expected_text(error.schema) in ("u64", "usize"):
        return "invalid number"
    if validator == "type" and isinstance(error.instance, list) and _expected_text(error.schema).startswith("struct "):
        members = len(error.schema.get("properties", {}))
        return "invalid length %d, expected %s with %d element%s" % (
            len(error.instance), _expected_text(error.schema), members, "" if members == 1 else "s")
    if validator == "type":
        return "invalid type: %s, expected %s" % (
            serde_type_description(error.instance),
            _expected_text(error.schema),
        )
    if validator == "enum":
        if isinstance(error.instance, str):
            return "unknown variant `%s`, expected %s" % (error.instance, _variants_text(error.validator_value))
        return "invalid type: %s, expected %s" % (serde_type_description(error.instance), "a string")
    if validator in ("minimum", "maximum") and isinstance(error.instance, int) and error.schema.get("maximum") == 65535:
        # our extensions' terminal sizes (u16, not zero): say which range
        return "invalid value: integer `%d`, expected %d to 65535" % (error.instance, error.schema.get("minimum", 0))
    if validator in ("minimum", "maximum") and isinstance(error.instance, int):
        return "invalid number"
    if validator == "maxProperties" and error.validator_value == 0:
        return "invalid type: map, expected unit"
    if validator == "const":
        return "invalid value: %s, expected %r" % (serde_type_description(error.instance), error.validator_value)
    return error.message
