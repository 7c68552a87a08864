"""The shared verifier's frames on its Unix socket (both sides; no imports beyond the standard library).

Every frame starts with the same 11-byte header, little-endian::

    length u32 (bytes after the header) | id u32 | kind u8 | count u16

Requests: ``kind`` is LOOKUP (a lookup waits on it), STORED (stored prompts, embedded when the
verifier has nothing else to do) or HELLO (no texts: the answer says whether the model is loaded);
the body is ``count`` texts, each ``len u32`` + UTF-8. Answers carry the request's id: ``kind`` OK
with ``count`` vectors, each ``windows u16 | dim u16`` + float32 values, or ERROR with a UTF-8
message; HELLO is answered OK with ``count`` 0 and a JSON body.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<IIBH")
TEXT = struct.Struct("<I")
SHAPE = struct.Struct("<HH")
LOOKUP, STORED, HELLO = 0, 1, 2
OK, ERROR = 0, 1
MAX_FRAME = 16 << 20  # far above any request: 64 texts of max_semantic_chars
MAX_TEXTS = 64


def request(rid: int, kind: int, texts: list[str]) -> bytes:
    parts = []
    for t in texts:
        b = t.encode("utf-8", "replace")
        parts.append(TEXT.pack(len(b)))
        parts.append(b)
    body = b"".join(parts)
    return HEADER.pack(len(body), rid, kind, len(texts)) + body


def texts_of(body: bytes | memoryview, count: int) -> list[str]:
    out, i = [], 0
    for _ in range(count):
        (n,) = TEXT.unpack_from(body, i)
        i += TEXT.size
        out.append(bytes(body[i:i + n]).decode("utf-8", "replace"))
        i += n
    if i != len(body):
        raise ValueError("request body longer than its texts")
    return out


def answer(rid: int, arrays: list) -> bytes:
    """OK with one (windows, dim) float32 array per text."""
    parts = []
    for a in arrays:
        parts.append(SHAPE.pack(*a.shape))
        parts.append(a.astype("<f4", copy=False).tobytes())
    body = b"".join(parts)
    return HEADER.pack(len(body), rid, OK, len(arrays)) + body


def error(rid: int, message: str) -> bytes:
    body = message.encode("utf-8", "replace")[:1000]
    return HEADER.pack(len(body), rid, ERROR, 0) + body


def hello(rid: int, info: bytes) -> bytes:
    return HEADER.pack(len(info), rid, OK, 0) + info


def frames(buf: bytearray):
    """Take the complete frames off the front of ``buf``: (id, kind, count, body) each.
    ValueError for a frame no peer of this protocol sends (the connection is then closed)."""
    h = HEADER.size
    while len(buf) >= h:
        length, rid, kind, count = HEADER.unpack_from(buf)
        if length > MAX_FRAME or count > MAX_TEXTS:
            raise ValueError(f"a frame of {length} bytes, {count} texts")
        if len(buf) < h + length:
            return
        body = bytes(buf[h:h + length])
        del buf[:h + length]
        yield rid, kind, count, body
