"""The compiled accept path of params validation (exec_server.protocol.compiled).

A compiled check must never accept what jsonschema rejects: both are run on
generated instances of every shipped params schema, valid ones and broken
ones, and must agree.  A valid request must not import jsonschema at all (the
point of the compiled path: a cold start).
"""

import decimal
import json
import os
import shutil
import subprocess
import sys

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exec_server.protocol import compiled, prebuild, prebuilt_checks
from exec_server.protocol.errors import InvalidParams
from exec_server.protocol.schemas import SchemaSet, _schema_root

SCHEMAS = SchemaSet.load()  # the shipped files: their checks come from prebuilt_checks
#: The same schemas given as dicts: their checks are compiled by fastjsonschema here.
COMPILED_HERE = SchemaSet({name: SCHEMAS.schema(name) for name in SCHEMAS.names()}, checked=True)
PARAMS = [name for name in SCHEMAS.names() if name.endswith(".params.json")]
URN = "urn:exec-server:"
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70)
    | st.sampled_from([0, 1, -1, 65535, 65536, 2 ** 64])
    | st.floats(allow_nan=False) | st.sampled_from([1.0, 0.0, -0.0, 1.5]) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def _resolve(ref, base):
    """(subschema, its document's name) of a ``$ref`` met in document ``base`` (test helper)."""
    document, _, pointer = ref.partition("#")
    name = document[len(URN):] if document else base
    node = SCHEMAS.schema(name)
    for part in [p for p in pointer.split("/") if p]:
        node = node[part]
    return node, name


def instances(schema, base, depth=0):
    """Instances shaped like ``schema``, each node sometimes replaced by any JSON value."""
    if depth > 6 or not isinstance(schema, dict):
        return JSON
    if "$ref" in schema:
        target, document = _resolve(schema["$ref"], base)
        return st.deferred(lambda: instances(target, document, depth + 1))
    options = []
    if "enum" in schema:
        options.append(st.sampled_from(schema["enum"]))
    if "const" in schema:
        options.append(st.just(schema["const"]))
    types = schema.get("type", [])
    for kind in types if isinstance(types, list) else [types]:
        if kind == "object":
            properties = {key: instances(sub, base, depth + 1) for key, sub in schema.get("properties", {}).items()}
            required = {key: properties.get(key, JSON) for key in schema.get("required", [])}
            optional = {key: value for key, value in properties.items() if key not in required}
            extra = schema.get("additionalProperties", True)
            extras = st.dictionaries(st.text(max_size=5), instances(extra, base, depth + 1) if isinstance(extra, dict)
                                     else JSON, max_size=2)
            shaped = st.fixed_dictionaries(required, optional=optional)
            options.append(st.tuples(shaped, extras, st.booleans()).map(
                lambda parts: dict(parts[1], **parts[0]) if parts[2] else parts[0]))
        elif kind == "array":
            options.append(st.lists(instances(schema.get("items", {}), base, depth + 1), max_size=3))
        elif kind == "integer":
            low, high = schema.get("minimum", -2 ** 64), schema.get("maximum", 2 ** 64)
            options.append(st.integers(min_value=low - 1, max_value=high + 1))
        elif kind == "string":
            options.append(st.text(max_size=6))
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "null":
            options.append(st.none())
    if not options:
        return JSON
    shaped = st.one_of(*options)
    return st.integers(0, 9).flatmap(lambda roll: JSON if roll == 0 else shaped)  # a tenth of the nodes broken


@pytest.mark.parametrize("schemas", [SCHEMAS, COMPILED_HERE], ids=["prebuilt", "compiled-here"])
def test_every_shipped_params_schema_is_compiled(schemas):
    assert [name for name in PARAMS if schemas.compiled(name) is None] == []


def test_the_shipped_files_get_the_prebuilt_checks_and_other_sets_their_own():
    prebuilt = set(prebuilt_checks.CHECKS.values())
    assert all(SCHEMAS.compiled_checks._prebuilt(name) is not compiled._NOT_PREBUILT for name in PARAMS)
    assert all(COMPILED_HERE.compiled_checks._prebuilt(name) is compiled._NOT_PREBUILT for name in PARAMS)
    assert sorted(prebuilt_checks.CHECKS) == PARAMS and None not in prebuilt


def test_the_prebuilt_checks_were_made_from_the_shipped_files():
    """After changing a schema file: ``python -m exec_server.protocol.prebuild --write``."""
    assert prebuilt_checks.DIGEST == SCHEMAS.digest, "prebuilt_checks is stale: run prebuild --write"


