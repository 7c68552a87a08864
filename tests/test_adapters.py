"""Provider adapters: pure translation, tested with payloads as the providers send them."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import GatewayError
from gateway.providers import ADAPTERS, get_adapter
from gateway.providers.anthropic import adapter as anthropic
from gateway.providers.google import adapter as google
from gateway.providers.openai import adapter as openai
from gateway.providers.base import Deployment
from gateway.sse import SSEDecoder

OPENAI = Deployment("openai:gpt-4o-mini", "openai", "gpt-4o-mini", "https://api.openai.com/v1", "sk-openai")
ANTHROPIC = Deployment("anthropic:haiku", "anthropic", "claude-3-5-haiku-latest", "https://api.anthropic.com", "sk-ant")
GOOGLE = Deployment("google:flash", "google", "gemini-2.0-flash", "https://generativelanguage.googleapis.com", "AIza-g")


def chat(**extra) -> dict:
    body = {"model": "smart", "messages": [{"role": "user", "content": "Hello"}]}
    body.update(extra)
    return body


def sent(req) -> dict:
    return orjson.loads(req.body)


def payloads(raw: bytes, step: int = 7) -> list[bytes]:
    """Split a provider SSE byte stream as the pipeline does, fed in awkward pieces."""
    decoder = SSEDecoder()
    out: list[bytes] = []
    for i in range(0, len(raw), step):
        out.extend(decoder.feed(raw[i : i + step]))
    return out + decoder.flush()


def run_stream(adapter, raw: bytes, deployment: Deployment, body: dict | None = None):
    state = adapter.new_stream(body or chat(stream=True), deployment)
    chunks: list[dict] = []
    for data in payloads(raw):
        chunks.extend(adapter.parse_stream_event(data, state))
    return chunks, state


def content_of(chunks: list[dict], index: int = 0) -> str:
    return "".join(
        c["delta"].get("content") or "" for ch in chunks for c in ch["choices"] if c["index"] == index
    )


def raises(fn, *args) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        fn(*args)
    return info.value


# --- provider payloads --------------------------------------------------------

OPENAI_RESPONSE = (
    b'{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,'
    b'"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello! How can I help?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":19,"completion_tokens":7,"total_tokens":26,"prompt_tokens_details":'
    b'{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},'
    b'"service_tier":"default","system_fingerprint":"fp_06737a9306"}'
)


def _openai_chunk(delta: str, finish: str = "null") -> bytes:
    return (
        b'data: {"id":"chatcmpl-B9MBs8","object":"chat.completion.chunk","created":1741569952,'
        b'"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306","choices":[{"index":0,'
        b'"delta":' + delta.encode() + b',"logprobs":null,"finish_reason":' + finish.encode() + b'}],"usage":null}\n\n'
    )


OPENAI_STREAM = (
    _openai_chunk('{"role":"assistant","content":"","refusal":null}')
    + _openai_chunk('{"content":"Hello!"}')
    + _openai_chunk('{"content":" How can I help?"}')
    + _openai_chunk("{}", '"stop"')
    + b'data: {"id":"chatcmpl-B9MBs8","object":"chat.completion.chunk","created":1741569952,'
    b'"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306","choices":[],'
    b'"usage":{"prompt_tokens":19,"completion_tokens":7,"total_tokens":26}}\n\n'
    b"data: [DONE]\n\n"
)

ANTHROPIC_RESPONSE = (
    b'{"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant",'
    b'"model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"Hello! How can I help?"}],'
    b'"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,'
    b'"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":9}}'
)

ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message",'
    b'"role":"assistant","content":[],"model":"claude-3-5-haiku-20241022","stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":12,"output_tokens":1}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello!"}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" How can I help?"}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":9}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)

GOOGLE_RESPONSE = (
    b'{\n  "candidates": [\n    {\n      "content": {\n        "parts": [\n          {\n'
    b'            "text": "Hello! How can I help?"\n          }\n        ],\n        "role": "model"\n      },\n'
    b'      "finishReason": "STOP",\n      "avgLogprobs": -0.05\n    }\n  ],\n'
    b'  "usageMetadata": {\n    "promptTokenCount": 8,\n    "candidatesTokenCount": 7,\n'
    b'    "totalTokenCount": 15,\n    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}]\n  },\n'
    b'  "modelVersion": "gemini-2.0-flash-001",\n  "responseId": "kH3pZ-XYB9W8nvgP"\n}\n'
)

# Gemini ends SSE lines with CRLF and sends cumulative usage on every event.
GOOGLE_STREAM = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "Hello!"}],"role": "model"},"index": 0}],'
    b'"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8},'
    b'"modelVersion": "gemini-2.0-flash-001","responseId": "kH3pZ-XYB9W8nvgP"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": " How can I help?"}],"role": "model"},'
    b'"finishReason": "STOP","index": 0}],'
    b'"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 7,"totalTokenCount": 15},'
    b'"modelVersion": "gemini-2.0-flash-001","responseId": "kH3pZ-XYB9W8nvgP"}\r\n\r\n'
)


# --- registry -----------------------------------------------------------------


def test_registry_names_every_adapter():
    assert ADAPTERS == {"openai": openai, "anthropic": anthropic, "google": google}
    assert get_adapter("anthropic") is anthropic
    with pytest.raises(ValueError, match="openai, anthropic, google"):
        get_adapter("cohere")


@pytest.mark.parametrize("adapter", [openai, anthropic, google])
def test_every_adapter_exposes_the_five_functions(adapter):
    for name in ("build_request", "parse_response", "new_stream", "parse_stream_event", "map_error"):
        assert callable(getattr(adapter, name))


# --- OpenAI -------------------------------------------------------------------


def test_openai_request_passes_the_body_through():
    body = chat(
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        tool_choice="auto",
        response_format={"type": "json_object"},
        n=3,
        logprobs=True,
        seed=7,
        temperature=1.7,
    )
    req = openai.build_request(body, OPENAI, stream=False)
    assert req.method == "POST"
    assert req.url == "https://api.openai.com/v1/chat/completions"
    assert req.headers == {"authorization": "Bearer sk-openai", "content-type": "application/json"}
    assert sent(req) == {**body, "model": "gpt-4o-mini"}
    assert body["model"] == "smart"  # the caller's dict is untouched


def test_openai_request_headers_are_a_fresh_dict_each_time():
    first = openai.build_request(chat(), OPENAI, stream=False)
    first.headers["x-extra"] = "1"
    assert "x-extra" not in openai.build_request(chat(), OPENAI, stream=False).headers


def test_openai_stream_always_asks_for_usage():
    req = openai.build_request(chat(stream=True), OPENAI, stream=True)
    assert sent(req)["stream"] is True
    assert sent(req)["stream_options"] == {"include_usage": True}
    req = openai.build_request(chat(stream=True, stream_options={"include_usage": False}), OPENAI, stream=True)
    assert sent(req)["stream_options"] == {"include_usage": True}


def test_openai_non_stream_drops_stream_fields():
    req = openai.build_request(chat(stream=True, stream_options={"include_usage": True}), OPENAI, stream=False)
    assert "stream" not in sent(req) and "stream_options" not in sent(req)


def test_openai_response_passes_through():
    out = openai.parse_response(OPENAI_RESPONSE, OPENAI)
    assert out == orjson.loads(OPENAI_RESPONSE)


def test_openai_stream_translation():
    chunks, state = run_stream(openai, OPENAI_STREAM, OPENAI)
    assert len(chunks) == 4  # role, two deltas, finish; the usage chunk and [DONE] are swallowed
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content_of(chunks) == "Hello! How can I help?"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)
    assert state.usage == {"prompt_tokens": 19, "completion_tokens": 7, "total_tokens": 26}
    assert state.finish_reason == "stop"
    assert (state.id, state.model, state.created) == ("chatcmpl-B9MBs8", "gpt-4o-mini-2024-07-18", 1741569952)


def test_openai_done_yields_nothing():
    state = openai.new_stream(chat(stream=True), OPENAI)
    assert openai.parse_stream_event(b"[DONE]", state) == []


def test_openai_compatible_usage_on_the_last_content_chunk_is_recorded():
    state = openai.new_stream(chat(stream=True), OPENAI)
    data = (
        b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
        b'"delta":{},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
    )
    [out] = openai.parse_stream_event(data, state)
    assert "usage" not in out
    assert state.usage["total_tokens"] == 7 and state.finish_reason == "length"


def test_openai_in_stream_error_raises():
    state = openai.new_stream(chat(stream=True), OPENAI)
    err = raises(
        openai.parse_stream_event,
        b'{"error":{"message":"The server had an error while processing your request.","type":"server_error",'
        b'"param":null,"code":null}}',
        state,
    )
    assert (err.status, err.type, err.code) == (502, "api_error", "upstream_error")
    assert "server had an error" in err.message
    err = raises(
        openai.parse_stream_event,
        b'{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}',
        state,
    )
    assert err.status == 429 and err.type == "rate_limit_error"


@pytest.mark.parametrize(
    "data, what",
    [
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"id": "x", "object": "chat.completion"}', "choices"),
        (b'{"choices": "nope"}', "choices"),
    ],
)
def test_openai_malformed_response_is_502(data, what):
    err = raises(openai.parse_response, data, OPENAI)
    assert err.status == 502 and err.code == "upstream_bad_response" and what in err.message


def test_openai_error_inside_a_200_body_raises():
    err = raises(openai.parse_response, b'{"error":{"message":"boom","type":"server_error"}}', OPENAI)
    assert err.status == 502 and "boom" in err.message


def test_openai_malformed_stream_event_is_502():
    state = openai.new_stream(chat(stream=True), OPENAI)
    assert raises(openai.parse_stream_event, b"{not json", state).status == 502
    assert raises(openai.parse_stream_event, b'{"choices": 5}', state).status == 502


_CHUNK = b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[%s]}'


@pytest.mark.parametrize(
    "choice, what",
    [
        (b"1", "a choice is not an object"),
        (b'{"index":0,"delta":"hello","finish_reason":null}', "'delta' is not an object"),
        (b'{"index":0,"delta":{"content":5},"finish_reason":null}', "'delta.content' is not a string"),
        (b'{"index":0,"delta":{"content":"x"},"finish_reason":7}', "'finish_reason' is not a string"),
        (b'{"index":"0","delta":{"content":"x"},"finish_reason":null}', "'index' is not an integer"),
    ],
)
def test_openai_stream_checks_its_own_chunks(choice, what):
    # The adapter says CHECKS_CHUNKS, so the stream skips the common check: these must fail here.
    assert openai.CHECKS_CHUNKS is True
    state = openai.new_stream(chat(stream=True), OPENAI)
    err = raises(openai.parse_stream_event, _CHUNK % choice, state)
    assert err.status == 502 and err.code == "upstream_bad_response" and what in err.message


def test_openai_stream_counts_content_and_tool_call_characters_and_mirrors_the_first_identity():
    state = openai.new_stream(chat(stream=True), OPENAI)
    call = b'{"index":0,"id":"t","type":"function","function":{"name":"get","arguments":"{\\"a\\":1}"}}'
    openai.parse_stream_event(_CHUNK % b'{"index":0,"delta":{"content":"Hello"},"finish_reason":null}', state)
    openai.parse_stream_event(_CHUNK % (b'{"index":0,"delta":{"tool_calls":[%s]},"finish_reason":null}' % call), state)
    later = _CHUNK.replace(b'"id":"c"', b'"id":"other"') % b'{"index":0,"delta":{},"finish_reason":"stop"}'
    openai.parse_stream_event(later, state)
    assert state.content_chars == len("Hello") + len("get") + len('{"a":1}')
    assert (state.id, state.model, state.created, state.finish_reason) == ("c", "m", 1, "stop")


def test_openai_4xx_keeps_openai_error_verbatim():
    body = (
        b'{"error":{"message":"This model\'s maximum context length is 128000 tokens.",'
        b'"type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}'
    )
    err = openai.map_error(400, body)
    assert (err.status, err.type, err.param, err.code) == (400, "invalid_request_error", "messages", "context_length_exceeded")
    assert err.message == "This model's maximum context length is 128000 tokens."
    err = openai.map_error(
        404,
        b'{"error":{"message":"The model `gpt-9` does not exist","type":"invalid_request_error",'
        b'"param":null,"code":"model_not_found"}}',
    )
    assert (err.status, err.code) == (404, "model_not_found")


def test_openai_4xx_with_a_non_json_body_names_openai():
    err = openai.map_error(400, b"<html><body>400 Bad Request</body></html>")
    assert (err.status, err.type) == (400, "invalid_request_error")
    assert err.message.startswith("OpenAI rejected the request: non-JSON body: <html>")


@pytest.mark.parametrize("status", [401, 403])
def test_openai_auth_errors_do_not_leak_the_key(status):
    body = b'{"error":{"message":"Incorrect API key provided: sk-open***enai.","type":"invalid_request_error","code":"invalid_api_key"}}'
    err = openai.map_error(status, body)
    assert err.status == status and err.code == "upstream_auth_error"
    assert "OpenAI" in err.message and "sk-" not in err.message


def test_openai_429_keeps_message_and_code():
    err = openai.map_error(429, b'{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}')
    assert (err.status, err.type, err.code) == (429, "rate_limit_error", "insufficient_quota")
    assert "You exceeded your current quota" in err.message


@pytest.mark.parametrize(
    "status, code", [(500, "upstream_error"), (502, "upstream_error"), (503, "upstream_overloaded"), (504, "upstream_error")]
)
def test_openai_5xx_becomes_502(status, code):
    err = openai.map_error(status, b'{"error":{"message":"The server had an error","type":"server_error"}}')
    assert (err.status, err.type, err.code) == (502, "api_error", code)
    assert "OpenAI" in err.message and str(status) in err.message and "The server had an error" in err.message


# --- Anthropic ----------------------------------------------------------------


def test_anthropic_request_translation():
    body = {
        "model": "smart",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "Who are you?"}]},
            {"role": "assistant", "content": "Claude."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Thanks"},
        ],
        "temperature": 0.2,
        "top_p": 1,
        "stop": "END",
        "user": "user-42",
        "seed": 1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
    }
    req = anthropic.build_request(body, ANTHROPIC, stream=False)
    assert req.url == "https://api.anthropic.com/v1/messages"
    assert req.headers == {"x-api-key": "sk-ant", "anthropic-version": "2023-06-01", "content-type": "application/json"}
    assert sent(req) == {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 4096,
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Who are you?"}]},
            {"role": "assistant", "content": "Claude."},
            {"role": "user", "content": "Thanks"},
        ],
        "temperature": 0.2,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
    }


def test_anthropic_max_tokens_and_stream():
    assert sent(anthropic.build_request(chat(max_tokens=100), ANTHROPIC, False))["max_tokens"] == 100
    both = chat(max_tokens=100, max_completion_tokens=50)
    assert sent(anthropic.build_request(both, ANTHROPIC, False))["max_tokens"] == 50
    out = sent(anthropic.build_request(chat(stop=["a", "b"], n=1, temperature=1), ANTHROPIC, True))
    assert out["stream"] is True and out["stop_sequences"] == ["a", "b"] and out["temperature"] == 1
    assert "stream" not in sent(anthropic.build_request(chat(), ANTHROPIC, False))


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"temperature": 1.5}, "temperature"),
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        # Claude 4 models refuse the pair (the simulator too); top_p = 1 is no cut and is left out instead.
        ({"temperature": 0.5, "top_p": 0.9}, "top_p"),
    ],
)
def test_anthropic_unsupported_parameters_are_400(extra, param):
    err = raises(anthropic.build_request, chat(**extra), ANTHROPIC, False)
    assert (err.status, err.type, err.param) == (400, "invalid_request_error", param)
    assert "Anthropic" in err.message or err.code == "invalid_value"  # a bad shape is bad for every provider


def test_anthropic_harmless_defaults_are_accepted():
    body = chat(response_format={"type": "text"}, tools=[], logprobs=False)
    assert sent(anthropic.build_request(body, ANTHROPIC, False))["messages"] == [{"role": "user", "content": "Hello"}]


def test_anthropic_rejects_bad_images_tool_messages_and_empty_conversations():
    image = {"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": "x"}}]}
    err = raises(anthropic.build_request, chat(messages=[{"role": "user", "content": "a"}, image]), ANTHROPIC, False)
    assert (err.status, err.param) == (400, "messages[1].content[1].image_url.url")
    audio = {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
    err = raises(anthropic.build_request, chat(messages=[audio]), ANTHROPIC, False)
    assert (err.status, err.param) == (400, "messages[0].content") and "input_audio" in err.message
    err = raises(anthropic.build_request, chat(messages=[{"role": "tool", "content": "4"}]), ANTHROPIC, False)
    assert (err.status, err.param) == (400, "messages[0].tool_call_id")
    calls = {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]}
    err = raises(anthropic.build_request, chat(messages=[{"role": "user", "content": "a"}, calls]), ANTHROPIC, False)
    assert err.param == "messages[1].tool_calls[0].function.name"
    err = raises(anthropic.build_request, chat(messages=[{"role": "system", "content": "Only system"}]), ANTHROPIC, False)
    assert (err.status, err.param) == (400, "messages")


def test_anthropic_response_translation():
    out = anthropic.parse_response(ANTHROPIC_RESPONSE, ANTHROPIC)
    assert out["id"] == "chatcmpl-msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert out["object"] == "chat.completion" and isinstance(out["created"], int)
    assert out["model"] == "claude-3-5-haiku-20241022"
    assert out["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None}, "finish_reason": "stop", "logprobs": None}
    ]
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}


def test_anthropic_response_odd_shapes():
    data = orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Part one. "},
                {"type": "text", "text": "Part two."},
            ],
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 3},
        }
    )
    out = anthropic.parse_response(data, ANTHROPIC)
    assert out["choices"][0]["message"]["content"] == "Part one. Part two."
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 105, "completion_tokens": 3, "total_tokens": 108}
    empty = anthropic.parse_response(b'{"id":"msg_2","type":"message","content":[],"stop_reason":"end_turn"}', ANTHROPIC)
    assert empty["choices"][0]["message"]["content"] == ""
    assert empty["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert empty["model"] == "claude-3-5-haiku-latest"  # the deployment's when the provider omits it
    tool = anthropic.parse_response(b'{"id":"m","content":[{"type":"tool_use","id":"t","name":"f","input":{}}],"stop_reason":"tool_use"}', ANTHROPIC)
    assert tool["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b'"text"', b'{"id":"msg_1","type":"message"}', b'{"content":{"text":"x"}}', b'{"content":["x"]}'],
)
def test_anthropic_malformed_response_is_502(data):
    err = raises(anthropic.parse_response, data, ANTHROPIC)
    assert (err.status, err.code) == (502, "upstream_bad_response") and "Anthropic" in err.message


def test_anthropic_stream_translation():
    chunks, state = run_stream(anthropic, ANTHROPIC_STREAM, ANTHROPIC)
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 4
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [{"content": "Hello!"}, {"content": " How can I help?"}]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert {c["id"] for c in chunks} == {"chatcmpl-msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"}
    assert {c["model"] for c in chunks} == {"claude-3-5-haiku-20241022"}
    assert state.usage == {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    assert state.finish_reason == "stop"


def test_anthropic_stream_usage_is_recorded_as_soon_as_reported():
    state = anthropic.new_stream(chat(stream=True), ANTHROPIC)
    events = payloads(ANTHROPIC_STREAM)
    anthropic.parse_stream_event(events[0], state)  # message_start
    assert state.usage == {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}
    assert state.finish_reason is None


def test_anthropic_stream_length_and_cumulative_input():
    state = anthropic.new_stream(chat(stream=True), ANTHROPIC)
    anthropic.parse_stream_event(
        b'{"type":"message_start","message":{"id":"msg_9","model":"claude","usage":{"input_tokens":7,"output_tokens":1}}}',
        state,
    )
    [out] = anthropic.parse_stream_event(
        b'{"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},'
        b'"usage":{"input_tokens":7,"cache_read_input_tokens":null,"output_tokens":64}}',
        state,
    )
    assert out["choices"][0]["finish_reason"] == "length" and state.finish_reason == "length"
    assert state.usage == {"prompt_tokens": 7, "completion_tokens": 64, "total_tokens": 71}


def test_anthropic_stream_ignores_non_text_deltas():
    state = anthropic.new_stream(chat(stream=True), ANTHROPIC)
    assert anthropic.parse_stream_event(b'{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"x"}}', state) == []
    assert anthropic.parse_stream_event(b'{"type":"some_future_event"}', state) == []


@pytest.mark.parametrize(
    "kind, status, code",
    [
        ("overloaded_error", 502, "upstream_overloaded"),
        ("api_error", 502, "upstream_error"),
        ("rate_limit_error", 429, "rate_limit_exceeded"),
        ("invalid_request_error", 400, None),
    ],
)
def test_anthropic_in_stream_error_event_raises(kind, status, code):
    raw = ANTHROPIC_STREAM.split(b"event: content_block_delta")[0] + (
        b'event: error\ndata: {"type":"error","error":{"type":"' + kind.encode() + b'","message":"Overloaded"}}\n\n'
    )
    with pytest.raises(GatewayError) as info:
        run_stream(anthropic, raw, ANTHROPIC)
    assert (info.value.status, info.value.code) == (status, code)


def test_anthropic_malformed_stream_event_is_502():
    state = anthropic.new_stream(chat(stream=True), ANTHROPIC)
    assert raises(anthropic.parse_stream_event, b"{oops", state).status == 502
    err = raises(anthropic.parse_stream_event, b'{"type":"content_block_delta","index":0}', state)
    assert (err.status, err.code) == (502, "upstream_bad_response")
    assert raises(anthropic.parse_stream_event, b'{"type":"message_start","message":null}', state).status == 502


def _anthropic_error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


@pytest.mark.parametrize(
    "status, kind, out_status, out_type, out_code",
    [
        (400, "invalid_request_error", 400, "invalid_request_error", None),
        (401, "authentication_error", 401, "authentication_error", "upstream_auth_error"),
        (403, "permission_error", 403, "permission_error", "upstream_auth_error"),
        (404, "not_found_error", 404, "invalid_request_error", None),
        (413, "request_too_large", 413, "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", 429, "rate_limit_error", "rate_limit_exceeded"),
        (500, "api_error", 502, "api_error", "upstream_error"),
        (529, "overloaded_error", 502, "api_error", "upstream_overloaded"),
    ],
)
def test_anthropic_error_mapping(status, kind, out_status, out_type, out_code):
    err = anthropic.map_error(status, _anthropic_error(kind, "messages.0: provider says no"))
    assert (err.status, err.type, err.code) == (out_status, out_type, out_code)
    assert "Anthropic" in err.message
    if status in (401, 403):
        assert "provider says no" not in err.message and "credentials" in err.message
    else:
        assert "messages.0: provider says no" in err.message
    if status >= 500:
        assert str(status) in err.message


@pytest.mark.parametrize("data, text", [(b"", "empty body"), (b"<html>Bad gateway</html>", "<html>Bad gateway")])
def test_anthropic_error_with_non_json_body(data, text):
    err = anthropic.map_error(502, data)
    assert (err.status, err.code) == (502, "upstream_error") and text in err.message
    err = anthropic.map_error(400, data)
    assert err.status == 400 and text in err.message


# --- Google -------------------------------------------------------------------


def test_google_request_translation():
    body = {
        "model": "smart",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "assistant", "content": [{"type": "text", "text": "Anything else?"}]},
            {"role": "system", "content": "Use English."},
            {"role": "user", "content": "Yes"},
        ],
        "max_completion_tokens": 200,
        "temperature": 1.5,
        "top_p": 0.8,
        "stop": "END",
        "n": 2,
        "seed": 3,
        "presence_penalty": 0.1,
        "frequency_penalty": -0.1,
        "user": "user-42",
    }
    req = google.build_request(body, GOOGLE, stream=False)
    assert req.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
    assert req.headers == {"x-goog-api-key": "AIza-g", "content-type": "application/json"}
    assert sent(req) == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello."}, {"text": "Anything else?"}]},
            {"role": "user", "parts": [{"text": "Yes"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use English."}]},
        "generationConfig": {
            "maxOutputTokens": 200,
            "temperature": 1.5,
            "topP": 0.8,
            "candidateCount": 2,
            "seed": 3,
            "presencePenalty": 0.1,
            "frequencyPenalty": -0.1,
            "stopSequences": ["END"],
        },
    }


def test_google_stream_url_and_minimal_body():
    req = google.build_request(chat(max_tokens=10), GOOGLE, stream=True)
    assert req.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    assert sent(req) == {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}], "generationConfig": {"maxOutputTokens": 10}}
    assert "generationConfig" not in sent(google.build_request(chat(), GOOGLE, stream=False))


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"tools": [{"type": "function"}]}, "tools[0]"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://h/img"}}]}]},
         "messages[0].content[0].image_url.url"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "messages[0].content"),
        ({"messages": [{"role": "function", "name": "f", "content": "1"}]}, "messages[0].role"),
    ],
)
def test_google_unsupported_is_400(extra, param):
    err = raises(google.build_request, chat(**extra), GOOGLE, False)
    assert (err.status, err.type, err.param) == (400, "invalid_request_error", param)
    assert "Google" in err.message or err.code in ("invalid_value", "invalid_type")  # a bad shape is bad for every provider


def test_google_response_translation():
    out = google.parse_response(GOOGLE_RESPONSE, GOOGLE)
    assert out["id"] == "chatcmpl-kH3pZ-XYB9W8nvgP"
    assert out["object"] == "chat.completion" and out["model"] == "gemini-2.0-flash-001"
    assert out["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None}, "finish_reason": "stop", "logprobs": None}
    ]
    assert out["usage"] == {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}


def test_google_response_odd_shapes():
    data = orjson.dumps(
        {
            "candidates": [
                {
                    "content": {"parts": [{"text": "Let me think", "thought": True}, {"text": "Four"}, {"text": "."}], "role": "model"},
                    "finishReason": "MAX_TOKENS",
                    "index": 0,
                },
                {"finishReason": "SAFETY", "index": 1, "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}]},
            ],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 10, "totalTokenCount": 16},
        }
    )
    out = google.parse_response(data, GOOGLE)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in out["choices"]] == [
        (0, "Four.", "length"),
        (1, "", "content_filter"),
    ]
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16}
    assert out["id"].startswith("chatcmpl-") and out["model"] == "gemini-2.0-flash"


def test_google_blocked_prompt_is_a_content_filter_answer():
    data = b'{"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}}'
    out = google.parse_response(data, GOOGLE)
    assert out["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "", "refusal": None}, "finish_reason": "content_filter", "logprobs": None}]
    assert out["usage"] == {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9}


@pytest.mark.parametrize(
    "data",
    [b"\x00\x01", b"[]", b"{}", b'{"candidates": {"x": 1}}', b'{"candidates": ["x"]}', b'{"candidates": [{"content": {"parts": "x"}}]}'],
)
def test_google_malformed_response_is_502(data):
    err = raises(google.parse_response, data, GOOGLE)
    assert (err.status, err.code) == (502, "upstream_bad_response") and "Google" in err.message


def test_google_stream_translation():
    chunks, state = run_stream(google, GOOGLE_STREAM, GOOGLE)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [{"content": "Hello!"}, {"content": " How can I help?"}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["choices"][0]["delta"] == {}
    assert len(chunks) == 4
    assert {c["id"] for c in chunks} == {"chatcmpl-kH3pZ-XYB9W8nvgP"}
    assert {c["model"] for c in chunks} == {"gemini-2.0-flash-001"}
    assert len({c["created"] for c in chunks}) == 1
    assert state.usage == {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}
    assert state.finish_reason == "stop"


def test_google_stream_usage_is_recorded_as_soon_as_reported():
    state = google.new_stream(chat(stream=True), GOOGLE)
    google.parse_stream_event(payloads(GOOGLE_STREAM)[0], state)
    assert state.usage == {"prompt_tokens": 8, "completion_tokens": 0, "total_tokens": 8}


def test_google_stream_with_two_candidates_and_a_safety_stop():
    state = google.new_stream(chat(stream=True, n=2), GOOGLE)
    out = google.parse_stream_event(
        b'{"candidates": [{"content": {"parts": [{"text": "A"}], "role": "model"}, "index": 0},'
        b'{"content": {"parts": [{"text": "B"}], "role": "model"}, "finishReason": "RECITATION", "index": 1}]}',
        state,
    )
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in out] == [
        (0, {"role": "assistant", "content": ""}, None),
        (0, {"content": "A"}, None),
        (1, {"role": "assistant", "content": ""}, None),
        (1, {"content": "B"}, None),
        (1, {}, "content_filter"),
    ]
    out = google.parse_stream_event(b'{"candidates": [{"content": {"parts": [{"text": "!"}]}, "finishReason": "STOP", "index": 0}]}', state)
    assert [c["choices"][0]["index"] for c in out] == [0, 0]  # no second role chunk
    assert state.finish_reason == "stop"


def test_google_stream_blocked_prompt():
    state = google.new_stream(chat(stream=True), GOOGLE)
    out = google.parse_stream_event(b'{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}', state)
    assert [c["choices"][0]["finish_reason"] for c in out] == [None, "content_filter"]
    assert state.finish_reason == "content_filter"


def test_google_in_stream_error_raises():
    raw = GOOGLE_STREAM.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + (
        b'data: {"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}\r\n\r\n'
    )
    with pytest.raises(GatewayError) as info:
        run_stream(google, raw, GOOGLE)
    assert (info.value.status, info.value.code) == (502, "upstream_overloaded")
    assert "The model is overloaded" in info.value.message


def test_google_malformed_stream_event_is_502():
    state = google.new_stream(chat(stream=True), GOOGLE)
    assert raises(google.parse_stream_event, b"data", state).status == 502
    assert raises(google.parse_stream_event, b'{"candidates": [7]}', state).code == "upstream_bad_response"


def _google_error(code: int, status: str, message: str, reason: str | None = None) -> bytes:
    err: dict = {"code": code, "message": message, "status": status}
    if reason:
        err["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"}]
    return orjson.dumps({"error": err})


@pytest.mark.parametrize(
    "status, body, out_status, out_type, out_code",
    [
        (400, _google_error(400, "INVALID_ARGUMENT", "Invalid value at 'contents'"), 400, "invalid_request_error", None),
        (400, _google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"), 401, "authentication_error", "upstream_auth_error"),
        (403, _google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers"), 403, "permission_error", "upstream_auth_error"),
        (404, _google_error(404, "NOT_FOUND", "models/gemini-9 is not found"), 404, "invalid_request_error", None),
        (429, _google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted"), 429, "rate_limit_error", "rate_limit_exceeded"),
        (500, _google_error(500, "INTERNAL", "An internal error has occurred"), 502, "api_error", "upstream_error"),
        (503, _google_error(503, "UNAVAILABLE", "The model is overloaded"), 502, "api_error", "upstream_overloaded"),
    ],
)
def test_google_error_mapping(status, body, out_status, out_type, out_code):
    err = google.map_error(status, body)
    assert (err.status, err.type, err.code) == (out_status, out_type, out_code)
    assert "Google" in err.message
    if out_code != "upstream_auth_error":
        assert orjson.loads(body)["error"]["message"] in err.message


def test_google_error_as_a_list_and_non_json():
    body = b'[{"error": {"code": 400, "message": "Bad stop sequences", "status": "INVALID_ARGUMENT"}}]'
    assert "Bad stop sequences" in google.map_error(400, body).message
    err = google.map_error(500, b"upstream connect error or disconnect/reset before headers")
    assert err.status == 502 and "upstream connect error" in err.message


# --- all adapters -------------------------------------------------------------

CASES = [
    (openai, OPENAI, OPENAI_RESPONSE, OPENAI_STREAM),
    (anthropic, ANTHROPIC, ANTHROPIC_RESPONSE, ANTHROPIC_STREAM),
    (google, GOOGLE, GOOGLE_RESPONSE, GOOGLE_STREAM),
]


@pytest.mark.parametrize("adapter, deployment, response, stream", CASES, ids=["openai", "anthropic", "google"])
def test_stream_and_non_stream_agree(adapter, deployment, response, stream):
    whole = adapter.parse_response(response, deployment)
    chunks, state = run_stream(adapter, stream, deployment)
    assert content_of(chunks) == whole["choices"][0]["message"]["content"] == "Hello! How can I help?"
    assert state.finish_reason == whole["choices"][0]["finish_reason"]
    assert state.usage["prompt_tokens"] == whole["usage"]["prompt_tokens"]
    assert state.usage["completion_tokens"] == whole["usage"]["completion_tokens"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


@pytest.mark.parametrize("adapter", [openai, anthropic, google])
@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 429, 500, 502, 503, 529])
def test_every_error_is_clean_for_any_body(adapter, status):
    for body in (b"", b"null", b"{}", b'{"error": null}', b'{"error": {"message": 5}}', b"\xff\xfe", b"[]"):
        err = adapter.map_error(status, body)
        assert isinstance(err, GatewayError) and err.message
        assert err.status == (502 if status >= 500 else status)
        assert 400 <= err.status < 600


@pytest.mark.parametrize("adapter, deployment, response, stream", CASES, ids=["openai", "anthropic", "google"])
def test_output_validates_against_the_openai_sdk_types(adapter, deployment, response, stream):
    """The official client must be able to read what we produce (strict pydantic validation)."""
    types = pytest.importorskip("openai.types.chat")
    types.ChatCompletion.model_validate(adapter.parse_response(response, deployment), strict=True)
    chunks, state = run_stream(adapter, stream, deployment)
    for c in chunks:
        types.ChatCompletionChunk.model_validate(c, strict=True)
    usage_chunk = {"id": state.id, "object": "chat.completion.chunk", "created": state.created, "model": state.model, "choices": [], "usage": state.usage}
    types.ChatCompletionChunk.model_validate(usage_chunk, strict=True)


def test_sse_decoder_fast_path_gives_what_the_line_loop_gives():
    # Whole one-line data events take a split-in-C path; every other shape the line loop. Fed in reads
    # cut at every size, both must give the same payloads, for every way providers frame events.
    events = [b'{"a":1}', b'{"b":"x y"}', b"[DONE]"]
    streams = {
        "plain": b"".join(b"data: " + e + b"\n\n" for e in events),
        "crlf": b"".join(b"data: " + e + b"\r\n\r\n" for e in events),
        "named": b"".join(b"event: m\ndata: " + e + b"\n\n" for e in events),
        "comments": b": ping\n\n" + b"".join(b"data: " + e + b"\n\n: ping\n\n" for e in events),
        "no space": b"".join(b"data:" + e + b"\n\n" for e in events),
        "multi-line": b'data: {"a":\ndata: 1}\n\n' + b"data: [DONE]\n\n",
        "extra blank lines": b"".join(b"data: " + e + b"\n\n\n" for e in events),
    }
    for name, raw in streams.items():
        want = payloads(raw, step=1)  # one byte a read: never the fast path
        for step in range(2, len(raw) + 1):
            assert payloads(raw, step) == want, (name, step)
        assert payloads(raw, len(raw)) == want
    assert payloads(streams["plain"], len(streams["plain"])) == events
    assert payloads(streams["multi-line"], 1000) == [b'{"a":\n1}', b"[DONE]"]


def test_sse_decoder_fast_path_still_bounds_an_event():
    decoder = SSEDecoder(max_event=10)
    assert decoder.feed(b"data: 0123456789\n\n") == [b"0123456789"]
    with pytest.raises(GatewayError) as e:
        decoder.feed(b"data: 0123456789a\n\n")
    assert e.value.code == "upstream_too_large"
