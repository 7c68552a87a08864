"""Traces: the client's traceparent is the request span's parent, and each attempt's goes to the provider.

The provider is a small aiohttp server on loopback that records the headers it
received (the simulator does not echo them); the gateway's ASGI app runs in
this process so the spans can go to the SDK's in-memory exporter.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiohttp import web

pytest.importorskip("opentelemetry.sdk", reason="the optional extra: pip install '.[traces]'")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from gateway import tracing  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.http.asgi import Gateway  # noqa: E402
from tests.harness import API_KEY  # noqa: E402
from tests.redis_server import free_port  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
async def provider():
    seen: list[dict[str, str]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        })

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def _post(gw: Gateway, headers: list[tuple[bytes, bytes]]) -> int:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "trace me"}]})
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays until the answer is out

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
             "headers": [(b"authorization", f"Bearer {API_KEY}".encode()), (b"content-type", b"application/json"),
                         *headers]}
    await gw(scope, receive, send)
    return sent[0]["status"]


async def test_spans_and_traceparent_end_to_end(provider):
    base, seen = provider
    exporter = InMemorySpanExporter()
    tracing.enable(exporter)
    try:
        gw = Gateway(load_settings({
            "GATEWAY_API_KEYS": API_KEY, "OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": base + "/v1",
            "GATEWAY_CACHE": "off", "GATEWAY_TRACES": "on", "GATEWAY_ACCESS_LOG": "off", "GATEWAY_METRICS": "off"}))
        traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
        assert await _post(gw, [(b"traceparent", traceparent.encode())]) == 200
        await gw.router.close()
    finally:
        tracing.disable()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"chat gpt-4o-mini", "openai gpt-4o-mini"}
    request, attempt = spans["chat gpt-4o-mini"], spans["openai gpt-4o-mini"]
    # The client's trace continues through the gateway ...
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert format(request.parent.span_id, "016x") == CLIENT_SPAN
    assert attempt.parent.span_id == request.context.span_id
    assert request.attributes["gen_ai.usage.input_tokens"] == 3 and request.attributes["http.response.status_code"] == 200
    assert request.start_time <= attempt.start_time and attempt.end_time <= request.end_time
    # ... and on to the provider, as the attempt's child.
    sent = seen[0]["traceparent"]
    assert sent == f"00-{TRACE_ID}-{format(attempt.context.span_id, '016x')}-01"


async def test_off_by_default_no_header_no_span(provider):
    base, seen = provider
    gw = Gateway(load_settings({
        "GATEWAY_API_KEYS": API_KEY, "OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": base + "/v1",
        "GATEWAY_CACHE": "off", "GATEWAY_ACCESS_LOG": "off", "GATEWAY_METRICS": "off"}))
    assert await _post(gw, [(b"traceparent", f"00-{TRACE_ID}-{CLIENT_SPAN}-01".encode())]) == 200
    await gw.router.close()
    assert tracing.tracer is None
    assert "traceparent" not in {k.lower() for k in seen[0]}
