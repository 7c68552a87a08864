"""The semantic tier's miss path (issue 16): stores indexed in batches by the writer, the HNSW searches
of concurrent lookups answered together, what close() does with stores still queued."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.cache import Cache
from gateway.cache.index import SMALL, Shard, VectorIndex
from tests.test_cache import cache  # noqa: F401 - the fixture: a started in-memory cache
from tests.test_cache_helpers import chat, completion, config, eventually

FILLER = "Tell me fact number {i} about the benchmark run abcdef"
ORIGINAL, REWORDING = "What is the population of Japan?", "How many people live in Japan?"


async def _miss_and_store(c: Cache, text: str, answer: str) -> None:
    req = chat(text)
    assert (await c.lookup(req)).status == "miss"
    c.store(req, completion(answer))


async def _crowd(c: Cache, n: int = SMALL + 72) -> None:
    """n unique short prompts in the default scope, concurrently: its static shard is HNSW."""
    await asyncio.gather(*(_miss_and_store(c, FILLER.format(i=i), f"filler {i}") for i in range(n)))
    await c.drain()
    assert c.entries.sindex.hnsw_shards() == 1


async def test_a_store_is_found_by_a_rewording_soon_after_without_draining(cache):
    """Stored off the request's path (the writer task), found through the static index (the two
    prompts share no content key), in an HNSW shard, without anyone waiting for the writer."""
    await _crowd(cache)
    await _miss_and_store(cache, ORIGINAL, "About 124 million.")
    r, _ = await eventually(lambda: cache.lookup(chat(REWORDING)), timeout=5.0, interval=0.01)
    assert r.status == "semantic-hit", r.status
    assert r.response["choices"][0]["message"]["content"] == "About 124 million."


async def test_a_burst_of_concurrent_misses_is_all_stored_and_indexed(cache):
    n = 400
    await _crowd(cache, n)
    s = cache.stats()
    assert s["stores"] == n and s["store_dropped"] == 0 and s["entries"] == n
    assert s["index"]["static_vectors"] == n
    # Each one is in the static index under its own label (its own vector's nearest neighbours).
    ent, static = cache.entries, cache.semantic.static
    scope = next(iter(ent.sindex.shards))
    found = 0
    for i in range(0, n, 7):
        e = ent.by_key.get(cache._state(chat(FILLER.format(i=i))).view.exact)
        assert e is not None and e.indexed
        labels = [label for label, _ in ent.sindex.search(scope, static.vector(e.text), 4)]
        found += e.label in labels
    assert found >= 0.95 * len(range(0, n, 7))
    # And a stored filler is an exact hit.
    assert (await cache.lookup(chat(FILLER.format(i=3)))).status == "hit"


async def test_concurrent_lookups_share_one_index_search(cache):
    await _crowd(cache)
    idx = cache.stats()["index"]
    before = idx["hnsw_searches"], idx["hnsw_search_calls"]
    queries = [f"Tell me fact number {i} about the other run xyz" for i in range(16)]
    results = await asyncio.gather(*(cache.lookup(chat(q)) for q in queries))
    assert all(r.status == "miss" for r in results)
    idx = cache.stats()["index"]
    assert idx["hnsw_searches"] - before[0] == 16
    assert idx["hnsw_search_calls"] - before[1] == 1
    # One at a time: one call each.
    for q in queries[:3]:
        await cache.lookup(chat(q + " again"))
    assert cache.stats()["index"]["hnsw_search_calls"] - before[1] == 4


async def test_a_failing_batched_search_gives_misses_not_errors(cache, monkeypatch):
    await _crowd(cache)

    def broken(self, vecs, k):
        raise RuntimeError("index broke")

    monkeypatch.setattr(Shard, "search_many", broken)
    errors = cache.semantic.errors
    results = await asyncio.gather(*(cache.lookup(chat(f"Tell me fact number {i} about run qq")) for i in range(3)))
    assert [r.status for r in results] == ["miss"] * 3
    assert cache.semantic.errors == errors + 3


async def test_a_lookup_cancelled_while_its_search_waits_does_not_break_the_others(cache):
    await _crowd(cache)
    await _miss_and_store(cache, ORIGINAL, "About 124 million.")
    await cache.drain()
    gone = asyncio.create_task(cache.lookup(chat("Tell me fact number 5 about the run that left")))
    await asyncio.sleep(0)  # it has queued its search
    gone.cancel()
    r = await cache.lookup(chat(REWORDING))
    assert r.status == "semantic-hit"
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_close_stores_what_is_queued():
    c = Cache(config(), None)
    await c.start()
    for i in range(50):
        await _miss_and_store(c, FILLER.format(i=i), f"filler {i}")
    await c.close()  # no drain: close lets the writer finish
    assert c.stats()["stores"] == 50 and c.stats()["store_dropped"] == 0


async def test_close_counts_the_stores_it_could_not_wait_for(monkeypatch):
    c = Cache(config(), None)
    await c.start()
    writer = next(t for t in c._tasks if t.get_name() == "cache-writer")
    writer.cancel()  # a writer that never gets to them
    await asyncio.sleep(0)
    for i in range(5):
        await _miss_and_store(c, FILLER.format(i=i), f"filler {i}")
    monkeypatch.setattr(Cache, "CLOSE_WAIT_SECONDS", 0.05)
    await c.close()
    s = c.stats()
    assert s["stores"] == 0 and s["store_dropped"] == 5 and s["store_dropped_at_close"] == 5


def test_shard_add_many_is_add_one_by_one():
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((SMALL + 100, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    one, many = VectorIndex(32), VectorIndex(32)
    for i in range(40):
        one.add("s", i + 1, vecs[i])
    many.add_many("s", list(range(1, 41)), list(vecs[:40]))  # small mode
    for i in range(40, len(vecs)):
        one.add("s", i + 1, vecs[i])
    many.add_many("s", list(range(41, len(vecs) + 1)), list(vecs[40:]))  # promoted to HNSW on the way
    assert len(one) == len(many) == len(vecs) and many.hnsw_shards() == 1
    # A label added again replaces its vector; the batch is answered per query.
    many.add_many("s", [1, 2], [vecs[100], vecs[101]])
    assert len(many) == len(vecs)
    res = many.shards["s"].search_many([vecs[100], vecs[5]], 2)
    assert {label for label, _ in res[0]} >= {1} and res[1][0][0] == 6
    assert res[1][0][1] == pytest.approx(1.0, abs=0.02)
    for q in (vecs[7], vecs[150]):
        assert one.search("s", q, 1)[0][0] == many.search("s", q, 1)[0][0]
