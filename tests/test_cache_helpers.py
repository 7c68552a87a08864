"""Shared helpers for the cache tests (no tests here): requests, completions, waiting."""

from __future__ import annotations

import asyncio
import json
import time
from hashlib import blake2b
from pathlib import Path

from gateway.cache import Cache, CacheConfig
from gateway.request import ChatRequest

MODEL = "gpt-4o-mini"
PAIRS = Path(__file__).parent / "data" / "paraphrase_pairs.jsonl"
# Written after the veto was tuned on PAIRS, and sharing no prompt with it (issue 15, second pass).
FRESH_PAIRS = Path(__file__).parent / "data" / "paraphrase_pairs_fresh.jsonl"
# Third set (issue 15, third pass): written before that pass changed any code; same split rule.
FRESH2_PAIRS = Path(__file__).parent / "data" / "paraphrase_pairs_fresh2.jsonl"


def split_of(pair: dict) -> str:
    """A pair's split, fixed by a hash of its text (about half each): tune on "tune", report "heldout"."""
    return "heldout" if blake2b(f"{pair['a']}\x1f{pair['b']}".encode(), digest_size=8).digest()[0] % 2 else "tune"


def labelled_pairs(split: str, path: Path = PAIRS) -> list[dict]:
    """A labelled set's split ("tune", "heldout" or "all"): {"label": "hit"|"miss", "kind", "a", "b"}."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if split == "all" or split_of(r) == split]


def chat(content: str, *, system: str | None = None, history: list[dict] | None = None, headers: dict | None = None,
         model: str = MODEL, **params) -> ChatRequest:
    msgs = []
    if system is not None:
        msgs.append({"role": "system", "content": system})
    msgs += history or []
    msgs.append({"role": "user", "content": content})
    body = {"model": model, "messages": msgs, **params}
    return ChatRequest(body=body, model=model, stream=bool(params.get("stream")), include_usage=False,
                       request_id="req-test", key=None, headers={k.lower(): v for k, v in (headers or {}).items()},
                       started=time.perf_counter(), deadline=0.0)


def completion(text: str, *, tool_calls: list | None = None, n: int = 1) -> dict:
    msg = {"role": "assistant", "content": None if tool_calls else text}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-original", "object": "chat.completion", "created": 1_700_000_000, "model": MODEL,
        "choices": [{"index": i, "message": dict(msg), "finish_reason": "tool_calls" if tool_calls else "stop"}
                    for i in range(n)],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    }


async def store(cache: Cache, content: str, answer: str, **kw) -> None:
    """Look up (as the pipeline does), store the answer, wait until it is in."""
    req = chat(content, **kw)
    await cache.lookup(req)
    cache.store(req, completion(answer))
    await cache.drain()


async def lookup(cache: Cache, content: str, **kw):
    return await cache.lookup(chat(content, **kw))


async def eventually(check, timeout: float = 1.0, interval: float = 0.02):
    """Poll an async or sync check until it returns truthy; return (value, seconds taken)."""
    t0 = time.monotonic()
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return value, time.monotonic() - t0
        await asyncio.sleep(interval)


def config(**kw) -> CacheConfig:
    kw.setdefault("sweep_seconds", 0.1)
    kw.setdefault("redis_retry_seconds", 0.1)
    kw.setdefault("redis_timeout_seconds", 0.5)
    return CacheConfig.from_mapping(kw)