def test_the_prebuilt_checks_are_what_the_generator_writes_now():
    import fastjsonschema

    if prebuilt_checks.GENERATOR != "fastjsonschema " + fastjsonschema.VERSION:
        pytest.skip("prebuilt_checks comes from %s, this is %s" % (prebuilt_checks.GENERATOR, fastjsonschema.VERSION))
    with open(prebuild.module_path(), encoding="utf-8") as handle:
        assert handle.read() == prebuild.prebuilt_source(SCHEMAS), "run python -m exec_server.protocol.prebuild --write"


def test_files_changed_since_the_prebuilt_checks_are_compiled_here(tmp_path):
    """A prebuilt check for the old file would accept params the changed file refuses."""
    root = tmp_path / "schemas"
    shutil.copytree(_schema_root(), str(root))
    path = root / "initialize.params.json"
    schema = json.loads(path.read_text())
    schema["required"] = schema["required"] + ["resumeSessionId"]
    path.write_text(json.dumps(schema))
    changed = SchemaSet.load(str(root))
    assert changed.digest != SCHEMAS.digest
    changed.validate_params("initialize", {"clientName": "x", "resumeSessionId": None})
    with pytest.raises(InvalidParams) as caught:
        changed.validate_params("initialize", {"clientName": "x"})
    assert caught.value.message == "missing field `resumeSessionId`"


def test_files_with_windows_line_ends_still_get_the_prebuilt_checks(tmp_path):
    root = tmp_path / "schemas"
    shutil.copytree(_schema_root(), str(root))
    for path in root.rglob("*.json"):
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    crlf = SchemaSet.load(str(root))
    assert crlf.digest == prebuilt_checks.DIGEST
    assert crlf.compiled_checks._prebuilt("process/start.params.json") is not compiled._NOT_PREBUILT


@pytest.mark.parametrize("schemas", [SCHEMAS, COMPILED_HERE], ids=["prebuilt", "compiled-here"])
def test_a_value_json_never_makes_is_judged_by_jsonschema(schemas):
    """The prebuilt code's ``Decimal`` is a stand-in: an instance holding one (anywhere) goes to jsonschema."""
    check = schemas.compiled("initialize.params.json")
    check({"clientName": "x", "note": 1})
    with pytest.raises(Exception):
        check({"clientName": "x", "note": decimal.Decimal(1)})
    with pytest.raises(InvalidParams):
        schemas.validate_params("process/read", {"processId": "p", "maxBytes": decimal.Decimal("1.5")})
    schemas.validate_params("initialize", {"clientName": "x", "note": decimal.Decimal(1)})


