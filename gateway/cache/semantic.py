"""The semantic tier: which stored prompts may mean the same as a query, and whether one does.

    candidates: the query's content key -> the entries with the same content words;
                short prompts (under 12 content words, embedder minilm) also: static
                MiniLM vector -> top-k of the scope's static index (>= static_candidate_threshold);
                long prompts also: hashed vector -> top-k of the scope's hashed index
                (>= candidate_threshold)
    screen:     short prompts: the contrast veto (text.veto: other literals, an
                opposite, a reversed relation, other names, one swapped slot, another
                kind of request); long prompts: the lexical guard (text.guard: the
                content words must pair off); on the loop, a few µs a candidate
    verifier:   MiniLM (or the provider's) similarity >= semantic_threshold, on the
                executor thread (the model releases the GIL); only candidates that
                passed the screen reach it

A lookup makes the first part of its query's analysis (text.key_analysis: the literals and content
words, for the content key and the index to search) and an entry keeps that part from its store;
both are completed (text.completed) only when a candidate shares the query's literals, the one case
in which the screen reads more. Entries loaded from Redis get their part in the background
(:meth:`Semantic.backfill`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from gateway.cache.embed import HASH_DIM, HashEmbedder, StaticEmbedder, Verifier, make_verifier, similarity
from gateway.cache.entries import INDEX_STATIC, Entries, Entry
from gateway.cache.index import TickSearches
from gateway.cache.keys import RequestView
from gateway.cache.text import added_words, completed, content_key, guard, is_long, is_short, key_analysis, literals_differ, veto

if TYPE_CHECKING:
    from gateway.cache.cache import LookupState
    from gateway.cache.config import CacheConfig

log = logging.getLogger("gateway.cache")

Candidate = tuple[Entry, "float | None"]  # (entry, index cosine; None when found by its content key)

# A short prompt that passed the contrast veto is judged by the verifier's cosine on this scale:
# score = 1 - (1 - cosine) / VETO_SPREAD, so SEMANTIC_THRESHOLD 0.85 asks MiniLM for cosine 0.775.
# The veto took the near misses out that made a raw 0.85 necessary (labelled pairs, tune split:
# see gateway/cache/README.md). Long prompts (the guard) keep the raw cosine.
VETO_SPREAD = 1.5
# When every content word of each prompt pairs with one of the other (the same words up to synonyms,
# inflections and typos) and the veto found no contrast, the words already agree: MiniLM is asked for
# less (0.85 -> cosine 0.745). Typos are where it needs it: WordPiece cuts "populaton" into pieces that
# mean nothing ("What is the populaton of Brazil?" / "... population ...": cosine 0.76).
PAIRED_MARGIN = -0.02
# Short prompts stored while the verifier is idle are embedded then (on its executor, lookups first),
# so a first-time semantic hit embeds only the query. Past this backlog they are embedded on first use.
PRE_EMBED_BACKLOG = 1024


class Semantic:
    def __init__(self, config: CacheConfig, entries: Entries) -> None:
        self.config = config
        self.entries = entries
        self.hasher = HashEmbedder(HASH_DIM)
        self.verifier: Verifier | None = None
        self.static: StaticEmbedder | None = None
        if config.semantic and config.embedder == "minilm":
            try:
                self.static = StaticEmbedder()
            except Exception as exc:  # noqa: BLE001 - short prompts then need the same content words
                log.error("cache: the static MiniLM vectors did not load (%s: %s); short prompts are found "
                          "by their content key only", type(exc).__name__, exc)
        if config.semantic:
            self.verifier = make_verifier(config.embedder, window=config.verify_window_tokens,
                                          url=config.embedder_url, model=config.embedder_model,
                                          key=config.embedder_key, timeout=config.embedder_timeout_seconds,
                                          tokenizer=self.static.tokenizer if self.static is not None else None)
        self.on = config.semantic and (self.verifier is not None or config.embedder == "hash")
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="gw-cache-verify")
        self.verifier_error: str | None = None
        self.unanalysed: deque[Entry] = deque()  # entries from Redis whose guard analysis is still to do
        self.to_embed: deque[Entry] = deque()  # short prompts stored, for the verifier when it is idle
        self._embed_wake: asyncio.Event | None = None
        self.pre_embedded = 0
        self.pre_embed_skipped = 0
        self._backfill_wake: asyncio.Event | None = None
        self._pending = 0
        self.verifications = 0
        self.shed = 0
        self.errors = 0
        self.guard_rejects: Counter = Counter()
        self.searches = TickSearches()  # the HNSW searches of concurrent lookups, one usearch call a turn

    async def warm(self) -> None:
        """Load the model on the executor, so the first lookup need not wait for it."""
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.verifier.warm)
            self.verifier_error = None
        except Exception as exc:  # noqa: BLE001 - degrade to misses, say why
            self.verifier_error = f"{type(exc).__name__}: {exc}"
            log.error("cache: the %s verifier did not load (%s); semantic lookups answer miss until it does",
                      self.verifier.name, self.verifier_error)

    async def close(self) -> None:
        if self.verifier is not None:
            await self.verifier.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict:
        v = self.verifier
        return {
            "verifier": None if v is None else {"name": v.name, "ready": v.ready, "graph": getattr(v, "graph", None),
                                                "error": self.verifier_error,
                                                "static_candidates": self.static is not None},
            "verifications": self.verifications,
            "verify_shed": self.shed,
            "verify_pending": self._pending,
            "verify_errors": self.errors,
            "pre_embedded": self.pre_embedded,
            "pre_embed_skipped": self.pre_embed_skipped,
            "guard_rejects": dict(self.guard_rejects),
        }

    # ------------------------------------------------------------------ lookup

    async def find(self, st: LookupState, v: RequestView, now: float) -> tuple[Entry | None, float]:
        """The stored entry that means the same as the query, with its similarity; (None, 0) otherwise."""
        try:
            cands, search = self._candidates(st, v, now)
            if search is not None:
                index, floor, vec = search
                fut = self.searches.search(index, v.scope, vec, self.config.candidates)
                # An HNSW shard: searched together with the other lookups of this turn of the loop.
                found = index.search(v.scope, vec, self.config.candidates) if fut is None else await fut
                now = time.time() if fut is not None else now
                for label, sim in found:
                    c = self.entries.labels.get(label)
                    if c is not None and sim >= floor and c.expires > now and all(c is not x for x, _ in cands):
                        cands.append((c, sim))
        except Exception as exc:  # noqa: BLE001 - a prompt the analysis chokes on is a miss, not an error
            self.errors += 1
            log.warning("cache: finding semantic candidates failed: %s", exc)
            return None, 0.0
        if not cands:
            return None, 0.0
        return await self._match(st, v.query, cands)

    def _candidates(self, st: LookupState, v: RequestView, now: float):
        """The prompts with the query's content words: one dict lookup (the content key). Short
        prompts (minilm): also the nearest static MiniLM vectors of the scope, which find rewordings
        with other words ("population" / "how many people"). Long prompts may differ in a few
        words: also the nearest hashed vectors. Returns (the content key's candidates, the index
        search still to make: (index, cosine floor, the query's vector), or None).
        """
        qa = st.analysis
        if qa is None:
            qa = st.analysis = key_analysis(v.query)
        st.ckey = content_key(v.scope, qa)
        cands: list[Candidate] = [(c, None) for c in self.entries.with_ckey(st.ckey, now)]
        if is_long(qa):
            index, floor = self.entries.index, self.config.candidate_threshold
            if v.scope in index.shards:
                st.hvec = vec = self.hasher.vector(v.query)
            else:
                return cands, None
        elif self.static is not None and is_short(qa):
            index, floor = self.entries.sindex, self.config.static_candidate_threshold
            if v.scope in index.shards:
                st.svec = vec = self.static.vector(v.query)
            else:
                return cands, None
        else:
            return cands, None
        return cands, (index, floor, vec)

    async def _match(self, st: LookupState, query: str, cands: list[Candidate]) -> tuple[Entry | None, float]:
        """Guard, then verifier: the best candidate that means the same as ``query``, or None."""
        try:
            # The guard runs here, on the loop: most candidates differ from the query in a literal
            # (a number, a name in quotes), which the analyses' first part tells; the rest of both
            # analyses is made once, for those that do not (kept: the query's for this request's
            # own store, the entry's for its next lookups). On a thread it would cost as much CPU,
            # plus the hand-off, and hold the GIL against the loop for up to the switch interval.
            passing = self._screen(st, query, cands)
            if not passing:
                return None, 0.0
            if self.verifier is None:  # embedder = "hash": the hashed cosine decides
                best, best_sim = None, 0.0
                for e, _sim, added, _vetoed in passing:
                    if st.hvec is None:
                        st.hvec = self.hasher.vector(query)
                    hsim = float(st.hvec @ self.hasher.vector(e.text))
                    if hsim >= self._needed(added) and hsim > best_sim:
                        best, best_sim = e, hsim
                return best, best_sim
        except Exception as exc:  # noqa: BLE001 - a broken guard must never fail a request
            self.errors += 1
            log.warning("cache: semantic guard failed: %s", exc)
            return None, 0.0
        if self._pending >= self.config.max_pending_verifications:
            self.shed += 1
            return None, 0.0
        self._pending += 1
        try:
            if self.verifier.is_async:
                return await self._verify_async(query, passing)
            loop = asyncio.get_running_loop()
            # The model releases the GIL while it runs: a thread is worth its hand-off here.
            best, sim = await loop.run_in_executor(self.executor, self._verify, query, passing)
            self.verifications += 1
            return best, sim
        except Exception as exc:  # noqa: BLE001 - a broken verifier must never fail a request
            self.errors += 1
            self.verifier_error = f"{type(exc).__name__}: {exc}"
            log.warning("cache: semantic verification failed: %s", exc)
            return None, 0.0
        finally:
            self._pending -= 1

    def _screen(self, st: LookupState, query: str, cands: list[Candidate]) -> list[tuple[Entry, float | None, int, bool]]:
        """The candidates worth the verifier: (entry, index cosine, words added, judged by the veto)."""
        passing = []
        qa = st.analysis
        by_veto = self.static is not None and is_short(qa)
        for e, sim in cands:
            ea = e.analysis
            if ea is None:  # loaded from Redis and not yet reached by the backfill
                ea = e.analysis = key_analysis(e.text)
            why = literals_differ(qa, ea)
            if why is not None:
                self.guard_rejects[why] += 1
                continue
            qa = st.analysis = completed(qa, query)
            ea = e.analysis = completed(ea, e.text)
            if by_veto and is_short(ea):
                why, vetoed = veto(qa, ea), True
                added = added_words(qa, ea) if why is None else 0
            else:
                (why, added), vetoed = guard(qa, ea), False
                if why is None and self._needed(added) > 1.0:
                    why = "differs"  # no similarity could reach the bar: spare the verifier
            if why is not None:
                self.guard_rejects[why] += 1
            else:
                passing.append((e, sim, added, vetoed))
        return passing

    def _needed(self, added: int, vetoed: bool = False) -> float:
        """The score a candidate must reach; ``added``: text.added_words (-1: every word pairs off)."""
        if vetoed:  # one prompt adds content words to the other: a narrower question, or more context
            if added < 0:
                return self.config.semantic_threshold + PAIRED_MARGIN
            return self.config.semantic_threshold + (self.config.added_words_margin if added else 0.0)
        return self.config.semantic_threshold + self.config.narrow_margin * min(added, 2)

    @staticmethod
    def score(cosine: float, vetoed: bool) -> float:
        """The similarity compared with SEMANTIC_THRESHOLD (and shown as x-cache-similarity)."""
        return 1.0 - (1.0 - cosine) / VETO_SPREAD if vetoed else cosine

    def _best(self, qw, passing) -> tuple[Entry | None, float]:
        best, best_sim = None, 0.0
        for e, _sim, added, vetoed in passing:
            s = self.score(similarity(qw, e.windows), vetoed)
            if s >= self._needed(added, vetoed) and s > best_sim:
                best, best_sim = e, s
        return best, best_sim

    def _verify(self, query: str, passing) -> tuple[Entry | None, float]:
        """On the executor: the verifier's similarity of the query and each candidate the screen passed."""
        qw = self.verifier.windows(query)
        for e, *_ in passing:
            if e.windows is None:
                e.windows = self._embed(e.text)
        return self._best(qw, passing)

    async def _verify_async(self, query: str, passing) -> tuple[Entry | None, float]:
        todo = [e for e, *_ in passing if e.windows is None]
        vecs = await self.verifier.awindows([query] + [e.text for e in todo])
        for e, w in zip(todo, vecs[1:]):
            e.windows = w
        self.verifications += 1
        return self._best(vecs[0], passing)

    # ------------------------------------------------------------------ store

    def prepare(self, e: Entry, scope: str, analysis: tuple | None, ckey: int | None, hvec, svec=None):
        """The first part of a stored prompt's analysis (the lookup's, else made here; the rest when it
        first shares a lookup's literals), its content key, and (hashed vector of a long prompt, static
        vector of a short one (minilm)), None for the one it does not need."""
        e.analysis = a = analysis or key_analysis(e.text)
        e.ckey = ckey if ckey is not None else content_key(scope, a)
        if is_long(a):
            return (hvec if hvec is not None else self.hasher.vector(e.text)), None
        if self.static is not None and is_short(a):
            return None, (svec if svec is not None else self.static.vector(e.text))
        return None, None

    def embed_later(self, e: Entry) -> None:
        """A short prompt just stored: have the verifier embed it when idle (local verifier only)."""
        if self.static is None or self.verifier is None or self.verifier.is_async or self._embed_wake is None:
            return
        if len(self.to_embed) >= PRE_EMBED_BACKLOG:
            self.pre_embed_skipped += 1
            return
        self.to_embed.append(e)
        self._embed_wake.set()

    async def pre_embed(self) -> None:
        """Embed the stored short prompts one at a time on the verifier's executor, lookups first."""
        self._embed_wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        todo = self.to_embed
        while True:
            if not todo:
                self._embed_wake.clear()
                await self._embed_wake.wait()
            if self._pending or not self.verifier.ready:
                await asyncio.sleep(0.005)
                continue
            e = todo.popleft()
            if e.windows is not None or self.entries.labels.get(e.label) is not e:
                continue
            try:
                e.windows = await loop.run_in_executor(self.executor, self._embed, e.text)
                self.pre_embedded += 1
            except Exception as exc:  # noqa: BLE001 - it is embedded on first use instead
                log.warning("cache: embedding a stored prompt failed: %s", exc)

    async def settled(self) -> None:
        """Wait until the stored prompts waiting for the verifier are embedded (benchmarks, tests)."""
        while self.to_embed and self._embed_wake is not None:
            await asyncio.sleep(0.01)
        await asyncio.get_running_loop().run_in_executor(self.executor, lambda: None)

    def _embed(self, text: str) -> np.ndarray:
        # Kept per entry in float16 (768 bytes a window): cosines move by ~1e-3.
        return self.verifier.windows(text).astype(np.float16)

    def analyse_later(self, e: Entry) -> None:
        self.unanalysed.append(e)
        if self._backfill_wake is not None:
            self._backfill_wake.set()

    async def backfill(self) -> None:
        """Analyse the entries that came from Redis (and index a short prompt's static vector), in slices of
        ~2 ms at most every other 2 ms.

        A warm start loads up to max_entries at once: analysing them there would
        delay start-up by seconds, leaving it to lookups would make their first
        misses slow.
        """
        self._backfill_wake = asyncio.Event()
        todo = self.unanalysed
        while True:
            if not todo:
                self._backfill_wake.clear()
                await self._backfill_wake.wait()
            end = time.perf_counter() + 0.002
            try:
                while todo and time.perf_counter() < end:
                    e = todo.popleft()
                    if self.entries.labels.get(e.label) is not e:
                        continue
                    if e.analysis is None:
                        e.analysis = key_analysis(e.text)
                    if self.static is not None and not e.indexed & INDEX_STATIC and is_short(e.analysis):
                        self.entries.add_static(e, self.static.vector(e.text))
            except Exception:  # noqa: BLE001
                log.exception("cache: analysing a loaded entry failed")
            await asyncio.sleep(0.002)
