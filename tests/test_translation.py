"""Tools, images and JSON output translated to and from Anthropic and Gemini, checked with the official SDKs' types.

Requests built by the adapters are checked against the SDKs' request types
(Anthropic's TypedDicts, strictly, by ``tests.sdk_types``; google-genai's
pydantic models forbid unknown fields); provider replies are parsed with the
SDKs' response models first, and what the adapters make of them with
openai's. The last tests point the official Anthropic and Google SDKs at the
simulator, so its tool-calling replies are parsed by the real clients.
"""

from __future__ import annotations

import anthropic as anthropic_sdk
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming, MessageCreateParamsStreaming
from google import genai
from google.genai import types as gtypes
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from gateway.errors import GatewayError
from gateway.providers.anthropic import adapter as anthropic
from gateway.providers.base import Deployment
from gateway.providers.google import adapter as google
from tests.sdk_types import check

ANTHROPIC = Deployment("anthropic:claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5", "https://api.anthropic.com", "sk-ant")
GOOGLE = Deployment("google:gemini-2.5-flash", "google", "gemini-2.5-flash", "https://generativelanguage.googleapis.com", "g")
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgAAAAAgABVKJPXQAAAABJRU5ErkJggg=="
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Weather here, and the time?"},
                                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                                 {"type": "image_url", "image_url": {"url": "https://example.com/street.jpg", "detail": "low"}}]},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:00"}]},
    {"role": "user", "content": "Thanks!"},
]


def sent(req) -> dict:
    return orjson.loads(req.body)


def body(**extra) -> dict:
    return {"model": "m", "messages": CONVERSATION, "tools": [WEATHER, TIME], **extra}


def rebuild(chunks: list[dict]) -> tuple[dict[int, dict], str, list[str]]:
    """Tool calls by index, the content and the finish reasons from OpenAI chunks (each checked by openai's model)."""
    calls: dict[int, dict] = {}
    text, finishes = "", []
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
        ch = c["choices"][0]
        text += ch["delta"].get("content") or ""
        for tc in ch["delta"].get("tool_calls") or ():
            slot = calls.setdefault(tc["index"], {"arguments": ""})
            if "id" in tc:
                slot.update(id=tc["id"], name=tc["function"]["name"])
            slot["arguments"] += tc["function"]["arguments"]
        if ch["finish_reason"]:
            finishes.append(ch["finish_reason"])
    return calls, text, finishes


# --- Anthropic --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_request_with_images_tool_calls_and_results(stream):
    out = sent(anthropic.build_request(body(tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            parallel_tool_calls=False), ANTHROPIC, stream))
    check(out, MessageCreateParamsStreaming if stream else MessageCreateParamsNonStreaming)
    assert out["system"] == "Be brief."
    assert out["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "Weather here, and the time?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/street.jpg"}}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}]},
        # Both results in one user turn (parallel calls), then the next user text in the same turn.
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": '{"temp": 21}'},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "14:00"},
            {"type": "text", "text": "Thanks!"}]},
    ]
    assert out["tools"][0] == {"name": "get_weather", "description": "Weather in a city.",
                               "input_schema": WEATHER["function"]["parameters"]}
    assert out["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}


@pytest.mark.parametrize("choice, expected", [
    (None, None), ("auto", None), ("none", {"type": "none"}), ("required", {"type": "any"}),
])
def test_anthropic_tool_choice(choice, expected):
    out = sent(anthropic.build_request(body(**({"tool_choice": choice} if choice else {})), ANTHROPIC, False))
    check(out, MessageCreateParamsNonStreaming)
    assert out.get("tool_choice") == expected


@pytest.mark.parametrize("fmt, schema", [
    ({"type": "json_object"}, {"type": "object"}),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": WEATHER["function"]["parameters"]}}, WEATHER["function"]["parameters"]),
])
def test_anthropic_json_output_is_a_forced_tool(fmt, schema):
    out = sent(anthropic.build_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": fmt}, ANTHROPIC, False))
    check(out, MessageCreateParamsNonStreaming)
    assert out["tools"][0]["input_schema"] == schema
    assert out["tool_choice"] == {"type": "tool", "name": out["tools"][0]["name"]}


def _anthropic_reply(content: list, stop: str) -> bytes:
    doc = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": content,
           "stop_reason": stop, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 7}}
    Message.model_validate(doc)  # what Anthropic sends, by its SDK
    return orjson.dumps(doc)