@pytest.mark.parametrize("schemas", [SCHEMAS, COMPILED_HERE], ids=["prebuilt", "compiled-here"])
@pytest.mark.parametrize("name", PARAMS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_compiled_check_agrees_with_jsonschema(schemas, name, data):
    instance = data.draw(instances(SCHEMAS.schema(name), name))
    check = schemas.compiled(name)
    try:
        check(instance)
        compiled_accepts = True
    except Exception:
        compiled_accepts = False
    try:
        SCHEMAS.validate(name, instance)
        jsonschema_accepts = True
    except jsonschema.ValidationError:
        jsonschema_accepts = False
    if compiled_accepts:
        assert jsonschema_accepts, json.dumps(instance)
    if not compiled._has_float(instance):  # with a float, jsonschema alone decides
        assert compiled_accepts == jsonschema_accepts, json.dumps(instance)


@pytest.mark.parametrize("name", PARAMS)
def test_generated_instances_include_valid_ones(name):
    """The agreement test would be hollow if it only ever drew invalid instances."""
    valid = []

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def draw(data):
        instance = data.draw(instances(SCHEMAS.schema(name), name))
        try:
            SCHEMAS.validate(name, instance)
            valid.append(instance)
        except jsonschema.ValidationError:
            pass

    draw()
    assert len(valid) >= 5


@pytest.mark.parametrize("schema", [
    {"type": "string", "format": "uuid"},
    {"type": "string", "pattern": "^a"},
    {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    {"enum": ["a", 1]},
    {"const": True},
    {"type": "object", "properties": {"a": {"$id": "urn:other", "type": "string"}}},
    {"type": "integer", "minimum": 1.5},
    {"type": "strange"},
    {"prefixItems": [{"type": "string"}]},
    # fastjsonschema ignores what stands beside a $ref; 2020-12 applies it
    {"type": "object", "properties": {"env": {"$ref": "#/$defs/m", "maxProperties": 0}},
     "$defs": {"m": {"type": "object"}}},
    # fastjsonschema 2.21 escapes a backslash in a name wrongly
    {"type": "object", "properties": {"a\\b": {"type": "string"}}},
    {"type": "object", "required": ["a-b"]},
    # a nested dialect: jsonschema would switch to it and count 1.0 as an integer
    {"type": "object", "properties": {"n": {"$schema": "http://json-schema.org/draft-07/schema#",
                                            "type": "integer"}}},
    # fastjsonschema registers an $id wherever it is, even inside an annotation
    {"title": {"$id": "urn:exec-server:d.json"}},
])
def test_unsafe_keywords_keep_a_schema_on_jsonschema(tmp_path, schema):
    with pytest.raises(compiled.Unsafe):
        compiled.check_safe(schema, set())
    (tmp_path / "x").mkdir()
    schema = dict(schema, **{"$schema": "https://json-schema.org/draft/2020-12/schema"})
    (tmp_path / "x" / "m.params.json").write_text(json.dumps(schema))
    own = SchemaSet.load(str(tmp_path))
    if schema.get("type") == "strange" or "title" in schema:  # not a schema: jsonschema refuses it first
        with pytest.raises(jsonschema.SchemaError):
            own.compiled("x/m.params.json")
    else:
        assert own.compiled("x/m.params.json") is None


def test_a_schema_outside_the_set_is_checked_by_jsonschema_with_its_own_errors(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "m.params.json").write_text(json.dumps({
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "properties": {"name": {"type": "string", "pattern": "^[a-z]+$"}}}))
    own = SchemaSet.load(str(tmp_path))
    own.validate_params("x/m", {"name": "abc"})
    with pytest.raises(InvalidParams) as caught:
        own.validate_params("x/m", {"name": "ABC"})
    assert caught.value.data == {"path": "$.name"}


def test_compiled_check_rejection_still_gets_the_serde_message():
    with pytest.raises(InvalidParams) as caught:
        SCHEMAS.validate_params("process/read", {"processId": 7})
    assert caught.value.message == "invalid type: number, expected a string"


def _own_set(tmp_path, files):
    for name, schema in files.items():
        (tmp_path / name).write_text(json.dumps(dict({"$schema": compiled.DIALECT}, **schema)))
    return SchemaSet.load(str(tmp_path))


def test_references_whose_generated_functions_would_collide_are_not_compiled(tmp_path):
    """fastjsonschema names a function after the lowercased reference: fileUri and fileuri would share one."""
    own = _own_set(tmp_path, {"m.params.json": {
        "$id": "urn:exec-server:m.params.json", "type": "object",
        "properties": {"y": {"$ref": "#/$defs/fileuri"}, "x": {"$ref": "#/$defs/fileUri"}},
        "$defs": {"fileUri": {"type": "string"}, "fileuri": {}}}})
    assert own.compiled("m.params.json") is None
    with pytest.raises(InvalidParams):
        own.validate_params("m", {"x": 1})


def test_files_sharing_an_id_are_not_compiled(tmp_path):
    own = _own_set(tmp_path, {"a.params.json": {"$id": "urn:x", "type": "object", "required": ["id"]},
                              "b.params.json": {"$id": "urn:x", "type": "object"}})
    assert own.compiled("a.params.json") is None
    with pytest.raises(InvalidParams):
        own.validate_params("a", {})


def test_a_float_in_a_u16_field_names_the_type():
    with pytest.raises(InvalidParams) as caught:
        SCHEMAS.validate_params("process/resize", {"processId": "p", "rows": 30.0, "cols": 80})
    assert caught.value.message == "invalid type: number, expected u16"


def test_a_reference_outside_the_schema_files_is_not_compiled(tmp_path):
    (tmp_path / "m.params.json").write_text(json.dumps({
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:exec-server:m.params.json",
        "type": "object", "properties": {"a": {"$ref": "https://example.invalid/x.json"}}}))
    assert SchemaSet.load(str(tmp_path)).compiled("m.params.json") is None


_COLD = r"""
import json, sys
{block}
from exec_server.server.config import ServerConfig
from exec_server.server.dispatcher import Dispatcher
from exec_server.server.sessions import SessionRegistry
sent = []
registry = SessionRegistry(ServerConfig())
connection = Dispatcher(registry).open_connection(lambda *texts: sent.extend(texts), "x: ")
connection.receive('{{"id":1,"method":"initialize","params":{{"clientName":"cold"}}}}')
connection.receive('{{"method":"initialized"}}')
connection.receive('{{"id":2,"method":"process/read","params":{{"processId":"none"}}}}')
{invalid}
import time
deadline = time.monotonic() + 10
while len(sent) < {answers} and time.monotonic() < deadline:
    time.sleep(0.01)
connection.close()
registry.close_all()
print(json.dumps({{"jsonschema": "jsonschema" in sys.modules, "fastjsonschema": "fastjsonschema" in sys.modules,
                  "sent": [json.loads(t) for t in sent]}}))
"""


def _cold(block="", invalid="", answers=2):
    script = _COLD.format(block=block, invalid=invalid, answers=answers)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_valid_requests_import_neither_jsonschema_nor_fastjsonschema():
    outcome = _cold()
    assert (outcome["jsonschema"], outcome["fastjsonschema"]) == (False, False)
    assert "sessionId" in outcome["sent"][0]["result"]
    assert outcome["sent"][1]["error"]["code"] == -32600  # unknown process: answered, not a params error


def test_an_invalid_request_imports_jsonschema_for_its_message():
    outcome = _cold(invalid="connection.receive('{\"id\":3,\"method\":\"process/read\",\"params\":{\"processId\":1}}')",
                    answers=3)
    assert outcome["jsonschema"] is True
    error = outcome["sent"][2]["error"]
    assert (error["code"], error["message"]) == (-32602, "invalid type: number, expected a string")


def test_without_fastjsonschema_jsonschema_validates_alone():
    outcome = _cold(block="sys.modules['fastjsonschema'] = None  # an import of it fails",
                    invalid="connection.receive('{\"id\":3,\"method\":\"process/read\",\"params\":{\"processId\":1}}')",
                    answers=3)
    assert outcome["jsonschema"] is True
    assert "sessionId" in outcome["sent"][0]["result"]
    assert outcome["sent"][2]["error"]["code"] == -32602


@pytest.mark.parametrize("params,accepted", [
    ({"processId": "p", "afterSeq": 1}, True),
    ({"processId": "p", "afterSeq": 1.0}, False),  # serde: invalid number; JSON Schema would call it an integer
    ({"processId": "p", "maxBytes": 1e3}, False),
    ({"processId": "p", "note": 1.5}, True),  # a member no field names is ignored, float or not
])
def test_a_float_is_never_an_integer(params, accepted):
    try:
        SCHEMAS.validate_params("process/read", params)
        outcome = True
    except InvalidParams as error:
        assert error.message == "invalid number"
        outcome = False
    assert outcome is accepted


def _generated_with(monkeypatch, edit):
    """prebuilt_source of the shipped files, with each schema's generated code passed through ``edit``."""
    schemas = SchemaSet.load()
    real = schemas.compiled_checks.source
    monkeypatch.setattr(schemas.compiled_checks, "source", lambda name: edit(real(name)))
    return prebuild.prebuilt_source(schemas)


def test_the_generator_refuses_code_it_does_not_know(monkeypatch):
    """A line it does not know before the functions (a fastjsonschema of another shape) made it leave the
    schema out without a word: under fastjsonschema 2.21 it wrote a module without a single check."""
    with pytest.raises(ValueError, match="fastjsonschema's code begins with"):
        _generated_with(monkeypatch, lambda code: "import os\n" + code)


def test_the_generator_reads_the_header_of_fastjsonschema_2_21(monkeypatch):
    """2.21 (the newest for Python 3.9) imports JsonSchemaValueException alone."""
    text = _generated_with(monkeypatch, lambda code: code.replace(
        "JsonSchemaValueException, JsonSchemaValuesException", "JsonSchemaValueException"))
    namespace = {}
    exec(compile(text, "prebuilt", "exec"), namespace)
    assert sorted(namespace["CHECKS"]) == PARAMS and None not in namespace["CHECKS"].values()


def test_a_prebuilt_check_is_used_only_where_the_rules_allow_one(monkeypatch):
    """The rules of compiled.check_safe hold for the prebuilt checks too (a rule made stricter since)."""
    monkeypatch.setattr(compiled, "SAFE_KEYWORDS", compiled.SAFE_KEYWORDS - {"maxProperties"})
    fresh = SchemaSet.load()
    assert fresh.compiled("environment/status.params.json") is None
    assert fresh.compiled("process/read.params.json") is not None
