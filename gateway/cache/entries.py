"""The local entries of one worker: by exact key, by content key, in the vector index; expiry and bounds.

Every entry has an int label (the vector index and the content-key lists hold
labels, not objects: tuples of ints are not tracked by the garbage collector).
The store is bounded: past ``max_entries`` the least recently used entry goes,
and at most ``KEY_CANDIDATES`` entries stay findable under one content key.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict

import numpy as np

from gateway.cache.controls import in_namespace
from gateway.cache.embed import HASH_DIM, StaticEmbedder
from gateway.cache.index import VectorIndex

# Entries kept findable under one content key (the newest): prompts that share a key are phrasings of
# one request, and a key that many prompts share ("hi", "hi!", "hello there": no content words) must
# not make a lookup check them all.
KEY_CANDIDATES = 8
INDEX_HASHED, INDEX_STATIC = 1, 2
STATIC_DIM = StaticEmbedder.dim


class Entry:
    __slots__ = ("key", "rkey", "tenant", "scope", "text", "response", "created", "expires", "label", "analysis",
                 "ckey", "indexed", "windows")

    def __init__(self, key: str, tenant: str, scope: str | None, text: str | None, response: bytes,
                 created: float, expires: float, label: int) -> None:
        self.key = key
        self.rkey = ""  # its Redis key
        self.tenant = tenant
        self.scope = scope  # the semantic scope (None: exact tier only)
        self.text = text  # the last user message (scope set only)
        self.response = response  # the chat.completion as JSON bytes
        self.created = created
        self.expires = expires
        self.label = label
        self.analysis: tuple | None = None  # text.Analysis as a plain tuple
        self.ckey: int | None = None  # text.content_key: where the semantic tier finds it (scope set only)
        self.indexed = 0  # in a vector index: INDEX_HASHED (a long prompt), INDEX_STATIC (a short one, minilm)
        self.windows: np.ndarray | None = None  # the verifier's embedding (float16): when idle after store, or on first use


class Entries:
    def __init__(self, max_entries: int, key_prefix: str) -> None:
        self.max_entries = max_entries
        self.key_prefix = key_prefix  # of the Redis keys (rkey)
        self.by_key: OrderedDict[str, Entry] = OrderedDict()  # LRU order: the oldest first
        self.labels: dict[int, Entry] = {}
        self.by_ckey: dict[int, tuple[int, ...]] = {}  # content key -> labels (a tuple of ints: not GC-tracked)
        self.scope_entries: dict[str, int] = {}  # scope -> entries the semantic tier can find
        self.index = VectorIndex(HASH_DIM)  # long prompts: hashed vectors
        self.sindex = VectorIndex(STATIC_DIM)  # short prompts (minilm): static MiniLM vectors
        self._next_label = 1
        self._expiry: list[tuple[float, int, str]] = []
        self.evictions = 0
        self.expirations = 0
        self.flushed = 0

    def __len__(self) -> int:
        return len(self.by_key)

    def live(self, key: str, now: float) -> Entry | None:
        """The entry under an exact key, made most recently used; an expired one is dropped."""
        e = self.by_key.get(key)
        if e is None:
            return None
        if e.expires > now:
            self.by_key.move_to_end(key)
            return e
        self.drop(e)
        self.expirations += 1
        return None

    def touch(self, e: Entry) -> bool:
        """Mark an entry most recently used; False when it is gone or expired meanwhile."""
        if self.by_key.get(e.key) is not e:
            return False
        self.by_key.move_to_end(e.key)
        return True

    def with_ckey(self, ckey: int, now: float) -> list[Entry]:
        out = []
        for label in self.by_ckey.get(ckey, ()):
            e = self.labels.get(label)
            if e is not None and e.expires > now:
                out.append(e)
        return out

    def insert(self, e: Entry, hv: np.ndarray | None, sv: np.ndarray | None = None,
               later: list | None = None) -> None:
        """Insert an entry (replacing one with its key). ``later``: its vectors are appended there as
        (flag, entry, vector) instead of going in their index now; ``index_many`` adds them."""
        old = self.by_key.get(e.key)
        if old is not None:
            self.drop(old)
        e.label = self._next_label
        self._next_label += 1
        e.rkey = f"{self.key_prefix}{e.tenant}:{e.key}"
        self.by_key[e.key] = e
        self.labels[e.label] = e
        if e.scope is not None and e.ckey is not None:
            labels = self.by_ckey.get(e.ckey)
            self.by_ckey[e.ckey] = (e.label,) if labels is None else labels[1 - KEY_CANDIDATES:] + (e.label,)
            self.scope_entries[e.scope] = self.scope_entries.get(e.scope, 0) + 1
            if later is not None:
                if hv is not None:
                    later.append((INDEX_HASHED, e, hv))
                if sv is not None:
                    later.append((INDEX_STATIC, e, sv))
            else:
                if hv is not None:
                    self.index.add(e.scope, e.label, hv)
                    e.indexed |= INDEX_HASHED
                if sv is not None:
                    self.add_static(e, sv)
        heapq.heappush(self._expiry, (e.expires, e.label, e.key))
        while len(self.by_key) > self.max_entries:
            _, victim = self.by_key.popitem(last=False)
            self.by_key[victim.key] = victim  # drop pops it
            self.drop(victim)
            self.evictions += 1
        if len(self._expiry) > 2 * len(self.by_key) + 1024:
            self._expiry = [(x.expires, x.label, x.key) for x in self.by_key.values()]
            heapq.heapify(self._expiry)

    def drop(self, e: Entry) -> None:
        if self.by_key.get(e.key) is e:
            del self.by_key[e.key]
        if self.labels.pop(e.label, None) is None or e.scope is None or e.ckey is None:
            return
        labels = self.by_ckey.get(e.ckey)
        if labels is not None:
            rest = tuple(x for x in labels if x != e.label)
            if rest:
                self.by_ckey[e.ckey] = rest
            else:
                del self.by_ckey[e.ckey]
        n = self.scope_entries.get(e.scope, 0) - 1
        if n > 0:
            self.scope_entries[e.scope] = n
        else:
            self.scope_entries.pop(e.scope, None)
        if e.indexed & INDEX_HASHED:
            self.index.remove(e.scope, e.label)
        if e.indexed & INDEX_STATIC:
            self.sindex.remove(e.scope, e.label)

    def add_static(self, e: Entry, sv: np.ndarray) -> None:
        """Put a stored short prompt's static vector in its scope's index (also later: entries from Redis)."""
        if self.labels.get(e.label) is e and e.scope is not None:
            self.sindex.add(e.scope, e.label, sv)
            e.indexed |= INDEX_STATIC

    def index_many(self, later: list) -> int:
        """Add the vectors ``insert`` left in ``later``: one call per scope and index (usearch adds a
        batch a third cheaper a vector). Entries dropped meanwhile (replaced, evicted) are skipped.
        Returns how many vectors went in."""
        groups: dict[tuple[int, str], tuple[list[int], list[np.ndarray], list[Entry]]] = {}
        for flag, e, vec in later:
            if self.labels.get(e.label) is not e or e.scope is None:
                continue
            g = groups.get((flag, e.scope))
            if g is None:
                g = groups[(flag, e.scope)] = ([], [], [])
            g[0].append(e.label)
            g[1].append(vec)
            g[2].append(e)
        n = 0
        for (flag, scope), (labels, vecs, es) in groups.items():
            (self.index if flag == INDEX_HASHED else self.sindex).add_many(scope, labels, vecs)
            for e in es:
                e.indexed |= flag
            n += len(labels)
        return n

    def sweep(self, now: float) -> int:
        """Drop the entries expired by ``now``."""
        n = 0
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, label, _key = heapq.heappop(heap)
            e = self.labels.get(label)
            if e is not None and e.expires <= now:
                self.drop(e)
                n += 1
        self.expirations += n
        return n

    def flush(self, namespace: str | None) -> int:
        victims = [e for e in self.by_key.values() if in_namespace(e.tenant, namespace)]
        for e in victims:
            self.drop(e)
        self.flushed += len(victims)
        return len(victims)
