"""Server-sent events: split an upstream byte stream into ``data:`` payloads.

Providers differ only in line endings (Gemini uses CRLF) and in whether they
name events; every adapter's payload carries its own type, so only the data
lines matter. Multi-line data fields are joined with ``\\n`` as the SSE spec says.
"""

from __future__ import annotations

from gateway.errors import upstream_error

DONE_DATA = b"[DONE]"


class SSEDecoder:
    """``max_event`` bounds one event (its data and any line still without its end), so a
    provider that never ends a line or an event cannot grow the buffer without bound."""

    __slots__ = ("_buf", "_data", "_size", "_max")

    def __init__(self, max_event: int = 1_048_576) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._size = 0  # bytes in _data
        self._max = max_event

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the data payloads of every event completed by ``chunk``."""
        # The common read: whole one-line ``data: ...`` events and nothing left over from the last read
        # (OpenAI's stream, the simulator's). Split in C instead of a Python loop per line; any other
        # shape (names, comments, CRLF, a partial event) takes the general path, nothing consumed yet.
        if not self._buf and not self._data and chunk.endswith(b"\n\n") and b"\r" not in chunk:
            out: list[bytes] = []
            for event in chunk[:-2].split(b"\n\n"):
                if not event.startswith(b"data: ") or b"\n" in event:
                    return self._feed(chunk)
                if len(event) - 6 > self._max:
                    raise self._too_large()
                out.append(event[6:])
            return out
        return self._feed(chunk)

    def _feed(self, chunk: bytes) -> list[bytes]:
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
                    self._size = 0
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                if value.startswith(b" "):
                    value = value[1:]
                self._data.append(value)
                self._size += len(value)
                if self._size > self._max:
                    raise self._too_large()
            # "event:", "id:", "retry:" and ":" comments carry nothing we need.
        self._buf = buf[start:]
        if self._size + len(self._buf) > self._max:
            raise self._too_large()
        return out

    def _too_large(self):
        return upstream_error(502, f"A provider stream event exceeds the limit of {self._max} bytes.", code="upstream_too_large")

    def flush(self) -> list[bytes]:
        """Payloads of a final event that had no trailing blank line."""
        if self._buf:
            self.feed(b"\n")
        if self._data:
            data, self._data = self._data, []
            self._size = 0
            return [b"\n".join(data)]
        return []


def encode(payload: bytes) -> bytes:
    """One SSE event as the gateway sends it to clients."""
    return b"data: " + payload + b"\n\n"


DONE = b"data: " + DONE_DATA + b"\n\n"
PING = b": ping\n\n"
