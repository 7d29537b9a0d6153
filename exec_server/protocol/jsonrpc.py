"""Sans-IO JSON-RPC 2.0 layer of the Codex exec-server protocol.

Text in, message objects out (:func:`parse_message`); message objects in, text
out (:func:`encode`).  No sockets, threads or transports here.  The
hand-built encoders of process output live in :mod:`exec_server.protocol.wire`.

Envelope rules follow ``PROTOCOL.md`` section 2: the server never sends a
``jsonrpc`` member and ignores an incoming one; ids are i64 integers or
strings, echoed with their JSON type; a malformed envelope is reported as
-32600 with id -1 (never -32700).
"""

import json
import re
from typing import Any, Dict, NamedTuple, Optional, Union

from exec_server.protocol.errors import RpcError
from exec_server.protocol.wire import LARGE_MESSAGE_CHARS, RawJson, dumps  # noqa: F401  (dumps: API)

I64_MIN = -(2 ** 63)
I64_MAX = 2 ** 63 - 1

#: The id used in replies to messages whose own id could not be read.
UNKNOWN_ID = -1

RequestId = Union[int, str]


class TraceContext(NamedTuple):
    """W3C Trace Context carried as the top-level ``trace`` member."""

    traceparent: Optional[str] = None
    tracestate: Optional[str] = None

    @classmethod
    def of(cls, carrier: Dict[str, str]) -> "Optional[TraceContext]":
        """The context of a carrier (``telemetry.inject``'s); None for an empty one (nothing traced)."""
        return cls(carrier.get("traceparent"), carrier.get("tracestate")) if carrier else None


class Request(NamedTuple):
    id: RequestId
    method: str
    params: Any = None
    trace: Optional[TraceContext] = None


class Notification(NamedTuple):
    method: str
    params: Any = None
    trace: Optional[TraceContext] = None


class Response(NamedTuple):
    id: RequestId
    result: Any


class ErrorResponse(NamedTuple):
    id: Optional[RequestId]
    error: Dict[str, Any]


Message = Union[Request, Notification, Response, ErrorResponse]


class EnvelopeError(Exception):
    """The text is not a usable JSON-RPC message.

    ``description`` is the text that follows the transport's prefix in the
    -32600 reply (PROTOCOL.md 2.2), e.g. ``expected a JSON-RPC object``;
    ``request_id`` the reply's id: :data:`UNKNOWN_ID` (-1), but the request's
    own for one refused unread past ``MAX_REQUEST_VALUES`` (its caller would
    wait for an answer to the end of its timeout).
    """

    def __init__(self, description: str, request_id: "RequestId" = UNKNOWN_ID):
        super().__init__(description)
        self.description = description
        self.request_id = request_id


_ID_ERROR = "data did not match any variant of untagged enum RequestId"
_MESSAGE_ERROR = "data did not match any variant of untagged enum JSONRPCMessage"


def serde_type_description(value: Any) -> str:
    """Describe a JSON value as serde does in ``invalid type: ...`` texts."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean `%s`" % ("true" if value else "false")
    if isinstance(value, (int, float)):
        return "number"  # serde_json::Value describes every number so
    if isinstance(value, str):
        return "string %s" % json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "sequence"
    return "map"


def _is_valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return I64_MIN <= value <= I64_MAX
    return isinstance(value, str)


def _parse_trace(value: Any) -> Optional[TraceContext]:
    """Decode a ``trace`` member; raises EnvelopeError if it is unusable."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise EnvelopeError(
            "invalid type: %s, expected struct W3cTraceContext" % serde_type_description(value)
        )
    fields = {}
    for name in ("traceparent", "tracestate"):
        member = value.get(name)
        if member is not None and not isinstance(member, str):
            raise EnvelopeError(
                "invalid type: %s, expected a string" % serde_type_description(member)
            )
        fields[name] = member
    return TraceContext(**fields)


def _int_or_float(digits: str) -> Any:
    """An int, or for one too long to convert, a float (infinite): out of range of every integer field."""
    try:
        return int(digits)
    except ValueError:
        return float(digits)


def _reject_constant(name: str) -> Any:
    raise ValueError("unsupported number %s" % name)


def _unique_members(pairs: list) -> dict:
    """An object whose member names are all different, as serde reads one.

    The reference refuses the whole message (-32600); taking the last value
    (``json``'s default) would let a proxy or a log that reads the first see
    another command than the one that runs.
    """
    members = dict(pairs)
    if len(members) != len(pairs):
        seen = set()
        duplicate = next(name for name, _ in pairs if name in seen or seen.add(name))
        raise ValueError("duplicate JSON object key `%s`" % duplicate)
    return members


#: One decoder for every message (``json.loads`` with these hooks builds a new one per call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_members)