def test_anthropic_tool_use_reply_becomes_tool_calls():
    data = _anthropic_reply([{"type": "text", "text": "Let me look."},
                             {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                             {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}], "tool_use")
    out = anthropic.parse_response(data, ANTHROPIC)
    ChatCompletion.model_validate(out)
    c = out["choices"][0]
    assert c["finish_reason"] == "tool_calls"
    assert c["message"] == {"role": "assistant", "content": "Let me look.", "refusal": None, "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}


def test_anthropic_forced_json_tool_reply_is_content_and_context_window_is_length():
    data = _anthropic_reply([{"type": "tool_use", "id": "t", "name": "gateway_json_response", "input": {"a": 1}}], "tool_use")
    c = anthropic.parse_response(data, ANTHROPIC)["choices"][0]
    assert c["message"] == {"role": "assistant", "content": '{"a":1}', "refusal": None} and c["finish_reason"] == "stop"
    cut = anthropic.parse_response(_anthropic_reply([{"type": "text", "text": "x"}], "model_context_window_exceeded"), ANTHROPIC)
    assert cut["choices"][0]["finish_reason"] == "length"


def test_anthropic_stream_with_text_and_two_tool_calls():
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                                              "content": [], "stop_reason": None, "stop_sequence": None,
                                              "usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Looking."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 20}},
        {"type": "message_stop"},
    ]
    events_type = TypeAdapter(RawMessageStreamEvent)
    state = anthropic.new_stream({}, ANTHROPIC)
    chunks = []
    for e in events:
        events_type.validate_python(e)
        chunks += anthropic.parse_stream_event(orjson.dumps(e), state)
    calls, text, finishes = rebuild(chunks)
    assert text == "Looking." and finishes == ["tool_calls"]
    # Indexes count the calls (0, 1), not Anthropic's content blocks (1, 2).
    assert calls == {0: {"id": "toolu_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                     1: {"id": "toolu_2", "name": "get_time", "arguments": ""}}


# --- Gemini -----------------------------------------------------------------------------------------


def test_google_request_with_images_function_calls_and_responses():
    out = sent(google.build_request(body(tool_choice="required"), GOOGLE, False))
    contents = [gtypes.Content.model_validate(c) for c in out["contents"]]  # google-genai forbids unknown fields
    gtypes.Content.model_validate(out["systemInstruction"])
    tools = [gtypes.Tool.model_validate(t) for t in out["tools"]]
    gtypes.ToolConfig.model_validate(out["toolConfig"])
    assert [c.role for c in contents] == ["user", "model", "user"]
    assert out["contents"][0]["parts"][1:] == [{"inlineData": {"mimeType": "image/png", "data": PNG}},
                                              {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/street.jpg"}}]
    assert out["contents"][1]["parts"] == [{"text": "Checking."}, {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                                           {"functionCall": {"name": "get_time", "args": {}}}]
    # Results are named after the calls they answer; a JSON object goes as is, other text as {"result": ...}.
    assert out["contents"][2]["parts"] == [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                                           {"functionResponse": {"name": "get_time", "response": {"result": "14:00"}}},
                                           {"text": "Thanks!"}]
    decl = tools[0].function_declarations[0]
    assert decl.name == "get_weather" and "additionalProperties" not in out["tools"][0]["functionDeclarations"][0]["parameters"]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


@pytest.mark.parametrize("choice, expected", [
    ("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
])
def test_google_tool_choice(choice, expected):
    out = sent(google.build_request(body(tool_choice=choice), GOOGLE, False))
    assert gtypes.ToolConfig.model_validate(out["toolConfig"]) and out["toolConfig"]["functionCallingConfig"] == expected


def test_google_json_schema_is_response_schema():
    schema = {"type": "object", "properties": {"n": {"type": ["integer", "null"]}}, "required": ["n"], "additionalProperties": False,
              "$schema": "http://json-schema.org/draft-07/schema#"}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    config = sent(google.build_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": fmt}, GOOGLE, False))["generationConfig"]
    gtypes.GenerationConfig.model_validate(config)
    assert config == {"responseMimeType": "application/json",
                      "responseSchema": {"type": "object", "properties": {"n": {"type": "integer", "nullable": True}}, "required": ["n"]}}
    plain = {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}
    assert sent(google.build_request(plain, GOOGLE, False))["generationConfig"] == {"responseMimeType": "application/json"}


def test_google_tool_result_must_answer_an_earlier_call():
    with pytest.raises(GatewayError) as e:
        google.build_request({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c9", "content": "1"}]},
                             GOOGLE, False)
    assert e.value.param == "messages[1].tool_call_id"


def _gemini(parts: list, reason: str = "STOP") -> dict:
    doc = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": reason, "index": 0}],
           "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4, "totalTokenCount": 7}, "modelVersion": "gemini-2.5-flash"}
    gtypes.GenerateContentResponse.model_validate(doc)
    return doc


def test_google_function_calls_reply_and_stream():
    parts = [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}, {"functionCall": {"name": "get_time", "args": {}}}]
    out = google.parse_response(orjson.dumps(_gemini(parts)), GOOGLE)
    ChatCompletion.model_validate(out)
    c = out["choices"][0]
    assert c["finish_reason"] == "tool_calls" and c["message"]["content"] is None
    assert [(t["function"]["name"], t["function"]["arguments"]) for t in c["message"]["tool_calls"]] == [
        ("get_weather", '{"city":"Paris"}'), ("get_time", "{}")]
    assert len({t["id"] for t in c["message"]["tool_calls"]}) == 2
    state = google.new_stream({}, GOOGLE)
    chunks = google.parse_stream_event(orjson.dumps(_gemini([{"text": "Hm."}], reason=None) | {"candidates": [
        {"content": {"role": "model", "parts": [{"text": "Hm."}]}, "index": 0}]}), state)
    chunks += google.parse_stream_event(orjson.dumps(_gemini(parts)), state)
    calls, text, finishes = rebuild(chunks)
    assert text == "Hm." and finishes == ["tool_calls"]
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"] and sorted(calls) == [0, 1]


def test_every_gemini_finish_reason_maps_to_an_openai_one():
    for reason in gtypes.FinishReason:
        assert google.finish_reason(reason.value) in ("stop", "length", "content_filter"), reason
    for withheld in ("SAFETY", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "PROHIBITED_CONTENT", "RECITATION", "BLOCKLIST", "SPII"):
        assert google.finish_reason(withheld) == "content_filter"
    assert google.finish_reason("MAX_TOKENS") == "length"


# --- the official SDKs against the simulator ----------------------------------------------------------


def test_anthropic_sdk_parses_the_simulators_tool_calls(sim):
    client = anthropic_sdk.Anthropic(base_url=sim.base_url, auth_token="k", max_retries=0)  # Authorization: Bearer
    tools = [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]
    msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=50, tools=tools,
                                 messages=[{"role": "user", "content": "Weather?"}])
    assert msg.stop_reason == "tool_use" and msg.content[0].type == "tool_use" and msg.content[0].input == {"city": "sim"}
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=50, tools=tools,
                                messages=[{"role": "user", "content": "Weather?"}]) as s:
        final = s.get_final_message()
    assert final.content[0].input == {"city": "sim"}
    done = client.messages.create(model="claude-sonnet-4-5", max_tokens=50, tools=tools, messages=[
        {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": msg.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": msg.content[0].id, "content": "sunny"}]}])
    assert done.stop_reason == "end_turn" and "tool result sunny" in done.content[0].text


def test_google_sdk_parses_the_simulators_function_calls(sim):
    client = genai.Client(api_key="g", http_options={"base_url": sim.base_url})
    decl = gtypes.FunctionDeclaration(name="get_weather", parameters=gtypes.Schema(
        type="OBJECT", properties={"city": gtypes.Schema(type="STRING")}, required=["city"]))
    config = gtypes.GenerateContentConfig(tools=[gtypes.Tool(function_declarations=[decl])],
                                          automatic_function_calling=gtypes.AutomaticFunctionCallingConfig(disable=True))
    r = client.models.generate_content(model="gemini-2.5-flash", contents="Weather?", config=config)
    assert r.function_calls[0].name == "get_weather" and r.function_calls[0].args == {"city": "sim"}
    streamed = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="Weather?", config=config))
    assert streamed[-1].function_calls[0].name == "get_weather"
    js = client.models.generate_content(model="gemini-2.5-flash", contents="A city", config=gtypes.GenerateContentConfig(
        response_mime_type="application/json", response_schema=decl.parameters))
    assert js.parsed is None or isinstance(orjson.loads(js.text), dict)
    assert set(orjson.loads(js.text)) == {"city"}


# --- /v1/messages: the Anthropic surface's translation ------------------------------------------------


def test_messages_request_becomes_a_chat_request():
    from gateway import messages_api

    req = {"model": "any", "max_tokens": 30, "system": [{"type": "text", "text": "Be brief."}], "stop_sequences": ["END"],
           "metadata": {"user_id": "u1"}, "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
           "tool_choice": {"type": "any", "disable_parallel_tool_use": True}, "stream": True,
           "messages": [
               {"role": "user", "content": [{"type": "text", "text": "Look"},
                                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
               {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                                 {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "P"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                                            {"type": "text", "text": "And now?"}]}]}
    check(req, MessageCreateParamsStreaming)  # a request the Anthropic SDK could send
    out = messages_api.to_chat(req)
    assert out["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"P"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},  # results first, as Chat Completions orders them
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    ]
    assert (out["tool_choice"], out["parallel_tool_calls"], out["stop"], out["user"]) == ("required", False, ["END"], "u1")
    assert out["stream_options"] == {"include_usage": True}
    from gateway.request import validate_chat
    validate_chat(out)  # what admission will check


def test_messages_answer_and_events_parse_with_the_anthropic_sdk():
    from gateway import messages_api

    completion = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                  "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
                      "role": "assistant", "content": "Sure.", "tool_calls": [
                          {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}}]}
    msg = Message.model_validate(messages_api.to_message(completion, "req1"))
    assert msg.stop_reason == "tool_use" and msg.content[1].input == {"a": 1} and msg.usage.output_tokens == 4
    ev = messages_api.Events()
    chunk = lambda delta, finish=None: {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # noqa: E731
    raw = messages_api.Events.start("msg_1", "m") + ev.feed([
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}),
        chunk({}, "tool_calls")]) + ev.feed([{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}]) + ev.end()
    events = [orjson.loads(e.split(b"data: ", 1)[1]) for e in raw.split(b"\n\n") if e]
    parsed = [TypeAdapter(RawMessageStreamEvent).validate_python(e) for e in events]
    assert [e.type for e in parsed] == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                                        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                                        "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert [e.index for e in parsed if e.type == "content_block_start"] == [0, 1, 2]
    assert parsed[-2].delta.stop_reason == "tool_use" and parsed[-2].usage.output_tokens == 9
