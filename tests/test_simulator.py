"""The provider simulator over real HTTP: wire shapes, auth, every mode, admin API.

One simulator subprocess serves the module; each test starts from its reset
state. SSE is parsed here by hand, independently of ``gateway.sse``, so a bug
there cannot hide one in the simulator.
"""

from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import numpy as np
import openai
import pytest

from gateway.simulator import Simulator, SimulatorProcess

PROMPT = "Hello there, how are you doing on this fine day today?"


@pytest.fixture(scope="module")
def sim_process():
    with SimulatorProcess() as sim:
        yield sim


@pytest.fixture
def sim(sim_process: SimulatorProcess) -> SimulatorProcess:
    sim_process.reset()
    return sim_process


@pytest.fixture
def http():
    with httpx.Client(timeout=5) as client:
        yield client


def call(http: httpx.Client, sim: SimulatorProcess, provider: str, body: dict | None = None, *, stream: bool = False, headers: dict | None = None, **kw):
    """POST a minimal valid request in ``provider``'s own format."""
    if provider == "openai":
        url = f"{sim.openai_base_url}/chat/completions"
        auth = {"Authorization": "Bearer sk-test"}
        base = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
        if stream:
            base["stream"] = True
    elif provider == "anthropic":
        url = f"{sim.anthropic_base_url}/v1/messages"
        auth = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
        base = {"model": "claude-3-5-haiku", "max_tokens": 1024, "messages": [{"role": "user", "content": PROMPT}]}
        if stream:
            base["stream"] = True
    else:
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        url = f"{sim.google_base_url}/v1beta/models/gemini-2.0-flash:{method}"
        auth = {"x-goog-api-key": "goog-test"}
        base = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
    base.update(body or {})
    return http.post(url, json=base, headers=auth if headers is None else headers, **kw)


