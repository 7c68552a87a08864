"""The default embedder and threshold against labelled prompt pairs (tests/data/paraphrase_pairs.jsonl and
paraphrase_pairs_fresh.jsonl, each split tune / held-out; the issue-4 sets tests/data/cache_pairs*.jsonl).

Each pair goes through the whole cache (index candidates, lexical guard,
verifier): prompt ``a`` is stored, then prompt ``b`` is looked up, each pair
in its own namespace. "hit" pairs are paraphrases that may share an answer;
"miss" pairs are near misses that must not ("reverse a list" / "sort a list",
other numbers, languages, directions, negations, narrower questions).

Goals (issue 4): false hits under 1 % of the semantic hits served, and at
least half of the paraphrases hit. ``cache_pairs.jsonl`` is the set the guard
and the default threshold were tuned on; ``cache_pairs_holdout.jsonl`` was
written afterwards and not tuned on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cache import Cache
from tests.test_cache_helpers import FRESH_PAIRS, PAIRS, chat, completion, config

DATA = Path(__file__).parent / "data"
# Held-out splits at the defaults, as measured (gateway/cache/README.md), so a change that loses
# paraphrases or serves one more wrong answer fails here. paraphrase_pairs.jsonl's was reported on
# several times while the veto was tuned (no longer untouched); paraphrase_pairs_fresh.jsonl's was
# measured once, after the tuning of issue 15's second pass.
HELD_OUT = {  # set: (its file, least paraphrase recall, most wrong answers served)
    "old": (PAIRS, 0.73, 0),
    "fresh": (FRESH_PAIRS, 0.61, 1),
}


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


async def run_pairs(cache: Cache, pairs: list[dict]) -> dict:
    for i, p in enumerate(pairs):
        req = chat(p["a"], headers={"x-gateway-cache-namespace": f"pair{i}"})
        await cache.lookup(req)
        cache.store(req, completion(f"answer {i}"))
    await cache.drain()
    out = {"hit_pairs": 0, "paraphrase_hits": 0, "miss_pairs": 0, "false_hits": 0, "false": [], "lost": []}
    for i, p in enumerate(pairs):
        r = await cache.lookup(chat(p["b"], headers={"x-gateway-cache-namespace": f"pair{i}"}))
        served = r.status in ("hit", "semantic-hit")
        if p["label"] == "hit":
            out["hit_pairs"] += 1
            out["paraphrase_hits"] += served
            if not served:
                out["lost"].append((p["a"], p["b"]))
        else:
            out["miss_pairs"] += 1
            if served:
                out["false_hits"] += 1
                out["false"].append((p["a"], p["b"], r.similarity))
    served = out["paraphrase_hits"] + out["false_hits"]
    out["false_hit_share"] = out["false_hits"] / served if served else 0.0
    out["paraphrase_hit_rate"] = out["paraphrase_hits"] / out["hit_pairs"]
    return out


# Issue 4's sets: the guard's own (tuned on) and its held-out set. Issue 15's veto serves more of their
# paraphrases (measured 97/102 and 41/45, was 80 and 31) and one wrong answer on the held-out one (1/76).
@pytest.mark.parametrize("name, max_false", [("cache_pairs.jsonl", 0), ("cache_pairs_holdout.jsonl", 0)])
async def test_default_embedder_on_labelled_pairs(name, max_false):
    pairs = load(name)
    assert sum(p["label"] == "hit" for p in pairs) >= 40 and sum(p["label"] == "miss" for p in pairs) >= 70
    cache = Cache(config(), None)  # the defaults: embedder minilm, threshold 0.85
    await cache.start()
    try:
        assert cache.config.embedder == "minilm" and cache.config.semantic_threshold == 0.85
        res = await run_pairs(cache, pairs)
    finally:
        await cache.close()
    print(f"\n{name}: paraphrases hit {res['paraphrase_hits']}/{res['hit_pairs']}, "
          f"false hits {res['false_hits']}/{res['miss_pairs']} near misses "
          f"({res['false_hit_share']:.1%} of served semantic hits)")
    assert res["false_hits"] <= max_false, res["false"]
    assert res["paraphrase_hit_rate"] >= 0.85, res["lost"]


async def _split(name: str, path: Path = PAIRS, **cfg) -> dict:
    from tests.test_cache_helpers import labelled_pairs

    cache = Cache(config(**cfg), None)
    await cache.start()
    try:
        return await run_pairs(cache, labelled_pairs(name, path))
    finally:
        await cache.close()


@pytest.mark.parametrize("name", sorted(HELD_OUT))
async def test_default_embedder_on_the_held_out_split(name):
    """Each set written apart from the veto's word lists and split by a hash of each pair before any
    tuning (tests/test_cache_helpers.split_of): the veto, VETO_SPREAD and the margins were chosen on the
    "tune" splits only. Issue 15's goals: >= 60 % of paraphrases hit at the default threshold, wrong
    answers < 1 % of served semantic hits."""
    path, min_recall, max_false = HELD_OUT[name]
    res = await _split("heldout", path)
    assert res["hit_pairs"] >= 100 and res["miss_pairs"] >= 120
    print(f"\n{name} held-out: paraphrases hit {res['paraphrase_hits']}/{res['hit_pairs']}, "
          f"false hits {res['false_hits']}/{res['miss_pairs']} ({res['false_hit_share']:.1%} of served)")
    assert res["paraphrase_hit_rate"] >= min_recall, res["lost"]
    assert res["false_hits"] <= max_false, res["false"]


@pytest.mark.parametrize("path, min_recall", [(PAIRS, 0.75), (FRESH_PAIRS, 0.68)])
async def test_default_embedder_on_the_tune_split(path, min_recall):
    res = await _split("tune", path)
    assert res["paraphrase_hit_rate"] >= min_recall, res["lost"]
    assert res["false_hits"] == 0, res["false"]


async def test_the_threshold_decides():
    """SEMANTIC_THRESHOLD moves the result (issue 15: replaced by 0.40, nothing changed): lower serves more
    (and wrong answers with it), higher fewer."""
    low, default, high = [await _split("tune", semantic_threshold=t) for t in (0.40, 0.85, 0.95)]
    assert low["paraphrase_hits"] > default["paraphrase_hits"] > high["paraphrase_hits"]
    assert low["false_hits"] > default["false_hits"]


async def test_templated_misses_do_not_reach_the_model():
    """The miss path stays cheap: new prompts of the spec mix that share a template with stored ones
    (another topic, number, language) are turned down by the veto or the guard, not by a model run."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from cache_prompts import unique_prompts

    prompts = unique_prompts(3300, seed=11)
    cache = Cache(config(), None)
    await cache.start()
    try:
        for i, p in enumerate(prompts[:3000]):
            cache.store(chat(p["messages"][-1]["content"]), completion(f"filler {i}"))
            if i % 500 == 499:
                await cache.drain()
        await cache.drain()
        before = cache.stats()["verifications"]
        served = 0
        for p in prompts[3000:]:
            served += (await cache.lookup(chat(p["messages"][-1]["content"]))).status != "miss"
        verified = cache.stats()["verifications"] - before
        assert cache.stats()["index"]["static_vectors"] > 500
    finally:
        await cache.close()
    assert served == 0
    assert verified <= 3, f"{verified} of 300 misses ran the model"


