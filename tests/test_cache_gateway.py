"""The response cache end to end: the real ``gateway serve`` over HTTP, the simulator as provider, real Redis.

No mocks. Every assertion is about what a client sees (status, ``x-cache``,
``x-cache-similarity``, the body, the SSE stream) and what the provider saw
(the simulator's request counter proves a hit never reached it), so each test
fails if the cache is unwired from the pipeline, the app, or Redis.

* module gateway (one worker, no Redis): exact and semantic hits, near misses,
  namespaces, TTL, Cache-Control, bad headers, streaming, admin;
* two gateway processes on the session Redis (unique ``redis_prefix`` in a
  ``[cache]`` TOML table): convergence, restart warm-up;
* two gateway processes on a private redis-server that is killed mid-run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis

from gateway.simulator import SimulatorProcess
from tests.harness import ADMIN_KEY, API_KEY, running_gateway, simulator_env
from tests.redis_server import RedisServer, own_redis_server

MODEL = "gpt-4o-mini"
PATH = "/v1/chat/completions"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
USER = {"Authorization": f"Bearer {API_KEY}"}

# From tests/data/cache_pairs.jsonl: a paraphrase (label "hit") the default embedder and guard accept
# (MiniLM ~0.94 against 0.85), and a near miss (label "miss") that must never be served the other's answer.
PARAPHRASE = ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?")
NEAR_MISS = ("How do I reverse a list in Python?", "How do I sort a list in Python?")


# --- helpers ---------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict
    raw: bytes
    data: dict | None = None  # non-streaming body (or an error body)
    chunks: list[dict] = field(default_factory=list)  # streaming: the data: payloads, [DONE] excluded
    done: bool = False  # streaming: the last data: payload was [DONE]

    @property
    def cache(self) -> str | None:
        return self.headers.get("x-cache")

    @property
    def content(self) -> str:
        if self.data is not None:
            return self.data["choices"][0]["message"]["content"]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in self.chunks if c.get("choices"))


def body(text: str, *, system: str | None = None, model: str = MODEL, stream: bool = False, usage: bool = False,
         **extra) -> dict:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    msgs.append({"role": "user", "content": text})
    b = {"model": model, "messages": msgs, **extra}
    if stream:
        b["stream"] = True
        if usage:
            b["stream_options"] = {"include_usage": True}
    return b


def sse(raw: bytes) -> tuple[list[dict], bool]:
    payloads = [e[len(b"data: "):] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]
    done = bool(payloads) and payloads[-1] == b"[DONE]"
    return [orjson.loads(p) for p in payloads if p != b"[DONE]"], done


async def ask(http: aiohttp.ClientSession, url: str, text: str, *, headers: dict | None = None,
              key: str = API_KEY, **kw) -> Answer:
    h = {"Authorization": f"Bearer {key}", **(headers or {})}
    async with http.post(url + PATH, json=body(text, **kw), headers=h) as r:
        raw = await r.read()
        ans = Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, raw)
        ctype = r.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        ans.chunks, ans.done = sse(raw)
    else:
        ans.data = orjson.loads(raw)
    return ans


def upstream(sim: SimulatorProcess) -> int:
    """Requests the provider (OpenAI wire format: gpt-4o-mini) received since the last reset."""
    return sim.stats()["providers"]["openai"]["requests"]


async def admin_stats(http, url: str) -> dict:
    async with http.get(url + "/admin/cache", headers=ADMIN) as r:
        assert r.status == 200, await r.text()
        return orjson.loads(await r.read())


async def ready(http, url: str) -> dict:
    async with http.get(url + "/ready") as r:
        assert r.status == 200, await r.text()  # Redis down is "degraded", never 503
        return orjson.loads(await r.read())


async def until(check, timeout: float, interval: float = 0.05):
    """Await ``check()`` until truthy; return (value, seconds) — value falsy on timeout."""
    t0 = time.monotonic()
    while True:
        value = await check()
        if value or time.monotonic() - t0 > timeout:
            return value, time.monotonic() - t0
        await asyncio.sleep(interval)


def openai_error(ans: Answer, status: int, code: str) -> dict:
    assert ans.status == status, ans.raw
    assert ans.headers["content-type"].startswith("application/json")
    err = ans.data["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["type"] == "invalid_request_error" and err["code"] == code
    return err


def cache_toml(tmp_path: Path, prefix: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(
        "[cache]\n"
        f'redis_prefix = "{prefix}"\n'
        "redis_retry_seconds = 0.1\n"
        "redis_timeout_seconds = 0.5\n"
        "sweep_seconds = 0.2\n"
    )
    return str(path)


def drop_prefix(url: str, prefix: str) -> None:
    r = redis.Redis.from_url(url)
    try:
        keys = list(r.scan_iter(match=prefix + "*", count=1000))
        if keys:
            r.unlink(*keys)
    finally:
        r.close()


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess() as s:
        yield s


@pytest.fixture(scope="module")
def gw(sim):
    """One worker, cache on (defaults: minilm, 0.85), no Redis."""
    with running_gateway(simulator_env(sim.base_url) | {"GATEWAY_STREAM_PING_SECONDS": "0.5"}) as g:
        yield g


@pytest.fixture(autouse=True)
def _reset(sim):
    sim.reset()
    yield


@pytest.fixture
async def fresh_http():
    """A new connection per request: with several workers, each request may land on any of them."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


