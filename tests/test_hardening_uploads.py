"""Request bodies that stall, are cut short or are malformed: a 408 or a 400, never a held slot.

Raw sockets on 127.0.0.1 against the real gateway (Granian), since an HTTP
client library would not send a broken body.
"""

from __future__ import annotations

import socket
import statistics
import time

import orjson
import pytest

from tests.harness import API_KEY, running_gateway

HEAD = (
    "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
    "Content-Type: application/json\r\n{framing}\r\n"
)
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _head(framing: str) -> bytes:
    return HEAD.format(key=API_KEY, framing=framing).encode()


def _response(s: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (Content-Length framed, as the gateway's errors are)."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        got = s.recv(65536)
        if not got:
            raise ConnectionError(f"closed after {data!r}")
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        got = s.recv(65536)
        if not got:
            break
        body += got
    return status, headers, body


def _openai_error(body: bytes) -> dict:
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.fixture(scope="module")
def gateway():
    # The embedded simulator serves; the body deadline is short so the test is quick.
    with running_gateway({"GATEWAY_BODY_TIMEOUT_SECONDS": "1", "GATEWAY_CACHE": "off"}) as gw:
        yield gw


def test_body_shorter_than_content_length_gets_408_at_the_deadline(gateway):
    with _connect(gateway.port) as s:
        s.sendall(_head(f"Content-Length: {len(BODY)}\r\n") + BODY[:10])
        t0 = time.monotonic()
        status, _, body = _response(s, timeout=5)
        waited = time.monotonic() - t0
    assert status == 408
    assert _openai_error(body)["code"] == "request_timeout"
    assert 0.8 < waited < 3


def test_chunked_body_without_its_last_chunk_gets_408(gateway):
    with _connect(gateway.port) as s:
        s.sendall(_head("Transfer-Encoding: chunked\r\n") + b"%x\r\n%s\r\n" % (10, BODY[:10]))
        status, _, body = _response(s, timeout=5)
    assert status == 408
    assert _openai_error(body)["code"] == "request_timeout"


@pytest.mark.parametrize("chunks", [b"ZZZ\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\nnot-hex\r\n\r\n"])
def test_malformed_chunked_body_gets_400(gateway, chunks):
    with _connect(gateway.port) as s:
        s.sendall(_head("Transfer-Encoding: chunked\r\n") + chunks)
        status, headers, body = _response(s, timeout=5)
    assert status == 400, body
    assert headers["content-type"].startswith("application/json")
    assert _openai_error(body)["code"] == "invalid_body"


def _get_ms(port: int, path: str) -> float:
    t0 = time.perf_counter()
    with _connect(port) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        status, _, _ = _response(s, timeout=10)
    assert status == 200
    return (time.perf_counter() - t0) * 1000


def test_health_answers_while_1000_uploads_stall():
    """1,000 (= WORKER_CONNECTIONS) uploads that send their headers and stop must not starve /health."""
    env = {"GATEWAY_BODY_TIMEOUT_SECONDS": "30", "GATEWAY_CACHE": "off", "WORKER_CONNECTIONS": "1000"}
    with running_gateway(env) as gw:
        held = []
        try:
            for _ in range(1000):
                s = _connect(gw.port)
                s.sendall(_head(f"Content-Length: {len(BODY)}\r\n") + BODY[:10])
                held.append(s)
            time.sleep(1.0)  # let the worker take them all in
            timings = {path: [_get_ms(gw.port, path) for _ in range(5)] for path in ("/health", "/ready")}
            refused = 0
            for s in held[-50:]:  # the excess was answered at once, not held
                s.settimeout(0.01)
                try:
                    refused += s.recv(12).startswith(b"HTTP/1.1 503")
                except OSError:
                    pass
        finally:
            for s in held:
                s.close()
    print(f"ms at 1,000 stalled uploads: {timings}; excess answered 503: {refused}/50")
    for path, ms in timings.items():
        assert statistics.median(ms) < 100, (path, ms)
    assert refused == 50
