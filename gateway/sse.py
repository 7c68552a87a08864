"""Server-sent events: split an upstream byte stream into ``data:`` payloads.

Providers differ only in line endings (Gemini uses CRLF) and in whether they
name events; every adapter's payload carries its own type, so only the data
lines matter. Multi-line data fields are joined with ``\\n`` as the SSE spec says.
"""

from __future__ import annotations


class SSEDecoder:
    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the data payloads of every event completed by ``chunk``."""
        buf = self._buf + chunk if self._buf else chunk
        out: list[bytes] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    out.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                if value.startswith(b" "):
                    value = value[1:]
                self._data.append(value)
            # "event:", "id:", "retry:" and ":" comments carry nothing we need.
        self._buf = buf[start:]
        return out

    def flush(self) -> list[bytes]:
        """Payloads of a final event that had no trailing blank line."""
        if self._buf:
            self.feed(b"\n")
        if self._data:
            data, self._data = self._data, []
            return [b"\n".join(data)]
        return []


def encode(payload: bytes) -> bytes:
    """One SSE event as the gateway sends it to clients."""
    return b"data: " + payload + b"\n\n"


DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
