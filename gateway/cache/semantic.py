"""The semantic tier: which stored prompts may mean the same as a query, and whether one does.

    candidates: the query's content key -> the entries with the same content words;
                hashed vector -> top-k of the scope's vector index (>= candidate_threshold)
    veto:       lexical contradictions an embedder misses (numbers, negation, languages,
                operators, identifiers, direction, one slot swapped in the same frame),
                on the loop: a few comparisons
    verifier:   score = 1 - (1 - cosine) / spread >= semantic_threshold, on the executor
                thread (the model releases the GIL); spread is the embedder's own

Prompts are analysed when stored, so a lookup analyses only its query; entries
loaded from Redis are analysed in the background (:meth:`Semantic.backfill`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from gateway.cache.embed import HASH_DIM, HashEmbedder, Verifier, make_verifier, similarity
from gateway.cache.entries import Entries, Entry
from gateway.cache.keys import RequestView
from gateway.cache.text import added_words, analyse, content_key, veto

if TYPE_CHECKING:
    from gateway.cache.cache import LookupState
    from gateway.cache.config import CacheConfig

log = logging.getLogger("gateway.cache")

Candidate = tuple[Entry, "float | None"]  # (entry, hashed cosine; None when found by its content key)


class Semantic:
    def __init__(self, config: CacheConfig, entries: Entries) -> None:
        self.config = config
        self.entries = entries
        self.hasher = HashEmbedder(HASH_DIM)
        self.verifier: Verifier | None = None
        if config.semantic:
            self.verifier = make_verifier(config.embedder, window=config.verify_window_tokens,
                                          url=config.embedder_url, model=config.embedder_model,
                                          key=config.embedder_key, timeout=config.embedder_timeout_seconds)
        self.on = config.semantic and (self.verifier is not None or config.embedder == "hash")
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="gw-cache-verify")
        self.verifier_error: str | None = None
        self.unanalysed: deque[Entry] = deque()  # entries from Redis whose analysis is still to do
        self._backfill_wake: asyncio.Event | None = None
        self._pending = 0
        self.verifications = 0
        self.shed = 0
        self.errors = 0
        self.guard_rejects: Counter = Counter()

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
                                                "error": self.verifier_error},
            "verifications": self.verifications,
            "verify_shed": self.shed,
            "verify_errors": self.errors,
            "guard_rejects": dict(self.guard_rejects),
        }

    # ------------------------------------------------------------------ lookup

    async def find(self, st: LookupState, v: RequestView, now: float) -> tuple[Entry | None, float]:
        """The stored entry that means the same as the query, with its similarity; (None, 0) otherwise."""
        try:
            cands = self._candidates(st, v, now)
        except Exception as exc:  # noqa: BLE001 - a prompt the analysis chokes on is a miss, not an error
            self.errors += 1
            log.warning("cache: finding semantic candidates failed: %s", exc)
            return None, 0.0
        if not cands:
            return None, 0.0
        return await self._match(st, v.query, cands)

    def _candidates(self, st: LookupState, v: RequestView, now: float) -> list[Candidate]:
        """The entries with the query's content words (one dict lookup, exact at any size), then the
        hashed vectors' nearest in the scope (rewordings, added or dropped words).
        """
        qa = st.analysis
        if qa is None:
            qa = st.analysis = analyse(v.query)
        st.ckey = content_key(v.scope, qa)
        cands: list[Candidate] = [(c, None) for c in self.entries.with_ckey(st.ckey, now)]
        index = self.entries.index
        if v.scope in index.shards:
            st.hvec = hv = self.hasher.vector(v.query)
            floor = self.config.candidate_threshold
            for label, sim in index.search(v.scope, hv, self.config.candidates):
                c = self.entries.labels.get(label)
                if c is not None and sim >= floor and c.expires > now and all(c is not x for x, _ in cands):
                    cands.append((c, sim))
        return cands

    async def _match(self, st: LookupState, query: str, cands: list[Candidate]) -> tuple[Entry | None, float]:
        """Guard, then verifier: the best candidate that means the same as ``query``, or None."""
        try:
            # The vetoes run here, on the loop: the query was analysed once (25-220 µs, kept for
            # this request's own store), the candidates when they were stored, so it is a few
            # comparisons. On a thread it would cost as much CPU, plus the hand-off, and hold the
            # GIL against the loop for up to the switch interval.
            passing = self._veto(st.analysis, cands)
            if not passing:
                return None, 0.0
            if self.verifier is None:  # embedder = "hash": the hashed cosine decides
                best, best_sim = None, 0.0
                for e, hsim, needed in passing:
                    if hsim is None:  # found by its content key
                        if st.hvec is None:
                            st.hvec = self.hasher.vector(query)
                        hsim = float(st.hvec @ self.hasher.vector(e.text))
                    if hsim >= needed and hsim > best_sim:
                        best, best_sim = e, hsim
                return best, best_sim
        except Exception as exc:  # noqa: BLE001 - a broken veto must never fail a request
            self.errors += 1
            log.warning("cache: semantic veto failed: %s", exc)
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

    def _veto(self, qa: tuple, cands: list[Candidate]) -> list[tuple[Entry, float | None, float]]:
        passing = []
        for e, hsim in cands:
            ea = e.analysis
            if ea is None:  # loaded from Redis and not yet reached by the backfill
                ea = e.analysis = analyse(e.text)
            why = veto(qa, ea)
            if why is not None:
                self.guard_rejects[why] += 1
            else:
                passing.append((e, hsim, self._needed(added_words(qa, ea))))
        return passing

    def _needed(self, added: int) -> float:
        """The score a candidate must reach: more when one prompt adds words (it may ask for more)."""
        return self.config.semantic_threshold + self.config.narrow_margin * min(added, 2)

    def _score(self, cosine: float) -> float:
        return 1.0 - (1.0 - cosine) / self.verifier.spread

    def _verify(self, query: str, passing: list[Candidate]) -> tuple[Entry | None, float]:
        """On the executor: the verifier's score of the query and each candidate that passed the vetoes."""
        best, best_sim = None, 0.0
        qw = self.verifier.windows(query)
        for e, _hsim, needed in passing:
            w = e.windows
            if w is None:
                w = e.windows = self.verifier.windows(e.text)
            s = self._score(similarity(qw, w))
            if s >= needed and s > best_sim:
                best, best_sim = e, s
        return best, best_sim

    async def _verify_async(self, query: str, passing: list[Candidate]) -> tuple[Entry | None, float]:
        todo = [e for e, _h, _n in passing if e.windows is None]
        vecs = await self.verifier.awindows([query] + [e.text for e in todo])
        for e, w in zip(todo, vecs[1:]):
            e.windows = w
        qw = vecs[0]
        self.verifications += 1
        best, best_sim = None, 0.0
        for e, _h, needed in passing:
            s = self._score(similarity(qw, e.windows))
            if s >= needed and s > best_sim:
                best, best_sim = e, s
        return best, best_sim

    # ------------------------------------------------------------------ store

    def prepare(self, e: Entry, scope: str, analysis: tuple | None, ckey: int | None, hvec):
        """Analyse a prompt being stored (once, so no lookup analyses its candidates); its hashed vector."""
        e.analysis = a = analysis or analyse(e.text)
        e.ckey = ckey if ckey is not None else content_key(scope, a)
        return hvec if hvec is not None else self.hasher.vector(e.text)

    def analyse_later(self, e: Entry) -> None:
        self.unanalysed.append(e)
        if self._backfill_wake is not None:
            self._backfill_wake.set()

    async def backfill(self) -> None:
        """Analyse the entries that came from Redis, in slices of ~2 ms at most every other 2 ms.

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
                    if e.analysis is None and self.entries.labels.get(e.label) is e:
                        e.analysis = analyse(e.text)
            except Exception:  # noqa: BLE001
                log.exception("cache: analysing a loaded entry failed")
            await asyncio.sleep(0.002)
