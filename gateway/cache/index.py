"""The in-memory vector index of long prompts: one shard per semantic scope.

Short prompts are found by their content key (``text.content_key``); prompts
of 20+ content words may differ in a few words and are found here, by their
hashed vectors. A semantic match is only ever looked for inside one scope
(same model, same parameters, same system prompt and earlier turns), so the
index is sharded by scope and a search never has to filter. Most scopes are
tiny (one conversation, one system prompt): they are a numpy matrix searched
exactly. A scope that grows past ``SMALL`` entries becomes a usearch HNSW
index (cosine, int8), whose search cost stays flat as it grows (its recall on
these sparse vectors does not: see gateway/cache/README.md).

usearch is not safe to use from several threads at once and holds the GIL,
so every call on a live index happens on the event-loop thread; each is tens
to a few hundred microseconds. Removed entries leave their slots to new ones (usearch reuses
them), but the graph loses quality as it churns, so a shard that has removed
as many entries as it holds is rebuilt: on the executor, into a new index no
one else sees, then swapped in with the changes made meanwhile replayed.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from usearch.index import Index

log = logging.getLogger("gateway.cache")

SMALL = 128


def _new_index(dim: int) -> Index:
    # int8 scalars: a third cheaper to add and search than f16 (100k hashed vectors: ~110 vs ~150 µs
    # an add, ~85 vs ~125 µs a search) and, on the spec mix, the same paraphrases found (724 vs 722
    # of 2,381, `cache_bench.py hitrate`): the hashed vectors are coarse already.
    return Index(ndim=dim, metric="cos", dtype="i8", connectivity=16, expansion_add=64, expansion_search=48)


class Shard:
    __slots__ = ("dim", "labels", "pos", "mat", "index", "removed", "pending", "rebuilding")

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.labels: list[int] = []  # small mode: row -> label
        self.pos: dict[int, int] = {}  # label -> row (small) or presence (HNSW)
        self.mat = np.empty((4, dim), dtype=np.float32)
        self.index: Index | None = None
        self.removed = 0  # removals since the HNSW index was built
        self.pending: list[tuple[int, int, np.ndarray | None]] | None = None  # changes during a rebuild
        self.rebuilding = False

    def __len__(self) -> int:
        return len(self.pos)

    def add(self, label: int, vec: np.ndarray) -> None:
        if label in self.pos:
            self.remove(label)
        if self.index is not None:
            self.index.add(label, vec)
            self.pos[label] = -1
            if self.pending is not None:
                self.pending.append((1, label, vec))
            return
        n = len(self.labels)
        if n >= SMALL:
            self._promote()
            self.add(label, vec)
            return
        if n == self.mat.shape[0]:
            grown = np.empty((min(SMALL, n * 2), self.dim), dtype=np.float32)
            grown[:n] = self.mat[:n]
            self.mat = grown
        self.mat[n] = vec
        self.labels.append(label)
        self.pos[label] = n

    def add_many(self, labels: list[int], vecs: list[np.ndarray]) -> None:
        """Several vectors at once: one usearch call for an HNSW shard (a third cheaper a vector than
        one call each: 39 against 55 µs at 24,000 static vectors, 32 a call)."""
        i = 0
        while self.index is None and i < len(labels):  # small mode (may promote on the way)
            self.add(labels[i], vecs[i])
            i += 1
        if i == len(labels):
            return
        labels, vecs = labels[i:], vecs[i:]
        if len(labels) == 1:
            self.add(labels[0], vecs[0])
            return
        for label in labels:
            if label in self.pos:
                self.remove(label)
        self.index.add(np.asarray(labels, dtype=np.uint64), np.vstack(vecs), threads=1)
        for label, vec in zip(labels, vecs):
            self.pos[label] = -1
            if self.pending is not None:
                self.pending.append((1, label, vec))

    def _promote(self) -> None:
        index = _new_index(self.dim)
        n = len(self.labels)
        index.add(np.asarray(self.labels, dtype=np.uint64), self.mat[:n], threads=1)
        self.index = index
        self.pos = {label: -1 for label in self.labels}
        self.labels = []
        self.mat = np.empty((0, self.dim), dtype=np.float32)
        self.removed = 0

    def remove(self, label: int) -> bool:
        row = self.pos.pop(label, None)
        if row is None:
            return False
        if self.index is not None:
            self.index.remove(label)
            self.removed += 1
            if self.pending is not None:
                self.pending.append((0, label, None))
            return True
        last = len(self.labels) - 1
        if row != last:
            moved = self.labels[last]
            self.mat[row] = self.mat[last]
            self.labels[row] = moved
            self.pos[moved] = row
        self.labels.pop()
        return True

    def search(self, vec: np.ndarray, k: int) -> list[tuple[int, float]]:
        if self.index is not None:
            if not self.pos:
                return []
            m = self.index.search(vec, k)
            return [(int(key), 1.0 - float(d)) for key, d in zip(m.keys, m.distances)]
        n = len(self.labels)
        if n == 0:
            return []
        sims = self.mat[:n] @ vec
        if n > k:
            top = np.argpartition(-sims, k)[:k]
        else:
            top = np.arange(n)
        return [(self.labels[i], float(sims[i])) for i in top]

    def search_many(self, vecs: list[np.ndarray], k: int) -> list[list[tuple[int, float]]]:
        """One search per vector, as ``search``; an HNSW shard answers them all in one usearch call."""
        if self.index is None or len(vecs) == 1:
            return [self.search(v, k) for v in vecs]
        if not self.pos:
            return [[] for _ in vecs]
        m = self.index.search(np.vstack(vecs), k, threads=1)
        keys, dists, counts = m.keys, m.distances, m.counts
        return [[(int(key), 1.0 - float(d)) for key, d in zip(keys[i, :counts[i]], dists[i, :counts[i]])]
                for i in range(len(vecs))]

    def needs_rebuild(self) -> bool:
        return self.index is not None and not self.rebuilding and self.removed >= max(1024, len(self.pos))


class VectorIndex:
    """Scope -> shard, plus the bookkeeping for compaction."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.shards: dict[str, Shard] = {}
        self.rebuilds = 0

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards.values())

    def add(self, scope: str, label: int, vec: np.ndarray) -> None:
        shard = self.shards.get(scope)
        if shard is None:
            shard = self.shards[scope] = Shard(self.dim)
        shard.add(label, vec)

    def add_many(self, scope: str, labels: list[int], vecs: list[np.ndarray]) -> None:
        shard = self.shards.get(scope)
        if shard is None:
            shard = self.shards[scope] = Shard(self.dim)
        shard.add_many(labels, vecs)

    def remove(self, scope: str, label: int) -> None:
        shard = self.shards.get(scope)
        if shard is not None and shard.remove(label) and not shard.pos and not shard.rebuilding:
            del self.shards[scope]

    def search(self, scope: str, vec: np.ndarray, k: int) -> list[tuple[int, float]]:
        shard = self.shards.get(scope)
        return shard.search(vec, k) if shard is not None else []

    def hnsw_shards(self) -> int:
        return sum(1 for s in self.shards.values() if s.index is not None)

    async def compact(self, executor) -> int:
        """Rebuild the HNSW shards that have churned; returns how many were rebuilt."""
        done = 0
        for scope, shard in list(self.shards.items()):
            if not shard.needs_rebuild():
                continue
            shard.rebuilding = True
            shard.pending = []
            try:
                labels = np.fromiter(shard.pos.keys(), dtype=np.uint64, count=len(shard.pos))
                vecs = (np.vstack(shard.index.get(labels, dtype=np.float32)) if len(labels)
                        else np.empty((0, self.dim), np.float32))
                fresh = await asyncio.get_running_loop().run_in_executor(executor, _build, self.dim, labels, vecs)
                # Back on the loop: replay what changed while it was built, then swap.
                for op, label, vec in shard.pending:
                    if op:
                        fresh.add(label, vec)
                    elif fresh.contains(label):
                        fresh.remove(label)
                shard.index = fresh
                shard.removed = 0
                done += 1
                self.rebuilds += 1
            except Exception:
                log.exception("cache: rebuilding a vector index shard failed")
            finally:
                shard.pending = None
                shard.rebuilding = False
            if not shard.pos:
                self.shards.pop(scope, None)
        return done