#: An escape that can only be half of a surrogate pair (``\ud800``-``\udfff``).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
#: The envelope error for a lone surrogate anywhere in a message (serde's text; the reference
#: rejects the whole message the same way, -32600 with id -1).
LONE_SURROGATE = "lone leading surrogate in hex escape"


def _has_lone_surrogate(data: Any) -> bool:
    """Whether a string anywhere in ``data`` (keys too) holds an unpaired surrogate.

    ``json`` joins valid pairs into one character, so any code point left in
    U+D800..U+DFFF is lone: it cannot be encoded as UTF-8, used as a path,
    an argument or an id, or echoed back.
    """
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


#: Characters :func:`utf8_size` encodes at a time (at most 4 MiB of UTF-8).
UTF8_SIZE_SLICE = 1 << 20


def utf8_size(text: Union[str, bytes, bytearray]) -> int:
    """Bytes of ``text`` in UTF-8 (its length if bytes or ASCII, the usual case: no copy).

    What the message limits count: a character may take up to 4 bytes.
    Other text is encoded :data:`UTF8_SIZE_SLICE` characters at a time, so a
    large message is not copied whole (the copy would be counted nowhere).
    """
    if isinstance(text, (bytes, bytearray)) or text.isascii():
        return len(text)
    step = UTF8_SIZE_SLICE
    return sum(len(text[start:start + step].encode("utf-8", "surrogatepass")) for start in range(0, len(text), step))


#: The most commas, brackets and braces one request may hold (an upper bound of its JSON values): far more than
#: any request needs (an argv at the kernel's 2 MiB ARG_MAX holds ~250,000 strings) and a bound on what decoding
#: it costs beyond its size, ~200 bytes a value at most (one 120 MiB request of ``[],`` took a server 3.3 GiB).
MAX_REQUEST_VALUES = 1_000_000


def _values_at_most(text: Union[str, bytes, bytearray]) -> int:
    """Commas, brackets and braces in ``text`` plus one: an upper bound of its JSON values, in three scans at
    memchr speed (~1 ms a MiB), not decoded.

    Every value but the outermost is the first of its array or object (after
    ``[`` or ``{``) or follows a ``,``; those characters inside strings only
    make the bound higher, and a request's large strings (base64) hold none.
    """
    if isinstance(text, str):
        return text.count(",") + text.count("[") + text.count("{") + 1
    return text.count(b",") + text.count(b"[") + text.count(b"{") + 1


def parse_message(text: Union[str, bytes, bytearray], max_values: Optional[int] = None) -> Message:
    """Parse one JSON-RPC message.

    Args:
        text: one whole message, as text or UTF-8 bytes.
        max_values: refuse, without decoding it, a message that may hold more
            JSON values (its commas, brackets and braces: :func:`_values_at_most`);
            the server gives :data:`MAX_REQUEST_VALUES`.  None: no limit (a client reads what
            its server sends: a listing of a large directory is many values).
    Returns:
        a :class:`Request`, :class:`Notification`, :class:`Response` or
        :class:`ErrorResponse`.
    Raises:
        EnvelopeError: the text is not JSON (a member named twice in one
            object included), not an object, has an id of the
            wrong type, a request ``trace`` that is not an object, fits no
            message shape, or may hold more than ``max_values`` values.  Reply
            -32600 with id -1 and keep the connection.
    """
    if max_values is not None and len(text) > max_values and _values_at_most(text) > max_values:
        raise EnvelopeError("a message of more than %d commas, brackets and braces is refused (MAX_REQUEST_VALUES)"
                            % max_values, _leading_id(text))
    try:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        try:
            data = _DECODER.decode(text)
        except ValueError as exc:
            if "integer string conversion" not in str(exc):
                raise
            # an integer of thousands of digits (past sys.get_int_max_str_digits()): a number no field
            # takes, as the reference sees it (its checks then say "invalid number" and so on)
            data = json.loads(text, parse_constant=_reject_constant, parse_int=_int_or_float,
                              object_pairs_hook=_unique_members)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise EnvelopeError(str(exc)) from None
    # "\\" first: a one-character search is a memchr (~1 us for a 64 KiB chunk's text, ~80 for "\\u")
    if "\\" in text and "\\u" in text and _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(data):
        raise EnvelopeError(LONE_SURROGATE)
    if not isinstance(data, dict):
        raise EnvelopeError("expected a JSON-RPC object")
    method = data.get("method")
    has_id = "id" in data
    if "method" in data:
        if not isinstance(method, str):
            raise EnvelopeError("invalid type: %s, expected a string" % serde_type_description(method))
        if has_id:
            if not _is_valid_id(data["id"]):
                raise EnvelopeError(_ID_ERROR)
            trace = _parse_trace(data.get("trace"))
            return Request(data["id"], method, data.get("params"), trace)
        try:
            trace = _parse_trace(data.get("trace"))
        except EnvelopeError:
            trace = None  # PROTOCOL.md 12.1: a bad carrier on a notification is dropped
        return Notification(method, data.get("params"), trace)
    if has_id and ("result" in data or "error" in data):
        if data["id"] is not None and not _is_valid_id(data["id"]):
            raise EnvelopeError(_ID_ERROR)
        if "error" in data:
            error = data["error"]
            if not isinstance(error, dict):
                raise EnvelopeError(_MESSAGE_ERROR)
            return ErrorResponse(data["id"], error)
        return Response(data["id"], data["result"])
    # serde's untagged decoding ends with the error-response variant
    raise EnvelopeError("missing field `error`")