def sse(raw: bytes, crlf: bool = False) -> list[tuple[str | None, str]]:
    """(event name, data) pairs of a complete SSE body."""
    sep = b"\r\n\r\n" if crlf else b"\n\n"
    assert raw.endswith(sep)
    out = []
    for block in raw[: -len(sep)].split(sep):
        name, data = None, []
        for line in block.split(sep[: len(sep) // 2]):
            assert b"\n" not in line and b"\r" not in line
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data.append(line[6:].decode())
        out.append((name, "\n".join(data)))
    return out


# ------------------------------------------------------------------ OpenAI


def test_openai_chat_completion_shape(sim, http):
    r = call(http, sim, "openai", {"n": 2})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["id"].startswith("chatcmpl-") and doc["object"] == "chat.completion"
    assert isinstance(doc["created"], int) and doc["model"] == "gpt-4o-mini" and doc["system_fingerprint"]
    assert [c["index"] for c in doc["choices"]] == [0, 1]
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant"
    text = choice["message"]["content"]
    assert text.startswith("Simulated openai reply to: Hello there, how are you doing on this lorem")
    assert len(text.split()) == 30
    assert doc["usage"] == {
        **doc["usage"],
        "prompt_tokens": len(PROMPT.split()),
        "completion_tokens": 60,
        "total_tokens": len(PROMPT.split()) + 60,
    }
    other = call(http, sim, "openai", {"messages": [{"role": "user", "content": "Something else entirely"}]}).json()
    assert other["choices"][0]["message"]["content"] != text  # answers tell requests apart


def test_openai_max_tokens_and_stop(sim, http):
    doc = call(http, sim, "openai", {"max_tokens": 5}).json()
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 5
    assert doc["choices"][0]["message"]["content"] == "Simulated openai reply to: Hello"
    doc = call(http, sim, "openai", {"max_completion_tokens": 3, "max_tokens": 50}).json()
    assert doc["usage"]["completion_tokens"] == 3
    doc = call(http, sim, "openai", {"stop": ["reply", "never"]}).json()
    assert doc["choices"][0]["message"]["content"] == "Simulated openai "
    assert doc["choices"][0]["finish_reason"] == "stop"
    sim.configure("openai", response_tokens=7)
    doc = call(http, sim, "openai").json()
    assert doc["usage"]["completion_tokens"] == 7 and doc["choices"][0]["finish_reason"] == "stop"


def test_openai_stream_with_usage(sim, http):
    full = call(http, sim, "openai").json()["choices"][0]["message"]["content"]
    r = call(http, sim, "openai", {"stream_options": {"include_usage": True}}, stream=True)
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    assert r.headers["transfer-encoding"] == "chunked"
    events = sse(r.content)
    assert all(name is None for name, _ in events)
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    first, *content, last, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert len(content) == 30
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == full
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 30


def test_openai_stream_without_usage_and_length(sim, http):
    sim.configure("openai", chunk_tokens=4)
    r = call(http, sim, "openai", {"max_tokens": 10}, stream=True)
    chunks = [json.loads(d) for _, d in sse(r.content)[:-1]]
    assert all("usage" not in c for c in chunks)
    assert len(chunks) == 1 + 3 + 1  # role, 10 words in chunks of 4, finish
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_openai_official_sdk(sim):
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test", max_retries=0)
    done = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi sdk"}], max_tokens=6)
    assert done.choices[0].message.content == "Simulated openai reply to: hi sdk"
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 6
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi sdk"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Simulated openai reply to: hi sdk")
    assert chunks[-1].usage.completion_tokens == 30
    emb = client.embeddings.create(model="text-embedding-3-small", input=["red apple", "green apple"])  # base64 on the wire
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 1536  # text-embedding-3-small's real size
    sim.configure("openai", api_key="sk-other")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_openai_errors(sim, http):
    r = call(http, sim, "openai", headers={})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    sim.configure("openai", api_key="sk-right")
    assert call(http, sim, "openai").status_code == 401
    assert call(http, sim, "openai", headers={"Authorization": "Bearer sk-right"}).status_code == 200
    r = call(http, sim, "openai", {"messages": []}, headers={"Authorization": "Bearer sk-right"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = http.post(f"{sim.openai_base_url}/chat/completions", content=b"{not json", headers={"Authorization": "Bearer sk-right"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = call(http, sim, "openai", {"stream_options": {"include_usage": True}}, headers={"Authorization": "Bearer sk-right"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"  # like the real API
    assert http.post(f"{sim.base_url}/v2/nothing").status_code == 404


def test_models_lists(sim, http):
    data = http.get(f"{sim.openai_base_url}/models", headers={"Authorization": "Bearer k"}).json()
    assert data["object"] == "list" and data["data"][0]["object"] == "model"
    data = http.get(f"{sim.base_url}/v1/models", headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}).json()
    assert data["data"][0]["type"] == "model" and "has_more" in data
    data = http.get(f"{sim.base_url}/v1beta/models?key=k").json()
    assert data["models"][0]["name"].startswith("models/gemini")


def test_embeddings(sim, http):
    def embed(inp, **kw):
        r = http.post(f"{sim.openai_base_url}/embeddings", json={"model": "text-embedding-3-small", "input": inp, **kw}, headers={"Authorization": "Bearer k"})
        assert r.status_code == 200, r.text
        return r.json()

    doc = embed(["the cat sat on the mat", "the cat sat on a mat", "quantum chromodynamics lecture"])
    assert doc["object"] == "list" and doc["model"] == "text-embedding-3-small"
    assert [d["index"] for d in doc["data"]] == [0, 1, 2] and doc["data"][0]["object"] == "embedding"
    assert doc["usage"] == {"prompt_tokens": 15, "total_tokens": 15}
    a, b, c = (np.array(d["embedding"]) for d in doc["data"])
    assert a.shape == (1536,)  # text-embedding-3-small's real size
    assert abs(np.linalg.norm(a) - 1) < 1e-5
    assert a @ b > 0.7 and abs(a @ c) < 0.4  # shared words: similar
    again = np.array(embed("the cat sat on the mat")["data"][0]["embedding"])
    assert np.allclose(a, again)  # deterministic
    packed = embed("the cat sat on the mat", encoding_format="base64")["data"][0]["embedding"]
    assert np.allclose(np.frombuffer(base64.b64decode(packed), dtype="<f4"), a, atol=1e-6)
    assert len(embed("short", dimensions=64)["data"][0]["embedding"]) == 64
    assert len(embed("short", model="text-embedding-3-large")["data"][0]["embedding"]) == 3072


# ------------------------------------------------------------------ Anthropic


def test_anthropic_message_shape(sim, http):
    body = {
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "first turn"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
        ],
        "temperature": 0.5,
    }
    doc = call(http, sim, "anthropic", body).json()
    assert doc["id"].startswith("msg_") and doc["type"] == "message" and doc["role"] == "assistant"
    assert doc["model"] == "claude-3-5-haiku"
    assert doc["content"][0]["type"] == "text"
    assert doc["content"][0]["text"].startswith("Simulated anthropic reply to: Hello there,")
    assert doc["stop_reason"] == "end_turn" and doc["stop_sequence"] is None
    assert doc["usage"]["input_tokens"] == 2 + 2 + 1 + len(PROMPT.split())
    assert doc["usage"]["output_tokens"] == 30
    doc = call(http, sim, "anthropic", {"max_tokens": 4}).json()
    assert doc["stop_reason"] == "max_tokens" and doc["usage"]["output_tokens"] == 4
    doc = call(http, sim, "anthropic", {"stop_sequences": ["to:"]}).json()
    assert doc["stop_reason"] == "stop_sequence" and doc["stop_sequence"] == "to:"
    assert doc["content"][0]["text"] == "Simulated anthropic reply "


def test_anthropic_stream(sim, http):
    full = call(http, sim, "anthropic").json()["content"][0]["text"]
    r = call(http, sim, "anthropic", stream=True)
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    events = [(name, json.loads(data)) for name, data in sse(r.content)]
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[3:-3] == ["content_block_delta"] * 30
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == len(PROMPT.split())
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"text_delta"}
    assert "".join(d["text"] for d in deltas) == full
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert final["usage"] == {"output_tokens": 30}


def test_anthropic_errors(sim, http):
    def check(r, status, etype):
        assert r.status_code == status, r.text
        doc = r.json()
        assert doc["type"] == "error" and doc["error"]["type"] == etype and doc["error"]["message"]

    check(call(http, sim, "anthropic", headers={"anthropic-version": "2023-06-01"}), 401, "authentication_error")
    check(call(http, sim, "anthropic", headers={"x-api-key": "k"}), 400, "invalid_request_error")
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}
    check(http.post(f"{sim.base_url}/v1/messages", json=body, headers=headers), 400, "invalid_request_error")  # no max_tokens
    check(call(http, sim, "anthropic", {"messages": [{"role": "system", "content": "x"}]}), 400, "invalid_request_error")
    check(call(http, sim, "anthropic", {"temperature": 1.5}), 400, "invalid_request_error")


# ------------------------------------------------------------------ Google


def test_google_generate_shape(sim, http):
    body = {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "first"}]},
            {"role": "model", "parts": [{"text": "ok"}]},
            {"role": "user", "parts": [{"text": PROMPT}]},
        ],
        "generationConfig": {"temperature": 0.2, "candidateCount": 2},
    }
    doc = call(http, sim, "google", body).json()
    assert [c["index"] for c in doc["candidates"]] == [0, 1]
    cand = doc["candidates"][0]
    assert cand["content"]["role"] == "model" and cand["finishReason"] == "STOP"
    assert cand["content"]["parts"][0]["text"].startswith("Simulated google reply to: Hello there,")
    usage = doc["usageMetadata"]
    assert usage["promptTokenCount"] == 2 + 1 + 1 + len(PROMPT.split())
    assert usage["candidatesTokenCount"] == 60
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + 60
    assert doc["modelVersion"] == "gemini-2.0-flash" and doc["responseId"]
    r = http.post(
        f"{sim.base_url}/v1beta/models/gemini-2.5-pro:generateContent?key=abc",
        json={"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 3}},
    )
    assert r.json()["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert r.json()["usageMetadata"]["candidatesTokenCount"] == 3


def test_google_stream(sim, http):
    full = call(http, sim, "google").json()["candidates"][0]["content"]["parts"][0]["text"]
    r = call(http, sim, "google", stream=True)
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    assert b"\r\n\r\n" in r.content
    docs = [json.loads(data) for _, data in sse(r.content, crlf=True)]
    assert len(docs) == 30
    assert "".join(d["candidates"][0]["content"]["parts"][0]["text"] for d in docs) == full
    assert all("finishReason" not in d["candidates"][0] and "usageMetadata" not in d for d in docs[:-1])
    assert docs[-1]["candidates"][0]["finishReason"] == "STOP"
    assert docs[-1]["usageMetadata"]["candidatesTokenCount"] == 30
    # without alt=sse Google sends one JSON array
    url = f"{sim.base_url}/v1beta/models/gemini-2.0-flash:streamGenerateContent"
    array = http.post(url, json={"contents": [{"parts": [{"text": "x"}]}]}, headers={"x-goog-api-key": "k"}).json()
    assert isinstance(array, list) and array[-1]["candidates"][0]["finishReason"] == "STOP"


def test_google_errors(sim, http):
    r = call(http, sim, "google", headers={})
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    assert r.json()["error"]["code"] == 403
    r = call(http, sim, "google", {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]})
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"


# ------------------------------------------------------------------ modes


@pytest.mark.parametrize(
    ("provider", "status", "check"),
    [
        ("openai", 500, lambda d: d["error"]["type"] == "server_error"),
        ("anthropic", 500, lambda d: d == {**d, "type": "error", "error": {"type": "api_error", "message": d["error"]["message"]}}),
        ("google", 503, lambda d: d["error"]["status"] == "UNAVAILABLE" and d["error"]["code"] == 503),
    ],
)
def test_mode_error(sim, http, provider, status, check):
    sim.configure(provider, mode="error", error_status=status)
    for stream in (False, True):
        r = call(http, sim, provider, stream=stream)
        assert r.status_code == status and check(r.json())
    other = "google" if provider != "google" else "openai"
    assert call(http, sim, other).status_code == 200  # only that provider is down


def test_mode_overloaded(sim, http):
    sim.configure("*", mode="overloaded", retry_after=7)
    r = call(http, sim, "openai")
    assert r.status_code == 429 and r.headers["retry-after"] == "7" and r.json()["error"]["code"] == "rate_limit_exceeded"
    r = call(http, sim, "anthropic")
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
    r = call(http, sim, "google")
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert r.headers["retry-after"] == "7"


def test_mode_timeout(sim, http):
    sim.configure("anthropic", mode="timeout")
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        call(http, sim, "anthropic", timeout=0.3)
    assert time.monotonic() - started < 2
    stats = sim.stats()["providers"]["anthropic"]
    assert stats["hung"] == 1 and stats["requests"] == 1
    assert call(http, sim, "openai").status_code == 200
    deadline = time.monotonic() + 2  # the client gave up and closed: no longer in flight
    while sim.stats()["providers"]["anthropic"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.stats()["providers"]["anthropic"]["in_flight"] == 0


def _connect(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_mode_refuse_and_recovery(sim, http):
    assert call(http, sim, "openai").status_code == 200  # a kept-alive connection that must be dropped
    sim.configure("*", mode="refuse")
    with pytest.raises(ConnectionRefusedError):
        _connect(sim.port)
    with pytest.raises(httpx.TransportError):
        call(http, sim, "openai")
    assert sim.stats()["total"]["requests"] == 1  # the admin port still answers
    sim.configure("google", mode="ok")
    _connect(sim.port)
    assert call(http, sim, "google").status_code == 200
    with pytest.raises(httpx.TransportError):  # openai alone: its requests get a reset connection
        call(http, sim, "openai")
    assert call(http, sim, "google").status_code == 200
    assert sim.stats()["providers"]["openai"]["dropped"] == 1


def test_mode_for_seconds(sim, http):
    sim.configure("*", mode="refuse", for_seconds=0.3)
    with pytest.raises(ConnectionRefusedError):
        _connect(sim.port)
    time.sleep(0.5)
    assert sim.config()["openai"]["mode"] == "ok"
    assert call(http, sim, "openai").status_code == 200
    sim.configure("openai", mode="error", for_seconds=0.2)
    assert call(http, sim, "openai").status_code == 500
    time.sleep(0.35)
    assert call(http, sim, "openai").status_code == 200


def test_error_rate(sim, http):
    sim.configure("openai", error_rate=0.3, error_status=503)
    codes = [call(http, sim, "openai").status_code for _ in range(200)]
    assert set(codes) == {200, 503}
    assert 0.2 <= codes.count(503) / 200 <= 0.4
    assert sim.stats()["providers"]["openai"]["status"] == {"200": codes.count(200), "503": codes.count(503)}


def test_latency(sim, http):
    call(http, sim, "openai")  # warm connection
    sim.configure("openai", latency_ms=150)
    started = time.monotonic()
    assert call(http, sim, "openai").status_code == 200
    assert 0.15 <= time.monotonic() - started < 0.6
    started = time.monotonic()
    assert call(http, sim, "anthropic").status_code == 200  # other providers unaffected
    assert time.monotonic() - started < 0.1
    sim.configure("openai", latency_ms=0, tail_ratio=1, tail_ms=200)
    started = time.monotonic()
    call(http, sim, "openai")
    assert time.monotonic() - started >= 0.2


def test_stream_pacing(sim, http):
    sim.configure("openai", tokens_per_second=100, response_tokens=10, latency_ms=50)
    url = f"{sim.openai_base_url}/chat/completions"
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "pace"}]}
    started = time.monotonic()
    arrivals = []
    with http.stream("POST", url, json=body, headers={"Authorization": "Bearer k"}) as r:
        for part in r.iter_raw():
            arrivals.append((time.monotonic() - started, part))
    first, last = arrivals[0][0], arrivals[-1][0]
    assert first >= 0.05  # latency before the first byte
    assert last - first >= 0.08  # 10 chunks 10 ms apart
    assert len(arrivals) >= 5  # really sent piece by piece
    assert b"".join(p for _, p in arrivals).endswith(b"data: [DONE]\n\n")