class TickSearches:
    """The HNSW searches asked during one turn of the event loop, answered together: one usearch call
    per shard (16 static-vector queries a call: 24 µs a query against 42 alone, 24,000 entries).

    ``search`` returns a future; the first one of a turn schedules the flush with ``call_soon``, so it
    runs on the next turn, after every callback that was ready in this one (the lookups of the
    requests that arrived together). A small shard (a numpy matrix) is not worth the future: its
    search is made at once (``None`` from ``search``: call the index's own).
    """

    def __init__(self) -> None:
        self._queue: list[tuple[VectorIndex, str, np.ndarray, int, asyncio.Future]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.searches = 0  # HNSW searches answered
        self.calls = 0  # usearch calls that answered them

    def search(self, index: VectorIndex, scope: str, vec: np.ndarray, k: int) -> asyncio.Future | None:
        shard = index.shards.get(scope)
        if shard is None or shard.index is None:
            return None
        queue = self._queue
        if not queue:
            loop = self._loop
            if loop is None or loop.is_closed():
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._flush)
        fut = self._loop.create_future()
        queue.append((index, scope, vec, k, fut))
        return fut

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        groups: dict[tuple[int, str, int], list] = {}
        for item in queue:
            groups.setdefault((id(item[0]), item[1], item[3]), []).append(item)
        for items in groups.values():
            index, scope, _vec, k, _fut = items[0]
            try:
                shard = index.shards.get(scope)
                found = shard.search_many([it[2] for it in items], k) if shard is not None else [[]] * len(items)
                self.calls += 1
                self.searches += len(items)
            except Exception as exc:  # noqa: BLE001 - each lookup turns it into a miss
                for it in items:
                    if not it[4].done():
                        it[4].set_exception(exc)
                continue
            for it, res in zip(items, found):
                if not it[4].done():  # a lookup cancelled meanwhile (its client left)
                    it[4].set_result(res)


def _build(dim: int, labels: np.ndarray, vecs: np.ndarray) -> Index:
    index = _new_index(dim)
    if len(labels):
        index.add(labels, vecs, threads=1)
    return index