#: Characters :func:`_leading_id` reads at the start of a message.
LEADING_ID_CHARS = 512
_ID_VALUE = r'(-?[0-9]+|"(?:[^"\\]|\\.)*")'
_LEADING_ID_PATTERN = r'\A\s*\{\s*"id"\s*:\s*' + _ID_VALUE + r'\s*,'
_LEADING_ID = re.compile(_LEADING_ID_PATTERN)


def _leading_id(text: Union[str, bytes, bytearray]) -> "RequestId":
    """The id of a message whose first member it is (a request in the reference's order, and our client's),
    read in its first :data:`LEADING_ID_CHARS` characters, undecoded; :data:`UNKNOWN_ID` if there is none."""
    head = text[:LEADING_ID_CHARS]
    if not isinstance(head, str):
        head = bytes(head).decode("utf-8", "replace")
    match = _LEADING_ID.match(head)
    try:
        request_id = json.loads(match.group(1)) if match else None
    except ValueError:
        return UNKNOWN_ID
    return request_id if _is_valid_id(request_id) else UNKNOWN_ID


#: The id of an object whose first member (our responses' form) or last member (our error responses') it is.
_EDGE_ID = re.compile(_LEADING_ID_PATTERN + r'|,\s*"id"\s*:\s*' + _ID_VALUE + r'\s*\}\s*\Z')


def answer_id(text: Union[str, bytes, bytearray]) -> Optional[RequestId]:
    """The id of a message :func:`parse_message` refused, if it is an answer (an object with a valid
    ``id`` and no ``method``); None if it is not one or its id cannot be read.

    A text nested too deeply to decode (Python's decoder stops near 1000
    levels) is read only for an id that is its first or last member.
    """
    try:
        answer = json.loads(text)
        request_id = None if "method" in answer else answer["id"]
    except (ValueError, TypeError, KeyError):
        return None
    except RecursionError:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        match = _EDGE_ID.search(text)
        if match is None:
            return None
        try:
            request_id = json.loads(match.group(1) or match.group(2))
        except ValueError:
            return None
    return request_id if _is_valid_id(request_id) else None


def encode_reply(message: Response) -> Union[str, RawJson]:
    """:func:`encode` of a response, but a large one (:data:`~exec_server.protocol.wire.LARGE_MESSAGE_CHARS`
    or more, a result already in pieces: a file's base64, spooled output) stays in pieces for the transport."""
    if isinstance(message.result, RawJson) and len(message.result) >= LARGE_MESSAGE_CHARS:
        return RawJson(['{"id":%s,"result":' % dumps(message.id), *message.result.parts, "}"])
    return encode(message)


def encode(message: Message) -> str:
    """Serialize a message in the reference's member order.

    Requests and notifications carry ``trace`` only when set; no ``jsonrpc``
    member is written (PROTOCOL.md 2.1).

    Raises:
        TypeError: a request's or notification's method is not a str, or its params hold a value JSON
            cannot (raised before anything is sent: the peer would answer such a text with id -1, which no
            caller waits for).
        ValueError: its params hold a NaN or an infinity, which JSON has no number for.
    """
    if isinstance(message, Response):
        head = '{"id":%s,"result":' % dumps(message.id)
        if isinstance(message.result, RawJson):
            return "".join([head, *message.result.parts, "}"])
        return "".join((head, dumps(message.result), "}"))
    if isinstance(message, ErrorResponse):
        return '{"error":%s,"id":%s}' % (dumps(message.error), dumps(message.id))
    if not isinstance(message.method, str):
        raise TypeError("method must be a str, not %s" % type(message.method).__name__)
    body: Dict[str, Any] = {}
    if isinstance(message, Request):
        body["id"] = message.id
    body["method"] = message.method
    if message.params is not None:
        body["params"] = message.params
    if message.trace is not None:
        trace = {}
        if message.trace.traceparent is not None:
            trace["traceparent"] = message.trace.traceparent
        if message.trace.tracestate is not None:
            trace["tracestate"] = message.trace.tracestate
        body["trace"] = trace
    return dumps(body, allow_nan=False)


def error_response(request_id: Optional[RequestId], error: RpcError) -> ErrorResponse:
    return ErrorResponse(request_id, error.to_dict())
