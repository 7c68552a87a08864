"""The shared verifier: one MiniLM process for every worker (gateway/cache/verifier.py, verifier_client.py).

Real processes throughout: the verifier started as `gateway serve` starts it, clients in other
processes, `gateway serve` itself with its supervisor; deaths are real SIGKILLs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from gateway.cache import Cache
from gateway.cache.embed import MiniLMVerifier
from gateway.cache.verifier_client import SOCKET_ENV, SharedVerifier
from tests.harness import ADMIN_KEY, API_KEY, gateway_with_config, running_gateway, simulator_env
from tests.test_cache_helpers import config, lookup, store

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["What is the capital of France?", "How do I reverse a list in Python?", "hi",
           "Explain the difference between TCP and UDP in networking, with an example of each. " * 6]
STORED, PARAPHRASE = "How do I reverse a list in Python?", "How can I reverse a list in Python?"


def start_verifier(path: Path, threads: int = 2) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gateway.cache.verifier", "--socket", str(path),
                             "--threads", str(threads)], cwd=ROOT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


async def until(check, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got or time.monotonic() > deadline:
            return got
        await asyncio.sleep(step)


CLIENT = """
import asyncio, json, sys
from gateway.cache.verifier_client import SharedVerifier

async def main():
    v = SharedVerifier(sys.argv[1], timeout=30)
    for _ in range(600):
        try:
            out = await v.awindows(json.loads(sys.argv[2]))
            break
        except Exception:
            await asyncio.sleep(0.1)
    print(json.dumps({"pid": v.server_pid, "vectors": [a.astype(float).tolist() for a in out]}))

asyncio.run(main())
"""


def test_two_client_processes_get_the_in_process_models_vectors(tmp_path):
    """Two worker-like processes use one verifier at once, and get what the worker's own model gave."""
    path = tmp_path / "v.sock"
    server = start_verifier(path)
    try:
        clients = [subprocess.Popen([sys.executable, "-c", CLIENT, str(path), json.dumps(PROMPTS)], cwd=ROOT,
                                    stdout=subprocess.PIPE, text=True) for _ in range(2)]
        answers = [json.loads(c.communicate(timeout=120)[0]) for c in clients]
    finally:
        stop(server)
    local = MiniLMVerifier()
    for a in answers:
        assert a["pid"] == server.pid
        for text, got in zip(PROMPTS, a["vectors"]):
            want = local.windows(text)
            got = np.asarray(got)
            assert got.shape == want.shape, text  # the long prompt: head and tail windows
            # The first text is the query (float32); the rest come back as entries keep them (float16).
            assert np.abs(got - want).max() < (1e-6 if text == PROMPTS[0] else 2e-3), text


@pytest.fixture
def shared_env(tmp_path, monkeypatch):
    path = tmp_path / "v.sock"
    monkeypatch.setenv(SOCKET_ENV, str(path))
    return path


async def test_down_means_miss_then_it_recovers_and_survives_a_kill(shared_env):
    """No verifier: semantic lookups are quick misses (exact hits unaffected); once it listens the cache
    reconnects by itself; SIGKILLed mid-run: misses again, no error; started again: hits again."""
    c = Cache(config(), None)
    assert isinstance(c.semantic.verifier, SharedVerifier)
    await c.start()
    server = None
    try:
        await store(c, STORED, "reversed()")
        t0 = time.perf_counter()
        assert (await lookup(c, PARAPHRASE)).status == "miss"
        assert time.perf_counter() - t0 < 0.5
        assert (await lookup(c, STORED)).status == "hit"
        v = c.stats()["verifier"]
        assert v["shared"] is True and v["ready"] is False and v["connected"] is False
        assert v["unavailable"] >= 1 and "connect" in v["last_error"]

        server = start_verifier(shared_env)
        assert await until(lambda: _ready(c), timeout=60), c.stats()["verifier"]
        r = await lookup(c, PARAPHRASE)
        assert r.status == "semantic-hit" and r.similarity >= 0.85
        v = c.stats()["verifier"]
        assert v["server_pid"] == server.pid and v["graph"] == "int8" and v["connects"] == 1

        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
        para2 = "How can I reverse a Python list?"
        t0 = time.perf_counter()
        assert (await lookup(c, para2)).status == "miss"
        assert time.perf_counter() - t0 < 0.5
        assert c.stats()["verify_errors"] >= 1 and c.stats()["verifier"]["ready"] is False

        server = start_verifier(shared_env)
        assert await until(lambda: _ready(c), timeout=60), c.stats()["verifier"]
        assert (await lookup(c, "What's the way to reverse a list in Python?")).status == "semantic-hit"
        v = c.stats()["verifier"]
        assert v["server_pid"] == server.pid and v["connections_lost"] == 1 and v["connects"] == 2
    finally:
        await c.close()
        if server is not None:
            stop(server)


async def _ready(c: Cache) -> bool:
    return c.stats()["verifier"]["ready"]


