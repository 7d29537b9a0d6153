"""The wire format of process output: ``process/output``, ``exited``, ``closed`` and ``process/read``.

The one place that writes these messages (PROTOCOL.md 5.3, 5.4).  Output is
the hot path (streaming, fan-out, ``process/read`` catch-up), so the encoders
build the text by hand instead of through the JSON encoder: standard base64
needs no JSON escaping, so a chunk is inserted as is, and a ``process/read``
result is kept in pieces (:class:`RawJson`) that :func:`~exec_server.protocol.
jsonrpc.encode` joins once, so 64 KiB chunks are copied once on their way to
the socket.  Each encoder's output equals what the generic encoder would
write (pinned by tests).  The client reads ``process/output`` in that same
form without the JSON decoder (:func:`match_output_notification`).

Sans-IO: text in, text out; safe from any thread (the one module global,
the matcher's regular expression, is compiled on first use).
"""

import json
import re
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

#: A connection's send: writes the given encoded messages whole, in order, in
#: one write.  The one callable type between a session and its connection.
#: A message is a str, or a large response still in pieces (:class:`RawJson`).
Send = Callable[..., None]

#: A response whose JSON text is at least this many characters is handed to
#: the transport in its pieces, not joined (:func:`~exec_server.protocol.
#: jsonrpc.encode_reply`); a WebSocket sends it as fragments of about this size.
LARGE_MESSAGE_CHARS = 1024 * 1024

#: JSON text of the booleans in a ``process/read`` result.
_LITERALS = {True: "true", False: "false"}


def dumps(value: Any, allow_nan: bool = True) -> str:
    """Compact JSON with non-ASCII left unescaped (the reference's encoding).

    Raises:
        ValueError: ``allow_nan`` is False and ``value`` holds a NaN or an infinity (JSON has no such
            number: ``json.dumps`` would write ``NaN``, which no JSON-RPC peer parses); a circular value.
        TypeError: a value JSON cannot hold.
    """
    return (_ENCODER if allow_nan else _STRICT_ENCODER).encode(value)


# json.dumps builds an encoder for each call with arguments (~6 us of an ``initialize`` answer's 21, #17); an encoder
# keeps no state between calls (json.dumps itself shares one for its defaults), so these two serve every thread.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_STRICT_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class RawJson:
    """Already-encoded JSON text in pieces, joined into the message by :func:`~exec_server.protocol.jsonrpc.encode`.

    A hot-path result (a ``process/read`` of 64 KiB chunks) reaches the wire
    with one copy of its base64 text rather than one per nesting level.
    ``str(raw)`` is the JSON text.
    """

    __slots__ = ("parts",)

    def __init__(self, parts: List[str]):
        self.parts = parts

    def __str__(self) -> str:
        return "".join(self.parts)

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def fragments(self, size: int = LARGE_MESSAGE_CHARS) -> Iterable[str]:
        """The text again, as consecutive pieces of ``size`` characters (the last one shorter).

        Each piece is one copy of its characters: a large message reaches the
        wire without ever existing whole, as one str or its UTF-8 bytes.
        """
        pending: List[str] = []
        room = size
        for part in self.parts:
            start = 0
            while len(part) - start > room:  # the part fills the piece and goes on
                pending.append(part[start:start + room])
                start += room
                yield "".join(pending)
                pending, room = [], size
            if start < len(part):
                pending.append(part[start:] if start else part)
                room -= len(part) - start
        if pending:
            yield "".join(pending)


def encode_output_notification(process_id: str, seq: int, stream: str, chunk_b64: str) -> str:
    """``process/output`` text built without re-escaping the base64 chunk.

    Only the process id goes through the JSON encoder.  Equal to
    ``encode(Notification("process/output", {...}))``.
    """
    return '{"method":"process/output","params":{"processId":%s,"seq":%d,"stream":"%s","chunk":"%s"}}' % (
        dumps(process_id),
        seq,
        stream,
        chunk_b64,
    )


#: What precedes the chunk in a ``process/output`` as :func:`encode_output_notification` writes it
#: and the reference sends it (PROTOCOL.md 5.3): a process id and a stream without escapes or
#: control characters, a seq of at most 18 digits (no leading zero).  Compiled on first use
#: (~0.4 ms: a server never reads output).
_OUTPUT_HEAD = (r'\{"method":"process/output","params":\{"processId":"([^"\\\x00-\x1f]*)",'
                r'"seq":(0|[1-9][0-9]{0,17}),"stream":"([^"\\\x00-\x1f]*)","chunk":"')