async def test_hash_only_embedder_at_its_calibrated_threshold():
    """embedder = hash (no model) at its documented threshold (0.85, gateway/cache/README.md): the guard keeps
    false hits out, the hashed cosine lets fewer paraphrases through than MiniLM."""
    cache = Cache(config(embedder="hash", semantic_threshold=0.85), None)
    await cache.start()
    try:
        res = await run_pairs(cache, load("cache_pairs.jsonl") + load("cache_pairs_holdout.jsonl"))
    finally:
        await cache.close()
    assert res["false_hit_share"] < 0.01, res["false"]
    assert res["paraphrase_hit_rate"] >= 0.3


async def test_paraphrases_still_found_in_a_crowded_scope():
    """The same paraphrases hit when their scope also holds thousands of other prompts of the spec mix.

    Every pair in one scope (the default namespace) behind 5,000 filler entries: an approximate
    vector search over hashed vectors lost about half of them at this kind of size.
    """
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from cache_prompts import unique_prompts

    pairs = [p for p in load("cache_pairs.jsonl") + load("cache_pairs_holdout.jsonl") if p["label"] == "hit"]
    alone = Cache(config(), None)
    crowded = Cache(config(), None)
    for c in (alone, crowded):
        await c.start()
    try:
        for i, p in enumerate(unique_prompts(5000, seed=5)):
            crowded.store(chat(p["messages"][-1]["content"]), completion(f"filler {i}"))
            if i % 500 == 499:
                await crowded.drain()
        for c in (alone, crowded):
            for i, p in enumerate(pairs):
                c.store(chat(p["a"]), completion(f"answer {i}"))
            await c.drain()
        found = {}
        for name, c in (("alone", alone), ("crowded", crowded)):
            found[name] = set()
            for i, p in enumerate(pairs):
                r = await c.lookup(chat(p["b"]))
                if r.status == "semantic-hit" and r.response["choices"][0]["message"]["content"] == f"answer {i}":
                    found[name].add(i)
        assert crowded.stats()["entries"] >= 5000
        assert len(found["alone"]) >= len(pairs) // 2
        lost = found["alone"] - found["crowded"]
        assert len(lost) <= 2, [pairs[i]["b"] for i in lost]
    finally:
        for c in (alone, crowded):
            await c.close()
