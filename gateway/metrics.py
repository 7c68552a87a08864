"""Prometheus metrics: a finish listener, an upstream-attempt listener and sampled gauges.

Names the spec's dashboard queries are kept exactly (``http_request_duration_seconds``,
``http_requests_total``, ``cache_hits_total``, ``cache_requests_total``,
``websocket_connections_active``); everything else is ``gateway_*``.

Several Granian workers: ``gateway serve`` points ``PROMETHEUS_MULTIPROC_DIR``
at a fresh directory before any worker starts, so every worker writes its
values to mmap'd files there and a scrape of any worker shows the sum over
all of them. Gauges say how they aggregate: live connections are summed,
per-worker facts (breaker state, RSS, cache size) keep a ``pid`` label. A
worker that exits marks its live gauges dead; its counters stay counted.

Hot path: one listener call per request, writing into plain per-worker
buffers that are flushed to prometheus-client once a second (see
``Recorder``): a scrape lags the requests by at most that. Every label value is bounded: route
templates, status codes, the closed error-type set, deployments and key
names capped at ``MAX_VALUES`` distinct values each (then ``other``).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

from gateway import upstream
from gateway.http.chat import ROUTE as CHAT_ROUTE
from gateway.pipeline.outcome import error_type
from gateway.pricing import Prices

MAX_VALUES = 200  # distinct values one label may take (models, deployments, keys); then "other"
CLIENT_CLOSED = "499"  # the client left before any status was sent (nginx's convention)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25)
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
SIMILARITY_BUCKETS = (0.8, 0.85, 0.875, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0)

# --- the spec's metrics -------------------------------------------------------------------

HTTP_DURATION = Histogram(
    "http_request_duration_seconds", "Arrival to the last byte, per route template.",
    ("method", "route", "status"), buckets=LATENCY_BUCKETS)
HTTP_REQUESTS = Counter("http_requests_total", "Requests, per route template and status.", ("method", "route", "status"))
CACHE_HITS = Counter("cache_hits_total", "Chat requests answered from the cache.", ("tier",))  # tier: exact | semantic
CACHE_REQUESTS = Counter("cache_requests_total", "Chat requests the cache was looked up for (hits and misses; not bypasses).")
WS_ACTIVE = Gauge(
    "websocket_connections_active", "Open WebSocket connections (summed over workers).", multiprocess_mode="livesum")

# --- the gateway's own ----------------------------------------------------------------------

OVERHEAD = Histogram(
    "gateway_overhead_seconds", "Time spent in the gateway itself, upstream waits excluded.", ("surface",),
    buckets=OVERHEAD_BUCKETS)
FAILED = Counter(
    "gateway_request_errors_total", "Chat requests that ended in an error, by the closed error-type set.",
    ("error_type",))  # client | policy | provider | gateway
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_request_duration_seconds", "One provider call, sent to answer (a stream: to its headers).",
    ("provider", "model"), buckets=UPSTREAM_BUCKETS)
UPSTREAM_REQUESTS = Counter(
    "gateway_upstream_requests_total", "Provider calls by result: error_type none, client, policy, provider or gateway.",
    ("provider", "model", "error_type"))
TTFT = Histogram(
    "gateway_time_to_first_token_seconds", "Streams: arrival to the first chunk sent.", ("provider", "model"),
    buckets=LATENCY_BUCKETS)
CHUNK_GAP = Histogram(
    "gateway_inter_token_seconds", "Streams: mean gap between chunks after the first, one sample per stream.",
    ("provider", "model"), buckets=GAP_BUCKETS)
TOKENS = Counter(
    "gateway_tokens_total", "Tokens providers reported, direction prompt | completion.",
    ("provider", "model", "key", "direction"))
COST = Counter("gateway_cost_usd_total", "USD spent at list price (the config's price table).", ("provider", "model", "key"))
SAVED = Counter(
    "gateway_cost_saved_usd_total", "USD the cache saved: cached answers priced as if a provider had served them.",
    ("provider", "model", "key"))
UNPRICED = Counter("gateway_unpriced_requests_total", "Answers for a model with no row in the price table.", ("model",))
FAILOVERS = Counter(
    "gateway_failovers_total", "Requests answered after another deployment failed them.", ("deployment",))
HEDGES = Counter("gateway_hedged_requests_total", "Requests that sent a duplicate to a second deployment.")
RATE_LIMITED = Counter("gateway_rate_limit_rejections_total", "Requests refused by a limit (429, policy).", ("key",))
SIMILARITY = Histogram(
    "gateway_cache_similarity", "Cosine similarity of semantic cache hits.", buckets=SIMILARITY_BUCKETS)
LISTENER_FAILURES = Counter("gateway_finish_listener_failures_total", "Finish-hook listeners that raised.")

# --- sampled per worker (gateway/sampler.py) -----------------------------------------------

BREAKER = Gauge(
    "gateway_breaker_state", "Circuit breaker per deployment and worker: 0 closed, 1 half-open, 2 open.",
    ("deployment",), multiprocess_mode="liveall")
PROCESS_CPU = Gauge("gateway_process_cpu_seconds", "CPU time of the worker (user + system).", multiprocess_mode="liveall")
PROCESS_RSS = Gauge("gateway_process_resident_memory_bytes", "Resident memory of the worker.", multiprocess_mode="liveall")
PROCESS_FDS = Gauge("gateway_process_open_fds", "Open file descriptors of the worker.", multiprocess_mode="liveall")
PROCESS_MAX_FDS = Gauge("gateway_process_max_fds", "The worker's file descriptor limit.", multiprocess_mode="livemin")
CONTAINER_MEMORY = Gauge(
    "gateway_container_memory_bytes", "The cgroup's memory use (memory.current): what an OOM kill is judged on.",
    multiprocess_mode="livemax")
CONTAINER_MEMORY_LIMIT = Gauge(
    "gateway_container_memory_limit_bytes", "The cgroup's memory limit (memory.max; 0: none).", multiprocess_mode="livemax")
CACHE_ENTRIES = Gauge("gateway_cache_entries", "Entries in the worker's cache.", multiprocess_mode="liveall")
CACHE_MAX_ENTRIES = Gauge("gateway_cache_max_entries", "The cache's entry bound.", multiprocess_mode="livemax")
VERIFY_PENDING = Gauge(
    "gateway_cache_verifier_pending", "Semantic verifications waiting on the embedding model.", multiprocess_mode="livesum")
VERIFY_SHED = Counter("gateway_cache_verifier_shed_total", "Semantic lookups answered miss because the verifier queue was full.")
VERIFIER_READY = Gauge("gateway_cache_verifier_ready", "1 when the embedding model is loaded.", multiprocess_mode="liveall")
REDIS_UP = Gauge("gateway_redis_up", "1 when the worker's Redis connection works.", multiprocess_mode="liveall")
REDIS_ERRORS = Counter("gateway_redis_errors_total", "Redis commands that failed (the cache fell back to memory).")
REDIS_LATENCY = Histogram(
    "gateway_redis_ping_seconds", "Round trip of a Redis PING, sampled.", buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0))
REDIS_MEMORY = Gauge("gateway_redis_memory_bytes", "Redis used_memory.", multiprocess_mode="livemax")
REDIS_MAX_MEMORY = Gauge("gateway_redis_maxmemory_bytes", "Redis maxmemory (0: no limit).", multiprocess_mode="livemax")
ACCESS_LOG_DROPPED = Counter("gateway_access_log_dropped_total", "Access-log lines dropped because the writer fell behind.")

_database: dict[str, Any] = {}


def database_pool_metrics() -> dict[str, Any]:
    """HOOK for the database layer (a later issue; the gateway has no database yet).

    The pool calls this once and then sets ``in_use`` / ``overflow``, increments
    ``waits`` / ``timeouts`` and observes ``query_seconds``. Created on first
    call so no always-zero series pretends a pool exists.
    """
    if not _database:
        _database.update(
            in_use=Gauge("gateway_db_pool_in_use", "Database connections checked out.", multiprocess_mode="livesum"),
            overflow=Gauge("gateway_db_pool_overflow", "Connections beyond the pool size.", multiprocess_mode="livesum"),
            waits=Counter("gateway_db_pool_waits_total", "Checkouts that had to wait for a connection."),
            timeouts=Counter("gateway_db_pool_timeouts_total", "Checkouts that gave up after DATABASE_POOL_TIMEOUT."),
            query_seconds=Histogram("gateway_db_query_duration_seconds", "Database query latency.", buckets=LATENCY_BUCKETS),
        )
    return _database


def websocket_opened() -> None:
    """The /ws surface calls this when a connection is accepted..."""
    WS_ACTIVE.inc()


def websocket_closed() -> None:
    """...and this once when it ends, however it ends."""
    WS_ACTIVE.dec()


class Bounded:
    """A label's values, capped: the first ``cap`` distinct values pass, later ones become ``other``."""

    __slots__ = ("seen", "cap")

    def __init__(self, cap: int = MAX_VALUES) -> None:
        self.seen: set[str] = set()
        self.cap = cap

    def __call__(self, value: str | None) -> str:
        if value is None:
            return "none"
        if value in self.seen:
            return value
        if len(self.seen) >= self.cap:
            return "other"
        self.seen.add(value)
        return value


