"""Tools, images and JSON output through the gateway with the official openai SDK, on every provider.

End to end over loopback: the openai SDK → ``gateway serve`` → the simulator
speaking each provider's wire format; plus the no-silent-reroute rule and the
wire fixes of issue 10 that only show across the HTTP hop.
"""

from __future__ import annotations

import base64
import json

import openai
import orjson
import pytest

from gateway.simulator import SimulatorProcess
from tests.harness import API_KEY, gateway_with_config, openai_client, simulator_env

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "google": "gemini-2.5-flash"}
PROVIDERS = tuple(MODELS)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
# A 1x1 PNG.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)).decode()


def _dep(name: str, provider: str, sim: SimulatorProcess, key: str | None = None) -> str:
    return (f'{{ name = "{name}", provider = "{provider}", model = "{MODELS[provider]}", '
            f'base_url = "{sim.base_url_for(provider)}", api_key = "{key or "sk-" + provider}" }}')


def _config(sim: SimulatorProcess) -> str:
    groups = [f'[models.{p}]\ndeployments = [{_dep(p, p, sim)}]' for p in PROVIDERS]
    both = f'{_dep("strict-claude", "anthropic", sim)}, {_dep("strict-gpt", "openai", sim)}'
    groups.append(f'[models.strict]\nstrategy = "priority"\ndeployments = [{both}]')
    groups.append(f'[models.reroute]\nstrategy = "priority"\nreroute_unsupported = true\ndeployments = [{both.replace("strict-", "rr-")}]')
    groups.append(f'[models.badkey]\nstrategy = "priority"\ndeployments = [{_dep("bad-gemini", "google", sim, "wrong")}, '
                  f'{_dep("good-gpt", "openai", sim)}]')
    return "\n\n".join(groups) + "\n"

pytestmark = pytest.mark.usefixtures("fresh_sim")


@pytest.fixture(scope="module")
def gateway(sim):
    env = {**simulator_env(sim.base_url), "GATEWAY_CACHE": "off", "GATEWAY_IMPLICIT_FALLBACK": "true"}
    with gateway_with_config(_config(sim), env) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway):
    return openai_client(gateway)


def _calls_from_stream(stream) -> tuple[dict[int, dict], str | None, str]:
    """Tool calls rebuilt from OpenAI chunks the way the SDK's users do it: by index, arguments concatenated."""
    calls: dict[int, dict] = {}
    finish = None
    text = ""
    for chunk in stream:
        if not chunk.choices:
            continue
        c = chunk.choices[0]
        text += c.delta.content or ""
        for tc in c.delta.tool_calls or ():
            slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                assert slot["id"] is None, "a call is named once, by its first delta"
                slot["id"], slot["name"] = tc.id, tc.function.name
            slot["arguments"] += tc.function.arguments or ""
        finish = c.finish_reason or finish
    return calls, finish, text


