"""API keys end to end: a key limited to some models, and the usage report per key.

A real ``gateway serve`` with ``[[keys]]`` in its GATEWAY_CONFIG, the simulator as
every provider. The simulator's request counter proves a refused request
never reached a provider; the admin usage report is checked row by row
against the usage the answers themselves reported.
"""

from __future__ import annotations

import orjson
import pytest

from gateway.simulator import SimulatorProcess
from tests.harness import ADMIN_KEY, API_KEY, gateway_with_config, simulator_env

KEYS_TOML = """
[[keys]]
key = "sk-limited"
name = "limited"
models = ["gpt-4o-mini", "claude-3-5-haiku-latest"]

[[keys]]
key = "sk-usage-a"
name = "usage-a"

[[keys]]
key = "sk-usage-b"
name = "usage-b"
models = ["gemini-2.0-flash"]
"""


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def chat_body(model: str, stream: bool = False, **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "What is machine learning?"}], **extra}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def sse_chunks(raw: bytes) -> list[dict]:
    """The stream's chunks; asserts it is whole (content, one finish_reason, ``[DONE]`` last)."""
    payloads = [e[len(b"data: "):] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]
    assert payloads and payloads[-1] == b"[DONE]", raw[-200:]
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "What is machine learning" in text
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == ["stop"]
    return chunks


@pytest.fixture(scope="module")
def gateway(sim):
    with gateway_with_config(KEYS_TOML, simulator_env(sim.base_url) | {"GATEWAY_CACHE": "off"}) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _reset(sim):
    sim.reset()
    yield


def upstream_requests(sim: SimulatorProcess) -> int:
    return sim.stats()["total"]["requests"]


@pytest.mark.parametrize("stream", [False, True], ids=["rest", "sse"])
async def test_a_key_limited_to_some_models_gets_403_on_another(gateway, sim, http, stream):
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("gemini-2.0-flash", stream),
                         headers=bearer("sk-limited")) as r:
        assert r.status == 403
        assert r.headers["content-type"].startswith("application/json")  # not an SSE stream
        assert r.headers["x-request-id"] and float(r.headers["x-gateway-overhead-ms"]) >= 0
        err = orjson.loads(await r.read())["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "model_not_allowed" and err["param"] == "model" and err["type"] == "invalid_request_error"
    assert "gemini-2.0-flash" in err["message"]
    assert upstream_requests(sim) == 0  # refused before any provider was asked


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-3-5-haiku-latest"])
async def test_a_limited_key_may_use_its_models_rest_and_sse(gateway, sim, http, model):
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body(model), headers=bearer("sk-limited")) as r:
        assert r.status == 200, await r.text()
        data = orjson.loads(await r.read())
    assert data["object"] == "chat.completion" and "What is machine learning" in data["choices"][0]["message"]["content"]
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body(model, stream=True),
                         headers=bearer("sk-limited")) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        sse_chunks(await r.read())
    assert upstream_requests(sim) == 2


async def test_the_limit_is_per_key(gateway, http):
    """The model the limited key may not use is open to a key without a list."""
    for key in (API_KEY, ADMIN_KEY):
        async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("gemini-2.0-flash"), headers=bearer(key)) as r:
            assert r.status == 200, (key, await r.text())


async def usage_rows(http, gateway, key: str, all_keys: bool = False) -> dict[tuple[str, str], dict]:
    url = gateway.url + "/v1/usage" + ("?all=1" if all_keys else "")
    async with http.get(url, headers=bearer(key)) as r:
        assert r.status == 200, await r.text()
        data = orjson.loads(await r.read())
    assert data["object"] == "list"
    return {(row["key"], row["model"]): row for row in data["data"]}


def expected(usages: list[dict]) -> dict:
    prompt = sum(u["prompt_tokens"] for u in usages)
    completion = sum(u["completion_tokens"] for u in usages)
    return {"requests": len(usages), "cached_requests": 0, "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


async def test_the_usage_report_counts_each_key_and_model(gateway, sim, http):
    """A known sequence from two keys no other test uses; the report must add up to what the answers said."""
    seen: dict[tuple[str, str], list[dict]] = {}

    async def send(key: str, name: str, model: str, stream: bool = False, max_tokens: int | None = None) -> None:
        body = chat_body(model, stream, **({"max_tokens": max_tokens} if max_tokens else {}))
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=bearer(key)) as r:
            assert r.status == 200, await r.text()
            raw = await r.read()
        usage = sse_chunks(raw)[-1]["usage"] if stream else orjson.loads(raw)["usage"]
        assert usage["completion_tokens"] > 0
        seen.setdefault((name, model), []).append(usage)

    await send("sk-usage-a", "usage-a", "gpt-4o-mini")
    await send("sk-usage-a", "usage-a", "gpt-4o-mini", max_tokens=3)
    await send("sk-usage-a", "usage-a", "gpt-4o-mini", stream=True)
    await send("sk-usage-a", "usage-a", "claude-3-5-haiku-latest")
    await send("sk-usage-b", "usage-b", "gemini-2.0-flash", stream=True)
    # Refused requests are not usage: a forbidden model, a bad body, a provider error.
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("gpt-4o-mini"), headers=bearer("sk-usage-b")) as r:
        assert r.status == 403
    async with http.post(gateway.url + "/v1/chat/completions", json={"model": "gemini-2.0-flash"}, headers=bearer("sk-usage-b")) as r:
        assert r.status == 400
    sim.configure("google", mode="error", error_status=500)
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("gemini-2.0-flash"), headers=bearer("sk-usage-b")) as r:
        assert r.status == 502

    everything = await usage_rows(http, gateway, ADMIN_KEY, all_keys=True)
    ours = {k: v for k, v in everything.items() if k[0] in ("usage-a", "usage-b")}
    assert set(ours) == set(seen)
    for k, usages in seen.items():
        row = ours[k]
        assert {f: row[f] for f in expected(usages)} == expected(usages), k
    assert ours[("usage-a", "gpt-4o-mini")]["requests"] == 3
    # A key without admin rights sees its own rows only, and may not ask for everyone's.
    assert set(await usage_rows(http, gateway, "sk-usage-b")) == {("usage-b", "gemini-2.0-flash")}
    async with http.get(gateway.url + "/v1/usage?all=1", headers=bearer("sk-usage-a")) as r:
        assert r.status == 403
        assert orjson.loads(await r.read())["error"]["code"] == "admin_required"