class _Count:
    """A counter child's increments since the last flush: a float add on the request path."""

    __slots__ = ("child", "n")

    def __init__(self, child) -> None:
        self.child = child
        self.n = 0.0

    def inc(self, n: float = 1.0) -> None:
        self.n += n

    def flush(self) -> None:
        n, self.n = self.n, 0.0
        if n:
            self.child.inc(n)


class _Observe:
    """A histogram child's observations since the last flush: a bisect and two adds on the request path."""

    __slots__ = ("child", "bounds", "counts", "total", "dirty")

    def __init__(self, child) -> None:
        self.child = child
        self.bounds = child._upper_bounds  # the library's own bucket bounds (+Inf last)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.dirty = False

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # buckets are "le": the first bound >= value
        self.total += value
        self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        counts, self.counts = self.counts, [0] * len(self.bounds)
        total, self.total, self.dirty = self.total, 0.0, False
        # The child's per-bucket values (non-cumulative, as its own observe() keeps them) and its sum.
        for value, n in zip(self.child._buckets, counts):
            if n:
                value.inc(n)
        self.child._sum.inc(total)


class Recorder:
    """The per-request recording: ``on_finish`` (finish hook) and ``on_attempt`` (upstream stage).

    Nothing here touches prometheus-client's values on the request path: in multiprocess mode
    each of them is a lock, a getpid() and an mmap write (measured 8 µs apiece, ~12 per
    request, ~96 µs per request on this host). Increments go to plain per-child buffers that
    ``flush()`` writes out, once a second from the sampler and before this worker renders a scrape.
    """

    def __init__(self, prices: Prices) -> None:
        self.prices = prices
        self.models = Bounded()
        self.keys = Bounded()
        self.deployments = Bounded()
        self._children: dict[tuple, _Count | _Observe] = {}  # (metric id, *labels) -> buffer
        # Series of a closed label set exist from the start at 0: rate() needs a sample before the first event.
        for tier in ("exact", "semantic"):
            self._child(CACHE_HITS, tier)
        for kind in ("client", "policy", "provider", "gateway"):
            self._child(FAILED, kind)
        self._cache_requests = self._child(CACHE_REQUESTS)
        self._hedges = self._child(HEDGES)
        self._similarity = self._child(SIMILARITY)

    def _child(self, metric, *labels: str):
        key = (id(metric), *labels)
        buf = self._children.get(key)
        if buf is None:
            child = metric.labels(*labels) if labels else metric
            buf = self._children[key] = _Observe(child) if isinstance(metric, Histogram) else _Count(child)
        return buf

    def flush(self) -> None:
        for buf in list(self._children.values()):
            buf.flush()

    def on_attempt(self, d, seconds: float, err) -> None:
        model = self.models(d.model)
        self._child(UPSTREAM_DURATION, d.provider, model).observe(seconds)
        self._child(UPSTREAM_REQUESTS, d.provider, model, "none" if err is None else error_type(err)).inc()

    def on_finish(self, req, o) -> None:
        elapsed = o.finished - o.started
        status = str(o.status) if o.status else CLIENT_CLOSED
        self._child(HTTP_DURATION, o.method, o.route, status).observe(elapsed)
        self._child(HTTP_REQUESTS, o.method, o.route, status).inc()
        if o.route != CHAT_ROUTE:
            return
        self._child(OVERHEAD, o.surface).observe(max(0.0, elapsed - o.upstream_seconds))
        if o.error_type is not None:
            self._child(FAILED, o.error_type).inc()
            if o.status == 429 and o.error_type == "policy":
                self._child(RATE_LIMITED, self.keys(o.key_name)).inc()
        cache = o.cache
        if cache is not None and cache != "bypass":
            self._cache_requests.inc()
            if cache == "hit":
                self._child(CACHE_HITS, "exact").inc()
            elif cache == "semantic-hit":
                self._child(CACHE_HITS, "semantic").inc()
                if o.similarity is not None:
                    self._similarity.observe(o.similarity)
        if o.status != 200 or req is None:
            return
        if o.from_cache:
            primary = req.group.deployments[0] if req.group is not None and req.group.deployments else None
            self._priced(SAVED, primary.provider if primary else "cache", primary.model if primary else o.model, o)
            return
        d = o.deployment
        if d is None:
            return
        model = self.models(d.model)
        key = self.keys(o.key_name)
        self._child(TOKENS, d.provider, model, key, "prompt").inc(o.prompt_tokens)
        self._child(TOKENS, d.provider, model, key, "completion").inc(o.completion_tokens)
        self._priced(COST, d.provider, d.model, o)
        if o.failover:
            self._child(FAILOVERS, self.deployments(d.name)).inc()
        if o.hedged:
            self._hedges.inc()
        first = o.first_chunk_seconds
        if first is not None and o.surface != "rest":
            self._child(TTFT, d.provider, model).observe(first)
            if o.chunks > 1:
                self._child(CHUNK_GAP, d.provider, model).observe((elapsed - first) / (o.chunks - 1))

    def _priced(self, metric, provider: str, model: str, o) -> None:
        price = self.prices.known(model)
        if price is None:
            self._child(UNPRICED, self.models(model)).inc()
            return
        self._child(metric, provider, self.models(model), self.keys(o.key_name)).inc(
            price.cost(o.prompt_tokens, o.completion_tokens, o.cached_tokens))


_recorder: Recorder | None = None


def install(finish, prices: Prices) -> Recorder:
    """Register the recording with ``finish`` and the upstream stage (the latter once per process)."""
    global _recorder
    if _recorder is None:
        _recorder = Recorder(prices)
        upstream.attempt_listeners.append(lambda d, s, e: _recorder.on_attempt(d, s, e))
    else:
        _recorder.prices = prices
    finish.add(_recorder.on_finish)
    return _recorder


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> tuple[bytes, str]:
    """The exposition of every worker (multiprocess mode) or of this process."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def flush() -> None:
    """Write this worker's buffered increments to the shared values."""
    if _recorder is not None:
        _recorder.flush()


def worker_exit(pid: int | None = None) -> None:
    """Write what is buffered, then drop this worker's live gauges (its counters stay: totals never go down)."""
    flush()
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid or os.getpid(), path)