_OUTPUT_TAIL = '"}}'
_OUTPUT_PREFIX = b'{"method":"process/output",'
_output_head: "Optional[re.Pattern[str]]" = None


def match_output_notification(text: Union[str, bytes, bytearray]) -> Optional[Tuple[str, int, str, str]]:
    """``(processId, seq, stream, chunk)`` of a ``process/output`` in the form this module writes, else None.

    The reader's side of :func:`encode_output_notification`: a 64 KiB
    chunk's message is ~87 KB of text, and ``json.loads`` spends ~55 us
    scanning it where this match takes ~3 us.  ``text`` is a ``str`` (a
    WebSocket text frame) or UTF-8 bytes (a stdio line, a binary frame;
    decoded only if they begin as a ``process/output``).  Any other text
    (members in another order, whitespace, escapes in the id, a ``trace``
    member, bytes that are not UTF-8) gives None: parse it with
    :func:`~exec_server.protocol.jsonrpc.parse_message`.

    The chunk is returned unchecked: ``text`` is exactly that JSON object
    only if the chunk is base64 (no quote, backslash or control character),
    which the strict decoder (:func:`~exec_server.protocol.b64.decode`)
    proves.  A caller whose decode fails must treat ``text`` as unknown and
    parse it in full.
    """
    global _output_head
    if not isinstance(text, str):
        if not text.startswith(_OUTPUT_PREFIX):
            return None  # not decoded twice: a process/read result can be megabytes
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if _output_head is None:
        _output_head = re.compile(_OUTPUT_HEAD)
    head = _output_head.match(text)
    if head is None or not text.endswith(_OUTPUT_TAIL):
        return None
    start, end = head.end(), len(text) - len(_OUTPUT_TAIL)
    if end < start:  # the tail overlaps the head's last quote
        return None
    return head.group(1), int(head.group(2)), head.group(3), text[start:end]


def encode_exited_notification(process_id: str, seq: int, exit_code: int, sandbox_denied: bool) -> str:
    """``process/exited`` text (PROTOCOL.md 5.3), members in the reference's order."""
    return dumps({"method": "process/exited", "params": {
        "processId": process_id, "seq": seq, "exitCode": exit_code, "sandboxDenied": sandbox_denied}})


def encode_closed_notification(process_id: str, seq: int) -> str:
    """``process/closed`` text (PROTOCOL.md 5.3)."""
    return dumps({"method": "process/closed", "params": {"processId": process_id, "seq": seq}})


def read_result_json(chunks: Iterable[Sequence[Any]], next_seq: int, exited: bool, exit_code: Optional[int],
                     closed: bool, sandbox_denied: bool, failure: Any = None) -> RawJson:
    """A ``process/read`` result (PROTOCOL.md 5.4) as JSON pieces.

    Args:
        chunks: each a sequence whose first three items are seq (int),
            stream (``stdout``, ``stderr`` or ``pty``) and the base64 text;
            further items are ignored.
        failure: the result's ``failure`` member (always null today).
    """
    parts = ['{"chunks":[']
    separator = '{"seq":%d,"stream":"%s","chunk":"'
    for chunk in chunks:
        parts.append(separator % (chunk[0], chunk[1]))
        parts.append(chunk[2])
        parts.append('"}')
        separator = ',{"seq":%d,"stream":"%s","chunk":"'
    parts.append('],"nextSeq":%d,"exited":%s,"exitCode":%s,"closed":%s,"failure":%s,"sandboxDenied":%s}' % (
        next_seq, _LITERALS[exited], "null" if exit_code is None else "%d" % exit_code,
        _LITERALS[closed], "null" if failure is None else dumps(failure), _LITERALS[sandbox_denied]))
    return RawJson(parts)


def encode_read_result(result: Mapping[str, Any]) -> RawJson:
    """A ``process/read`` result given as its JSON-shaped dict, as :class:`RawJson`.

    ``str()`` of the return value equals ``dumps(result)``; the server builds
    results with :func:`read_result_json` directly.
    """
    return read_result_json(((c["seq"], c["stream"], c["chunk"]) for c in result["chunks"]), result["nextSeq"],
                            result["exited"], result["exitCode"], result["closed"], result["sandboxDenied"],
                            result["failure"])
