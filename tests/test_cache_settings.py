"""CACHE_TTL_SECONDS and SEMANTIC_THRESHOLD reach the cache of a running gateway.

Each setting is checked by behaviour a client sees, so these fail if the
setting stops reaching the cache (e.g. a constant in its place): an entry
that outlives a 1 s TTL, or a paraphrase whose fate does not move with the
threshold. The pairs come from tests/data/cache_pairs.jsonl, chosen by their
verifier similarity (the default MiniLM verifier): Hamlet ~0.94 (a hit at
the default 0.85, a miss at 0.99), pancakes ~0.81 (a miss at 0.85, a hit at
0.75).
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.harness import ADMIN_KEY, API_KEY, running_gateway, simulator_env

HIGH_SIMILARITY = ("Summarize the plot of Hamlet.", "Could you please summarize the plot of Hamlet?")
# A paraphrase MiniLM scores 0.835 on the veto scale (cosine 0.75): a hit at 0.75, a miss at 0.85.
LOW_SIMILARITY = ("How do I find the length of a list in Python?", "Get the number of elements in a Python list.")


async def ask(http, gw, text: str, namespace: str) -> tuple[str, float | None]:
    """The x-cache status and similarity of one request."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    headers = {"Authorization": f"Bearer {API_KEY}", "x-gateway-cache-namespace": namespace}
    async with http.post(gw.url + "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        await r.read()
        similarity = r.headers.get("x-cache-similarity")
        return r.headers["x-cache"], None if similarity is None else float(similarity)


async def settings(http, gw) -> dict:
    async with http.get(gw.url + "/admin/cache", headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:
        assert r.status == 200
        return orjson.loads(await r.read())


def gateway(sim, **env: str):
    return running_gateway(simulator_env(sim.base_url) | env)


@pytest.fixture(scope="module")
def gw_default(sim):
    with gateway(sim) as gw:
        yield gw


@pytest.fixture(scope="module")
def gw_strict(sim):
    with gateway(sim, SEMANTIC_THRESHOLD="0.99", CACHE_TTL_SECONDS="1") as gw:
        yield gw


@pytest.fixture(scope="module")
def gw_loose(sim):
    with gateway(sim, SEMANTIC_THRESHOLD="0.75") as gw:
        yield gw


async def test_cache_ttl_seconds_is_how_long_an_entry_lives(gw_strict, gw_default, sim, http):
    q = "Give me a one-line fact about otters."
    assert (await ask(http, gw_strict, q, "ttl"))[0] == "miss"
    assert (await ask(http, gw_strict, q, "ttl"))[0] == "hit"
    assert (await ask(http, gw_default, q, "ttl"))[0] == "miss"
    await asyncio.sleep(1.5)
    assert (await ask(http, gw_strict, q, "ttl"))[0] == "miss"  # expired after CACHE_TTL_SECONDS=1
    assert (await ask(http, gw_default, q, "ttl"))[0] == "hit"  # the default (3600 s) keeps it
    assert (await settings(http, gw_strict))["ttl_seconds"] == 1


async def test_a_higher_semantic_threshold_turns_a_paraphrase_hit_into_a_miss(gw_default, gw_strict, http):
    stored, para = HIGH_SIMILARITY
    assert (await ask(http, gw_default, stored, "high"))[0] == "miss"
    status, similarity = await ask(http, gw_default, para, "high")
    assert status == "semantic-hit" and 0.85 <= similarity < 0.99
    assert (await ask(http, gw_strict, stored, "high"))[0] == "miss"
    assert await ask(http, gw_strict, para, "high") == ("miss", None)  # SEMANTIC_THRESHOLD=0.99
    assert (await ask(http, gw_strict, stored, "high"))[0] == "hit"  # it was stored: only the threshold said no
    assert (await settings(http, gw_strict))["semantic_threshold"] == 0.99


async def test_a_lower_semantic_threshold_turns_a_miss_into_a_paraphrase_hit(gw_default, gw_loose, http):
    stored, para = LOW_SIMILARITY
    assert (await ask(http, gw_default, stored, "low"))[0] == "miss"
    assert await ask(http, gw_default, para, "low") == ("miss", None)
    assert (await ask(http, gw_loose, stored, "low"))[0] == "miss"
    status, similarity = await ask(http, gw_loose, para, "low")
    assert status == "semantic-hit" and 0.75 <= similarity < 0.85  # SEMANTIC_THRESHOLD=0.75
    assert (await settings(http, gw_loose))["semantic_threshold"] == 0.75