# --- exact and semantic tiers ----------------------------------------------------------------------


async def test_exact_hit_is_served_without_the_provider(gw, sim, http):
    first = await ask(http, gw.url, "List three primary colours.")
    assert first.status == 200 and first.cache == "miss"
    assert first.headers["x-gateway-provider"] == "openai"
    second = await ask(http, gw.url, "List three primary colours.")
    assert second.status == 200 and second.cache == "hit"
    assert "x-cache-similarity" not in second.headers
    assert "x-gateway-provider" not in second.headers  # no provider was involved
    assert second.content == first.content and "primary colours" in second.content
    assert second.data["usage"] == first.data["usage"]
    assert second.data["object"] == "chat.completion" and second.data["id"] != first.data["id"]
    assert upstream(sim) == 1


async def test_semantic_hit_for_a_paraphrase(gw, sim, http):
    a, b = PARAPHRASE
    first = await ask(http, gw.url, a)
    assert first.cache == "miss"
    para = await ask(http, gw.url, b)
    assert para.status == 200 and para.cache == "semantic-hit", para.headers
    threshold = (await admin_stats(http, gw.url))["semantic_threshold"]
    assert threshold == 0.85
    assert threshold <= float(para.headers["x-cache-similarity"]) <= 1.0
    assert para.content == first.content  # the stored answer, which echoes prompt a, not b
    assert "Pride and Prejudice" in para.content and "author" not in para.content
    # The paraphrase is now an exact alias.
    again = await ask(http, gw.url, b)
    assert again.cache == "hit" and again.content == first.content
    assert upstream(sim) == 1


async def test_near_miss_is_not_served_the_other_answer(gw, sim, http):
    stored, other = NEAR_MISS
    assert (await ask(http, gw.url, stored)).cache == "miss"
    near = await ask(http, gw.url, other)
    assert near.status == 200 and near.cache == "miss", near.headers
    assert "x-cache-similarity" not in near.headers
    assert "sort a list" in near.content and "reverse" not in near.content
    assert upstream(sim) == 2


# --- scope: namespaces, system prompt, model -------------------------------------------------------


async def test_namespaces_isolate(gw, sim, http):
    q = "Name the largest planet in the solar system."
    ns_a = {"x-gateway-cache-namespace": "team-a"}
    ns_b = {"x-gateway-cache-namespace": "team_b.v2"}
    assert (await ask(http, gw.url, q, headers=ns_a)).cache == "miss"
    assert (await ask(http, gw.url, q, headers=ns_b)).cache == "miss"  # not team-a's entry
    assert (await ask(http, gw.url, q)).cache == "miss"  # nor the default namespace's
    assert (await ask(http, gw.url, q, headers=ns_a)).cache == "hit"
    assert (await ask(http, gw.url, q, headers=ns_b)).cache == "hit"
    assert upstream(sim) == 3
    # A paraphrase does not cross namespaces either (and does hit inside its own).
    a, b = PARAPHRASE
    ns_c = {"x-gateway-cache-namespace": "team-c"}
    assert (await ask(http, gw.url, a, headers=ns_c)).cache == "miss"
    assert (await ask(http, gw.url, b, headers={"x-gateway-cache-namespace": "team-d"})).cache == "miss"
    assert (await ask(http, gw.url, b, headers=ns_c)).cache == "semantic-hit"