def _answer(client, stream: bool, **kw) -> tuple[list[dict], str | None, str | None]:
    """(tool calls in order, finish reason, text) of one request, streamed or not."""
    if stream:
        calls, finish, text = _calls_from_stream(client.chat.completions.create(**kw, stream=True))
        assert sorted(calls) == list(range(len(calls)))  # indexes 0, 1, ... with no gap
        return [calls[i] for i in sorted(calls)], finish, text
    c = client.chat.completions.create(**kw).choices[0]
    got = [{"id": t.id, "name": t.function.name, "arguments": t.function.arguments} for t in c.message.tool_calls or ()]
    return got, c.finish_reason, c.message.content


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["rest", "sse"])
def test_tool_round_trip(client, provider, stream):
    messages = [{"role": "user", "content": "Weather and time in Paris? [[tools: get_weather, get_time]]"}]
    kw = {"model": provider, "messages": messages, "tools": [WEATHER, TIME]}
    got, finish, _ = _answer(client, stream, **kw)
    assert finish == "tool_calls"
    assert [c["name"] for c in got] == ["get_weather", "get_time"]  # two calls in one message, in order
    assert json.loads(got[0]["arguments"]) == {"city": "sim"} and json.loads(got[1]["arguments"]) == {"zone": "sim"}
    assert all(c["id"] for c in got) and got[0]["id"] != got[1]["id"]
    # The results go back; the model answers in text, quoting them.
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in got]})
    messages += [{"role": "tool", "tool_call_id": got[0]["id"], "content": '{"temp": 21}'},
                 {"role": "tool", "tool_call_id": got[1]["id"], "content": "CET"}]
    calls, finish, text = _answer(client, stream, **kw)
    assert not calls
    assert finish in ("stop", "length") and "tool result" in text and "21" in text


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_choice_none_named_and_required(client, provider):
    base = {"model": provider, "messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER, TIME]}
    r = client.chat.completions.create(**base, tool_choice="none")
    assert r.choices[0].finish_reason != "tool_calls" and r.choices[0].message.content
    r = client.chat.completions.create(**base, tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["get_time"]
    r = client.chat.completions.create(**base, tool_choice="required")
    assert r.choices[0].finish_reason == "tool_calls"


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["rest", "sse"])
def test_json_schema_comes_back_as_content(client, provider, stream):
    kw = {"model": provider, "messages": [{"role": "user", "content": "A person, please."}],
          "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}}
    calls, finish, text = _answer(client, stream, **kw)
    assert not calls
    assert finish == "stop"
    doc = json.loads(text)
    assert set(doc) == {"name", "age", "tags"} and isinstance(doc["name"], str) and doc["age"] == 1
    assert len(doc["tags"]) == 1 and isinstance(doc["tags"][0], str)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_json_object(client, provider):
    r = client.chat.completions.create(model=provider, messages=[{"role": "user", "content": "Say hi as JSON"}],
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["rest", "sse"])
def test_images(client, provider, stream):
    content = [{"type": "text", "text": "What is in these?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    kw = {"model": provider, "messages": [{"role": "user", "content": content}]}
    _, finish, text = _answer(client, stream, **kw)
    assert text.startswith(f"Simulated {provider} reply to: What is in these?") and finish == "stop"


def test_an_image_url_gemini_cannot_type_is_a_400(client):
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/render?id=7"}}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="google", messages=[{"role": "user", "content": content}])
    assert e.value.body["param"] == "messages[0].content[0].image_url.url" and "data URL" in e.value.body["message"]


# --- no silent reroute --------------------------------------------------------------------------------


def _raw(client, model: str, **extra):
    return client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "Hi"}], **extra)


def test_a_capability_refusal_is_not_rerouted_by_default(client, sim):
    with pytest.raises(openai.BadRequestError) as e:
        _raw(client, "strict", logprobs=True)
    assert e.value.body["param"] == "logprobs" and "Anthropic" in e.value.body["message"]
    assert e.value.response.headers.get("x-gateway-failover") is None
    assert sim.stats()["providers"]["openai"]["requests"] == 0  # no other model was asked
    # Implicit fallback (on here) does not reroute it either.
    with pytest.raises(openai.BadRequestError):
        _raw(client, "claude-sonnet-4-5", logprobs=True)
    assert sim.stats()["providers"]["openai"]["requests"] == 0


def test_a_configured_reroute_says_so(client):
    raw = _raw(client, "reroute", logprobs=True)
    r = raw.parse()
    assert raw.headers["x-gateway-deployment"] == "rr-gpt"
    assert raw.headers["x-gateway-failover"] == "rr-claude (unsupported: logprobs)"
    assert r.model == "gpt-4o-mini"  # the model field names who answered


def test_a_wrong_google_key_is_an_auth_failure_that_fails_over(client, sim):
    sim.configure("google", api_key="right")
    raw = _raw(client, "badkey")
    assert raw.headers["x-gateway-deployment"] == "good-gpt"
    assert raw.headers["x-gateway-failover"] == "bad-gemini (upstream_auth_error)"


def test_claude_refuses_temperature_with_top_p_and_the_gateway_never_sends_the_pair(client, sim):
    with pytest.raises(openai.BadRequestError) as e:
        _raw(client, "anthropic", temperature=0.5, top_p=0.9)
    assert e.value.body["param"] == "top_p"
    assert sim.stats()["providers"]["anthropic"]["requests"] == 0
    assert _raw(client, "anthropic", temperature=0.5, top_p=1).parse().choices[0].message.content
    # The simulator refuses the pair as the real API does, so the old adapter's body would have failed there.
    url = sim.base_url_for("anthropic") + "/v1/messages"
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "messages": [{"role": "user", "content": "x"}]}
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, orjson.dumps(body), {"authorization": "Bearer k", "anthropic-version": "2023-06-01",
                                                           "content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(req, timeout=5)
    assert he.value.code == 400 and b"cannot both be specified" in he.value.read()


def test_the_responses_api_is_a_clear_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="openai", input="hi")
    assert e.value.body["code"] == "endpoint_not_supported" and "/v1/chat/completions" in e.value.body["message"]


# --- /v1/messages: the Anthropic SDK through the gateway, any model behind it ------------------------


@pytest.fixture(scope="module")
def claude(gateway):
    import anthropic

    return anthropic.Anthropic(base_url=gateway.url, api_key=API_KEY, max_retries=0)  # x-api-key


CLAUDE_TOOLS = [{"name": "get_weather", "description": "Weather in a city.",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.mark.parametrize("provider", ["openai", "google"])
def test_anthropic_sdk_through_messages(claude, provider):
    msg = claude.messages.create(model=provider, max_tokens=20, system="Be brief.",
                                 messages=[{"role": "user", "content": "Hello there"}])
    assert msg.type == "message" and msg.stop_reason == "max_tokens"
    assert msg.content[0].text.startswith(f"Simulated {provider} reply to: Hello there") and msg.usage.output_tokens == 20
    with claude.messages.stream(model=provider, max_tokens=20, messages=[{"role": "user", "content": "Hello there"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == msg.content[0].text and final.stop_reason == "max_tokens" and final.usage.output_tokens == 20


@pytest.mark.parametrize("provider", ["openai", "google"])
@pytest.mark.parametrize("stream", [False, True], ids=["rest", "sse"])
def test_anthropic_sdk_tool_round_trip_through_messages(claude, provider, stream):
    ask = {"model": provider, "max_tokens": 50, "tools": CLAUDE_TOOLS, "messages": [{"role": "user", "content": "Weather?"}]}
    if stream:
        with claude.messages.stream(**ask) as s:
            msg = s.get_final_message()
    else:
        msg = claude.messages.create(**ask)
    assert msg.stop_reason == "tool_use"
    use = [b for b in msg.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in use] == [("get_weather", {"city": "sim"})]
    ask["messages"] += [{"role": "assistant", "content": msg.content},
                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use[0].id, "content": "sunny"}]}]
    done = claude.messages.create(**ask)
    assert done.stop_reason in ("end_turn", "max_tokens") and "tool result" in done.content[0].text


def test_messages_errors_have_anthropics_shape(gateway, claude):
    import anthropic

    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    bearer = anthropic.Anthropic(base_url=gateway.url, auth_token="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bearer.messages.create(model="openai", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="openai", max_tokens=5, extra_body={"top_k": 3}, messages=[{"role": "user", "content": "x"}])
    assert "top_k" in e.value.body["error"]["message"]
