"""Client input that used to give a 500 or pass unchecked: every case a 400 naming its parameter.

``validate_chat`` directly for the breadth of OpenAI's schema, and the real
gateway for the cases the issue found end to end (a header the server
rejected, a cached 500, a crashed simulator).
"""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import GatewayError
from gateway.request import validate_chat
from gateway.validation import MAX_DEPTH
from tests.harness import API_KEY, running_gateway

USER = {"role": "user", "content": "hi"}


def body(**extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [USER], **extra}


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


REFUSED = [
    (body(messages=[{"role": {}, "content": "hi"}]), "messages[0].role"),
    (body(messages=[{"role": [], "content": "hi"}]), "messages[0].role"),
    (body(messages=[{"role": ["user"], "content": "hi"}]), "messages[0].role"),
    (body(messages=[{"role": "user", "content": [{"type": "text", "text": 123}]}]), "messages[0].content[0].text"),
    (body(messages=[{"role": "user", "content": [{"type": "video", "video": {}}]}]), "messages[0].content[0].type"),
    (body(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages[0].content[0].text"),
    (body(messages=[{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "messages[0].content[0].type"),
    (body(messages=[{"role": "user", "content": []}]), "messages[0].content"),
    (body(messages=[{"role": "user"}]), "messages[0].content"),
    (body(messages=[{"role": "tool", "content": "42"}]), "messages[0].tool_call_id"),
    (body(messages=[{"role": "function", "content": None}]), "messages[0].name"),
    (body(messages=[{"role": "assistant", "tool_calls": [{"type": "function", "id": "c", "function": {"name": 1, "arguments": "{}"}}]}]),
     "messages[0].tool_calls[0].function.name"),
    (body(top_logprobs=-5), "top_logprobs"),
    (body(logit_bias={"50256": 1e308}), "logit_bias.50256"),
    (body(logit_bias={"50256": 101}), "logit_bias.50256"),
    (body(metadata={"a": {"b": 1}}), "metadata.a"),
    (body(metadata=nested(300)), "metadata.a"),
    (body(tools=[{"type": "function", "function": {"name": "f", "parameters": nested(MAX_DEPTH + 1)}}]),
     "tools[0].function.parameters"),
    (body(tools=[{"type": "retrieval"}]), "tools[0].type"),
    (body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": nested(MAX_DEPTH + 1)}}),
     "response_format.json_schema.schema"),
    (body(response_format={"type": "xml"}), "response_format.type"),
    (body(tool_choice="sometimes"), "tool_choice"),
    (body(reasoning_effort="extreme"), "reasoning_effort"),
    (body(stream="yes"), "stream"),
    (body(stream_options={"include_usage": "yes"}, stream=True), "stream_options.include_usage"),
    (body(stop=["a", "b", "c", "d", "e"]), "stop"),
    (body(unknown_param=nested(MAX_DEPTH + 1)), "unknown_param"),
    (body(messages=[{**USER, "extra": nested(MAX_DEPTH + 1)}]), "messages[0].extra"),
    (body(model="gpt-4o-mini\r\nx-injected: 1"), "model"),
    (body(model="gpt-4o-mini\x00"), "model"),
    (body(model="gpt-" + "a" * 300), "model"),
]


@pytest.mark.parametrize("request_body,param", REFUSED, ids=[p for _, p in REFUSED])
def test_refused_with_a_400_naming_the_parameter(request_body, param):
    with pytest.raises(GatewayError) as exc:
        validate_chat(request_body)
    assert exc.value.status == 400
    assert exc.value.param == param, exc.value.message


ACCEPTED = [
    body(messages=[USER, {"role": "function", "name": "f", "content": None}]),
    body(stream_options={"include_usage": True}, stream=False),
    body(stream_options={"include_usage": True}, stream=None),
    body(stream_options={"include_usage": True}),
    body(messages=[USER, {"role": "assistant"}]),
    body(messages=[USER, {"role": "assistant", "content": None, "refusal": "no"}]),
    body(messages=[{"role": "user", "content": [
        {"type": "text", "text": "see"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
    ]}]),
    body(messages=[USER, {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]),
    body(messages=[USER, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]}]),
    body(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}],
         tool_choice={"type": "function", "function": {"name": "f"}}, parallel_tool_calls=False),
    body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": nested(MAX_DEPTH), "strict": True}}),
    body(logit_bias={"50256": -100}, top_logprobs=20, logprobs=True, seed=-1, metadata={"a": "b"}, n=2, store=None,
         reasoning_effort="low", service_tier=None, verbosity="high", modalities=["text"], stop=None, user="u"),
    body(model="accounts/fireworks/models/llama-v3p1-8b-instruct"),
]


@pytest.mark.parametrize("request_body", ACCEPTED)
def test_accepted_as_openai_accepts_it(request_body):
    validate_chat(request_body)


@pytest.fixture(scope="module")
def gateway():
    with running_gateway({}) as gw:  # the embedded simulator; the cache on, as by default
        yield gw


async def _post(http, gw, payload: bytes):
    headers = {"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    async with http.post(gw.url + "/v1/chat/completions", data=payload, headers=headers) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


@pytest.mark.parametrize("payload,param", [
    (b'{"model":"gpt-4o-mini","messages":[{"role":{},"content":"hi"}]}', "messages[0].role"),
    (orjson.dumps(body(metadata=nested(250))), "metadata.a"),
    (orjson.dumps(body(tools=[{"type": "function", "function": {"name": "f", "parameters": nested(250)}}])), "tools[0].function.parameters"),
    (orjson.dumps(body(model="gpt-4o-mini\r\nx: y")), "model"),
    (orjson.dumps(body(model="claude-3-5-haiku-latest", messages=[{"role": "user", "content": [{"type": "text", "text": 123}]}])),
     "messages[0].content[0].text"),
], ids=["role-object", "deep-metadata", "deep-tools", "crlf-model", "text-not-a-string"])
async def test_end_to_end_a_400_in_openai_shape_twice(gateway, http, payload, param):
    for _ in range(2):  # the second time too: a refused request must not be cached
        status, headers, raw = await _post(http, gateway, payload)
        assert status == 400, raw
        assert headers["content-type"].startswith("application/json")
        err = orjson.loads(raw)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
        assert "x-cache" not in headers or headers["x-cache"] != "hit"