async def test_system_prompt_and_model_are_part_of_the_key(gw, sim, http):
    q = "What does HTTP stand for?"
    assert (await ask(http, gw.url, q, system="You are terse.")).cache == "miss"
    assert (await ask(http, gw.url, q, system="You are terse.")).cache == "hit"
    other_system = await ask(http, gw.url, q, system="You are a pirate.")
    assert other_system.cache == "miss"  # not a semantic hit either: the system prompt is the scope
    assert (await ask(http, gw.url, q, system="You are terse.", model="gpt-4o")).cache == "miss"
    assert (await ask(http, gw.url, q, system="You are terse.", max_tokens=5)).cache == "miss"
    assert upstream(sim) == 4


# --- controls --------------------------------------------------------------------------------------


async def test_ttl_header_expires_the_entry(gw, sim, http):
    q = "Give me a one-line fact about owls."
    short = {"x-gateway-cache-ttl": "1"}
    assert (await ask(http, gw.url, q, headers=short)).cache == "miss"
    assert (await ask(http, gw.url, q)).cache == "hit"
    await asyncio.sleep(1.5)
    assert (await ask(http, gw.url, q)).cache == "miss"
    assert upstream(sim) == 2
    # The last request was stored with the default TTL: still there.
    assert (await ask(http, gw.url, q)).cache == "hit"


async def test_no_cache_skips_lookup_but_stores(gw, sim, http):
    q = "Spell the word necessary backwards."
    nc = {"Cache-Control": "no-cache"}
    first = await ask(http, gw.url, q, headers=nc)
    assert first.status == 200 and first.cache in ("bypass", "miss")
    assert (await ask(http, gw.url, q)).cache == "hit"  # it was stored
    assert (await ask(http, gw.url, q, headers=nc)).cache in ("bypass", "miss")  # a stored answer is not used
    assert upstream(sim) == 2
    assert (await ask(http, gw.url, q)).cache == "hit"


async def test_no_store_neither_looks_up_nor_stores(gw, sim, http):
    q = "Name a prime number larger than 100."
    ns = {"Cache-Control": "no-store"}
    assert (await ask(http, gw.url, q, headers=ns)).cache == "bypass"
    assert (await ask(http, gw.url, q)).cache == "miss"  # nothing was stored
    assert (await ask(http, gw.url, q, headers=ns)).cache == "bypass"  # a stored answer is not used
    assert (await ask(http, gw.url, q, headers={"Cache-Control": "private, no-store"})).cache == "bypass"
    assert upstream(sim) == 4


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "header,value,code",
    [
        ("x-gateway-cache-ttl", "0", "invalid_cache_ttl"),
        ("x-gateway-cache-ttl", "-5", "invalid_cache_ttl"),
        ("x-gateway-cache-ttl", "soon", "invalid_cache_ttl"),
        ("x-gateway-cache-ttl", "1.5", "invalid_cache_ttl"),
        ("x-gateway-cache-ttl", str(7 * 86_400 + 1), "invalid_cache_ttl"),
        ("x-gateway-cache-namespace", "has space", "invalid_cache_namespace"),
        ("x-gateway-cache-namespace", "a/b", "invalid_cache_namespace"),
        ("x-gateway-cache-namespace", "x" * 65, "invalid_cache_namespace"),
        ("x-gateway-cache-namespace", "", "invalid_cache_namespace"),
    ],
)
async def test_bad_cache_header_is_400(gw, sim, http, header, value, code, stream):
    ans = await ask(http, gw.url, "Is this request valid?", headers={header: value}, stream=stream)
    err = openai_error(ans, 400, code)
    assert header in err["message"]
    assert upstream(sim) == 0