# ------------------------------------------------------------------ admin, HTTP


def test_admin_validation(sim, http):
    before = sim.config()
    for bad in (
        {"provider": "openai", "latency_ms": -1},
        {"provider": "openai", "error_rate": 2},
        {"provider": "openai", "mode": "sideways"},
        {"provider": "openai", "bogus": 1},
        {"provider": "azure", "latency_ms": 1},
        {"provider": "openai", "for_seconds": 3},
        {"provider": "*", "latency_ms": 5, "response_tokens": "many"},  # atomic: latency not applied either
    ):
        r = http.post(f"{sim.admin_url}/_sim/config", json=bad)
        assert r.status_code == 400 and r.json()["error"], bad
    assert http.post(f"{sim.admin_url}/_sim/config", content=b"[1]").status_code == 400
    assert sim.config() == before
    assert http.get(f"{sim.base_url}/_sim/config").json() == before  # also on the main port
    after = http.post(f"{sim.base_url}/_sim/config", json={"provider": "google", "latency_ms": 3}).json()
    assert after["google"]["latency_ms"] == 3 and after["openai"]["latency_ms"] == 0
    assert http.get(f"{sim.admin_url}/v1/models").status_code == 404  # the admin port serves /_sim/ only


def test_stats_and_reset(sim, http):
    call(http, sim, "openai")
    call(http, sim, "openai", stream=True)
    call(http, sim, "google", headers={})
    stats = sim.stats()
    assert stats["providers"]["openai"] == {**stats["providers"]["openai"], "requests": 2, "streams": 1, "status": {"200": 2}}
    assert stats["providers"]["google"]["status"] == {"403": 1}
    assert stats["total"]["requests"] == 3 and stats["total"]["in_flight"] == 0
    http.post(f"{sim.base_url}/v1/v1/chat/completions")  # a wrong base URL
    assert sim.stats()["providers"]["other"]["status"] == {"404": 1}
    sim.configure("openai", latency_ms=9)
    sim.reset()
    assert sim.stats()["total"]["requests"] == 0 and sim.config()["openai"]["latency_ms"] == 0


def test_keep_alive_pipelining_and_close(sim):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "pipe"}]}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: %d\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", sim.port), timeout=2) as s:
        s.sendall(head + b"\r\n" + body + head + b"Connection: close\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2 and b"connection: close" in data


def test_cli_config_and_reset_to_it():
    with SimulatorProcess({"*": {"latency_ms": 1}, "google": {"response_tokens": 5}}) as sim:
        config = sim.config()
        assert config["openai"]["latency_ms"] == 1 and config["google"]["response_tokens"] == 5
        sim.configure("google", response_tokens=50)
        sim.reset()
        assert sim.config()["google"]["response_tokens"] == 5


async def test_in_process_simulator():
    """The embedded form: a Simulator in the caller's own event loop."""
    sim = Simulator({"*": {"response_tokens": 4}})
    await sim.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"{sim.base_url}/v1/messages",
                json={"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "in process"}]},
                headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
            )
        assert r.json()["content"][0]["text"] == "Simulated anthropic reply to:"
        assert sim.configure("openai", mode="error")["openai"]["mode"] == "error"
    finally:
        await sim.close()