async def test_a_verifier_that_never_answers_gives_misses_in_bounded_time(shared_env):
    """Listening but silent (hung): the lookup gives up after embedder_timeout_seconds, and the ones
    right after do not queue behind it."""
    silent = await asyncio.start_unix_server(lambda r, w: None, path=str(shared_env))
    c = Cache(config(embedder_timeout_seconds=0.5), None)
    await c.start()
    try:
        await store(c, STORED, "reversed()")
        t0 = time.perf_counter()
        assert (await lookup(c, PARAPHRASE)).status == "miss"
        assert time.perf_counter() - t0 < 3.5  # the hello (2 s) is what times out here
        t0 = time.perf_counter()
        assert (await lookup(c, PARAPHRASE)).status == "miss"
        assert time.perf_counter() - t0 < 3.5
        assert c.stats()["verifier"]["ready"] is False
    finally:
        await c.close()
        silent.close()


async def test_stored_prompts_are_embedded_ahead_by_the_shared_process(shared_env):
    server = start_verifier(shared_env)
    c = Cache(config(), None)
    await c.start()
    try:
        assert await until(lambda: _ready(c), timeout=60)
        await store(c, STORED, "reversed()")
        e = next(iter(c.entries.by_key.values()))
        assert await until(lambda: _has_windows(e), timeout=30)
        assert e.windows.dtype == np.float16 and c.stats()["verifier"]["pre_embedded"] == 1
        r = await lookup(c, PARAPHRASE)  # only the query is embedded now
        assert r.status == "semantic-hit"
    finally:
        await c.close()
        stop(server)


async def _has_windows(e) -> bool:
    return e.windows is not None


# --- through gateway serve ----------------------------------------------------------------------------


async def admin_cache(http, url: str) -> dict:
    async with http.get(url + "/admin/cache", headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:
        assert r.status == 200
        return orjson.loads(await r.read())


async def ask(http, url: str, text: str) -> tuple[int, str | None]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    async with http.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        await r.read()
        return r.status, r.headers.get("x-cache")


@pytest.fixture
async def fresh_http():
    """A new connection per request: with several workers, each request may land on any of them."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


async def test_gateway_serve_runs_one_verifier_for_its_workers_and_restarts_it(sim, fresh_http, http):
    with running_gateway(simulator_env(sim.base_url), workers=2) as gw:
        kids = children(gw.proc.pid)
        verifiers = [p for p in kids if b"gateway.cache.verifier" in Path(f"/proc/{p}/cmdline").read_bytes()]
        workers = [p for p in kids if p not in verifiers]
        assert len(verifiers) == 1 and len(workers) == 2, kids
        vpid = verifiers[0]
        assert "libonnxruntime" in maps(vpid)
        for p in [gw.proc.pid, *workers]:  # the model and its runtime are loaded once, in the verifier
            assert "libonnxruntime" not in maps(p), p

        seen: dict[int, dict] = {}

        async def both_ready() -> bool:
            st = await admin_cache(fresh_http, gw.url)  # a new connection each time: either worker answers
            if st["verifier"]["ready"]:
                seen[st["worker"]] = st["verifier"]
            return len(seen) == 2

        assert await until(both_ready, timeout=60, step=0.02), seen
        assert {v["server_pid"] for v in seen.values()} == {vpid}
        assert all(v["shared"] and v["graph"] == "int8" for v in seen.values())

        assert await ask(http, gw.url, STORED) == (200, "miss")
        assert await ask(http, gw.url, PARAPHRASE) == (200, "semantic-hit")  # same connection: same worker

        os.kill(vpid, signal.SIGKILL)
        statuses = [await ask(http, gw.url, f"How can I reverse list number {i} in Python?") for i in range(5)]
        assert all(s == 200 for s, _ in statuses), statuses

        async def restarted() -> bool:
            st = await admin_cache(http, gw.url)
            return st["verifier"]["ready"] and st["verifier"]["server_pid"] not in (None, vpid)

        assert await until(restarted, timeout=60, step=0.1)
        assert await ask(http, gw.url, "What's the way to reverse a list in Python?") == (200, "semantic-hit")
        assert "exited" in gw.log() and "starting it again" in gw.log()
    assert gw.proc is None
    assert not _alive(vpid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


async def test_shared_verifier_off_loads_the_model_in_each_worker(sim, http):
    with gateway_with_config("[cache]\nshared_verifier = false\n", simulator_env(sim.base_url)) as gw:
        kids = children(gw.proc.pid)
        assert not [p for p in kids if b"gateway.cache.verifier" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert await ask(http, gw.url, STORED) == (200, "miss")
        assert await ask(http, gw.url, PARAPHRASE) == (200, "semantic-hit")
        st = await admin_cache(http, gw.url)
        assert st["verifier"]["ready"] and "shared" not in st["verifier"]
        assert "libonnxruntime" in maps(kids[0])