async def test_non_deterministic_request_bypasses(gw, sim, http):
    q = "Invent a name for a new colour."
    for _ in range(2):
        ans = await ask(http, gw.url, q, temperature=1.5)
        assert ans.status == 200 and ans.cache == "bypass"
    assert upstream(sim) == 2
    # Its answer was not stored for the deterministic request either.
    assert (await ask(http, gw.url, q, temperature=0)).cache == "miss"
    assert (await ask(http, gw.url, q, temperature=0)).cache == "hit"


# --- streaming -------------------------------------------------------------------------------------


def assert_replayed_stream(ans: Answer, content: str, usage: dict | None) -> None:
    assert ans.status == 200 and ans.headers["content-type"].startswith("text/event-stream")
    assert ans.done, "the stream must end with data: [DONE]"
    chunks = ans.chunks
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    first = chunks[0]["choices"][0]
    assert first["delta"]["role"] == "assistant" and first["index"] == 0 and first["finish_reason"] is None
    assert ans.content == content
    with_choices = [c for c in chunks if c["choices"]]
    finishes = [c["choices"][0]["finish_reason"] for c in with_choices if c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"] and with_choices[-1]["choices"][0]["finish_reason"] == "stop"
    if usage is None:
        assert all(c["choices"] for c in chunks)
    else:
        last = chunks[-1]
        assert last["choices"] == [] and last["usage"] == usage


async def test_streamed_miss_is_stored_and_replayed_as_sse(gw, sim, http):
    q = "Describe a sunrise over the sea in one sentence."
    live = await ask(http, gw.url, q, stream=True, usage=True)
    assert live.status == 200 and live.cache == "miss" and live.done
    usage = live.chunks[-1]["usage"]
    assert live.chunks[-1]["choices"] == [] and usage["completion_tokens"] > 0
    replay = await ask(http, gw.url, q, stream=True, usage=True)
    assert replay.cache == "hit"
    assert_replayed_stream(replay, live.content, usage)
    # Without include_usage: no usage chunk.
    plain = await ask(http, gw.url, q, stream=True)
    assert plain.cache == "hit"
    assert_replayed_stream(plain, live.content, None)
    # A non-streaming request gets what the stream stored.
    rest = await ask(http, gw.url, q)
    assert rest.cache == "hit" and rest.content == live.content
    assert rest.data["choices"][0]["finish_reason"] == "stop" and rest.data["usage"] == usage
    assert upstream(sim) == 1


async def test_stream_hits_what_a_plain_request_stored(gw, sim, http):
    q = "Describe a thunderstorm in one sentence."
    rest = await ask(http, gw.url, q)
    assert rest.cache == "miss"
    replay = await ask(http, gw.url, q, stream=True, usage=True)
    assert replay.cache == "hit"
    assert_replayed_stream(replay, rest.content, rest.data["usage"])
    # A paraphrase streams the same stored answer as a semantic hit.
    a, b = ("How does photosynthesis work?", "Explain how photosynthesis works.")
    assert (await ask(http, gw.url, a)).cache == "miss"
    sem = await ask(http, gw.url, b, stream=True, usage=True)
    assert sem.cache == "semantic-hit" and float(sem.headers["x-cache-similarity"]) >= 0.85
    assert "photosynthesis work" in sem.content and sem.done
    assert upstream(sim) == 2


async def _cut_stream(http, url: str, q: str, after_chunks: int, cut) -> bytes:
    """Start a slow stream, run ``cut()`` after a few content chunks, read what is left."""
    got = b""
    async with http.post(url + PATH, json=body(q, stream=True, usage=True), headers=USER) as r:
        assert r.status == 200 and r.headers["x-cache"] == "miss"
        seen = 0
        while seen < after_chunks:
            line = await asyncio.wait_for(r.content.readline(), 5)
            assert line, "stream ended before it could be cut"
            got += line
            seen += line.startswith(b"data: ") and b'"content"' in line
        if await cut(r):
            return got
        try:
            got += await asyncio.wait_for(r.read(), 10)
        except aiohttp.ClientPayloadError:
            pass
    return got


async def test_stream_cut_by_the_provider_is_not_cached(gw, sim, http):
    q = "Write a long paragraph about the history of bread."
    sim.configure("openai", tokens_per_second=25)  # 30 words: 1.2 s
    before = (await admin_stats(http, gw.url))["stores"]

    async def provider_drops(_r):
        await asyncio.to_thread(sim.configure, "*", mode="refuse")  # every provider refuses: connections dropped
        return False

    try:
        got = await _cut_stream(http, gw.url, q, 3, provider_drops)
    finally:
        sim.configure("*", mode="ok", tokens_per_second=0)
    chunks, done = sse(got)
    assert not any(c.get("choices") and c["choices"][0].get("finish_reason") for c in chunks), "the stream was not cut"
    assert done and "error" in chunks[-1], chunks[-1]  # the client was told: an error event, then [DONE]
    await asyncio.sleep(0.3)  # the writer would have stored it by now
    assert (await admin_stats(http, gw.url))["stores"] == before
    after = await ask(http, gw.url, q)
    assert after.status == 200 and after.cache == "miss"


async def test_stream_left_by_the_client_is_not_cached(gw, sim, http):
    q = "Write a long paragraph about the history of cheese."
    sim.configure("openai", tokens_per_second=25)
    before = (await admin_stats(http, gw.url))["stores"]

    async def client_leaves(r):
        r.close()
        return True

    await _cut_stream(http, gw.url, q, 3, client_leaves)
    await asyncio.sleep(0.3)
    assert (await admin_stats(http, gw.url))["stores"] == before
    sim.configure("openai", tokens_per_second=0)
    after = await ask(http, gw.url, q, stream=True, usage=True)
    assert after.cache == "miss" and after.done
    assert (await ask(http, gw.url, q)).cache == "hit"  # the complete stream was stored


# --- admin -----------------------------------------------------------------------------------------


async def test_admin_stats_need_an_admin_key(gw, http):
    async with http.get(gw.url + "/admin/cache", headers=USER) as r:
        assert r.status == 403
        assert set(orjson.loads(await r.read())["error"]) == {"message", "type", "param", "code"}
    async with http.get(gw.url + "/admin/cache") as r:
        assert r.status == 401
    async with http.post(gw.url + "/admin/cache/flush", json={}, headers=USER) as r:
        assert r.status == 403
    q = "Count from one to three."
    before = await admin_stats(http, gw.url)
    await ask(http, gw.url, q)
    await ask(http, gw.url, q)
    await ask(http, gw.url, q, headers={"Cache-Control": "no-store"})
    after = await admin_stats(http, gw.url)
    assert after["enabled"] is True and after["embedder"] == "minilm"
    assert after["hits"] == before["hits"] + 1
    assert after["misses"] == before["misses"] + 1
    assert after["bypasses"] == before["bypasses"] + 1
    assert after["stores"] == before["stores"] + 1
    assert after["redis"]["configured"] is False


async def test_flush_namespace_then_everything(gw, sim, http):
    q = "What colour is a ripe banana?"
    fa = {"x-gateway-cache-namespace": "flush-a"}
    fb = {"x-gateway-cache-namespace": "flush-b"}
    await ask(http, gw.url, q, headers=fa)
    await ask(http, gw.url, q, headers=fb)
    assert (await ask(http, gw.url, q, headers=fa)).cache == "hit"
    async with http.post(gw.url + "/admin/cache/flush", json={"namespace": "flush-a"}, headers=ADMIN) as r:
        assert r.status == 200
        out = orjson.loads(await r.read())
    assert out["flushed"] == "flush-a" and out["removed"] >= 1
    assert (await ask(http, gw.url, q, headers=fa)).cache == "miss"
    assert (await ask(http, gw.url, q, headers=fb)).cache == "hit"  # other namespaces stay
    async with http.post(gw.url + "/admin/cache/flush", json={}, headers=ADMIN) as r:
        assert r.status == 200 and orjson.loads(await r.read())["flushed"] == "*"
    assert (await ask(http, gw.url, q, headers=fb)).cache == "miss"
    assert (await admin_stats(http, gw.url))["entries"] == 1  # only what was stored since
    assert upstream(sim) == 4


@pytest.mark.parametrize(
    "payload",
    [
        {"namespace": "bad name!"},
        {"namespace": ""},
        {"namespace": 5},
        {"namespace": ["a"]},
    ],
)
async def test_flush_with_a_bad_namespace_is_400(gw, http, payload):
    async with http.post(gw.url + "/admin/cache/flush", json=payload, headers=ADMIN) as r:
        raw = await r.read()
        status = r.status
    assert status == 400, raw
    assert set(orjson.loads(raw)["error"]) == {"message", "type", "param", "code"}


# --- Redis: several workers and processes ----------------------------------------------------------


def redis_env(sim, url: str, toml: str) -> dict:
    return simulator_env(sim.base_url) | {"REDIS_URL": url, "GATEWAY_CONFIG": toml}


async def test_processes_and_workers_converge_and_warm_up_through_redis(sim, http, fresh_http, redis_url,
                                                                       redis_prefix, tmp_path):
    env = redis_env(sim, redis_url, cache_toml(tmp_path, redis_prefix))
    q = "Name the three states of matter."
    a_para, b_para = PARAPHRASE
    try:
        with running_gateway(env, workers=2) as a, running_gateway(env) as b:
            for g in (a, b):
                assert (await ready(http, g.url))["redis"] == "up"
            first = await ask(http, a.url, q)
            assert first.cache == "miss"
            assert (await ask(http, a.url, a_para)).cache == "miss"
            # B learns both from the stream (no request reaches B until then: a miss there would store).
            got, took = await until(lambda: _entries_at_least(http, b.url, 2), timeout=1.0)
            assert got, f"gateway B did not receive A's entries within 1 s ({took:.2f} s)"
            hit = await ask(http, b.url, q)
            assert hit.cache == "hit" and hit.content == first.content
            sem = await ask(http, b.url, b_para)  # the mirrored entry carries its vector
            assert sem.cache == "semantic-hit" and "Pride and Prejudice" in sem.content
            # And back: a store through B reaches both of A's workers.
            q2 = "Name the four seasons."
            assert (await ask(http, b.url, q2)).cache == "miss"
            got, took = await until(lambda: _entries_at_least(http, a.url, 3), timeout=1.0)
            assert got, "gateway A did not receive B's entry within 1 s"
            await asyncio.sleep(0.2)  # let A's other worker read the event too
            for _ in range(6):  # a fresh connection each time: either worker may answer
                assert (await ask(fresh_http, a.url, q2)).cache == "hit"
                assert (await ask(fresh_http, a.url, q)).cache == "hit"
            assert upstream(sim) == 3
            b.stop()
            # Restart warm-up: a new process on the same Redis and prefix loads every live entry at start.
            with running_gateway(env) as c:
                for text in (q, q2, a_para):
                    assert (await ask(http, c.url, text)).cache == "hit", text
                assert (await ask(http, c.url, b_para)).cache == "semantic-hit"
                loaded = (await admin_stats(http, c.url))["redis"]["loaded"]
                assert loaded >= 3
            assert upstream(sim) == 3
    finally:
        drop_prefix(redis_url, redis_prefix)


async def _entries_at_least(http, url: str, n: int) -> bool:
    return (await admin_stats(http, url))["entries"] >= n


async def test_redis_outage_degrades_then_mirror_resumes(sim, http, redis_prefix, tmp_path):
    with own_redis_server() as server:
        env = redis_env(sim, server.url, cache_toml(tmp_path, redis_prefix))
        with running_gateway(env) as a, running_gateway(env) as b:
            for g in (a, b):
                r = await ready(http, g.url)
                assert r["status"] == "ready" and r["redis"] == "up"
            q1 = "What is the freezing point of water in Celsius?"
            assert (await ask(http, a.url, q1)).cache == "miss"
            assert (await until(lambda: _entries_at_least(http, b.url, 1), timeout=1.0))[0]

            server.stop()  # Redis dies mid-run
            outage = [f"Name a famous bridge in city number {i}." for i in range(5)]
            for text in outage:
                assert (await ask(http, a.url, text)).status == 200
            for text in outage + [q1]:  # the local tier keeps serving
                ans = await ask(http, a.url, text)
                assert ans.status == 200 and ans.cache == "hit"
            for g in (a, b):
                got, _ = await until(lambda g=g: _redis_is(http, g.url, "down"), timeout=3.0)
                assert got, "/ready did not report Redis down"
                r = await ready(http, g.url)
                assert r["status"] == "degraded" and r["redis"] == "down"
            stats = await admin_stats(http, a.url)
            assert stats["redis"]["up"] is False and stats["redis"]["errors"] >= 1
            assert stats["redis"]["last_error"]
            assert stats["redis"]["backlog"] >= len(outage)

            server.start()  # same port, empty (no persistence)
            for g in (a, b):
                got, took = await until(lambda g=g: _redis_is(http, g.url, "up"), timeout=5.0)
                assert got, f"the cache did not reconnect to Redis ({took:.1f} s)"
                assert (await ready(http, g.url))["status"] == "ready"
            # What A stored while Redis was down (its backlog, replayed on reconnection) reaches B:
            # B holds q1 and the five outage answers, and no request has been sent to B meanwhile.
            got, took = await until(lambda: _entries_at_least(http, b.url, 1 + len(outage)), timeout=2.0)
            assert got, "A's backlog from the outage never reached B"
            assert (await admin_stats(http, a.url))["redis"]["backlog"] == 0
            # A store made after the restart reaches the other process.
            q2 = "What is the boiling point of water in Fahrenheit?"
            assert (await ask(http, a.url, q2)).cache == "miss"
            got, took = await until(lambda: _entries_at_least(http, b.url, 2 + len(outage)), timeout=1.0)
            assert got, f"the mirror did not resume: B never got A's post-restart store ({took:.2f} s)"
            assert (await ask(http, b.url, q2)).cache == "hit"
            for text in outage:
                assert (await ask(http, b.url, text)).cache == "hit", text
            assert upstream(sim) == 2 + len(outage)


async def _redis_is(http, url: str, state: str) -> bool:
    return (await ready(http, url))["redis"] == state


async def test_flush_made_while_a_worker_is_disconnected_reaches_it(sim, http, redis_prefix, tmp_path):
    server = RedisServer(persistent=True)
    server.start()
    fast = tmp_path / "fast.toml"
    slow = tmp_path / "slow.toml"
    fast.write_text(f'[cache]\nredis_prefix = "{redis_prefix}"\nredis_retry_seconds = 0.1\n')
    slow.write_text(f'[cache]\nredis_prefix = "{redis_prefix}"\nredis_retry_seconds = 2.5\n')
    ns = {"x-gateway-cache-namespace": "gone"}
    q = "Name a river in Africa."
    try:
        with running_gateway(redis_env(sim, server.url, str(fast))) as a, \
                running_gateway(redis_env(sim, server.url, str(slow))) as b:
            assert (await ask(http, a.url, q, headers=ns)).cache == "miss"
            assert (await until(lambda: _entries_at_least(http, b.url, 1), timeout=1.0))[0]
            server.stop()
            for g in (a, b):
                assert (await until(lambda g=g: _redis_is(http, g.url, "down"), timeout=3.0))[0]
            server.start()  # with its data: the entry and the event stream survive
            assert (await until(lambda: _redis_is(http, a.url, "up"), timeout=2.0))[0]
            assert (await ready(http, b.url))["redis"] == "down"  # B reconnects later (2.5 s retry)
            async with http.post(a.url + "/admin/cache/flush", json={"namespace": "gone"}, headers=ADMIN) as r:
                assert r.status == 200 and orjson.loads(await r.read())["removed"] >= 1
            assert (await until(lambda: _redis_is(http, b.url, "up"), timeout=5.0))[0]
            await asyncio.sleep(0.3)
            assert (await admin_stats(http, b.url))["entries"] == 0, "B still holds the flushed namespace"
    finally:
        server.stop()
