"""The access log: one JSON line per request, from the finish hook.

The listener only builds the line (orjson) and appends it to a buffer; the
buffer is handed to a writer thread every ``flush_seconds`` (or sooner when
it is big), so a slow terminal, pipe or disk never stalls the event loop. If
the writer falls ``max_pending`` batches behind, batches are dropped and
counted (``gateway_access_log_dropped_total``) rather than queued without
bound. On by default at ``LOG_LEVEL`` INFO or DEBUG; ``GATEWAY_ACCESS_LOG``
says where (``-`` stderr, a file path, or ``off``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time

import orjson

from gateway.pricing import Prices

LEVELS_ON = frozenset({"DEBUG", "INFO"})


def enabled(settings) -> bool:
    return settings.access_log != "off" and settings.log_level in LEVELS_ON


def _us(seconds: float | None) -> int | None:
    # Integer microseconds: exact enough, and cheaper to make and print than rounded floats.
    return None if seconds is None else int(seconds * 1e6)


def line(req, o, prices: Prices) -> dict:
    """What one request did, for humans and log pipelines (the secret key never appears: its name does)."""
    elapsed = o.finished - o.started
    if o.model is None:  # refused before its model was known, or not a chat route
        entry = {
            "ts": time.time(), "request_id": o.request_id, "method": o.method, "route": o.route, "status": o.status,
            "latency_us": int(elapsed * 1e6), "overhead_us": int(max(0.0, elapsed - o.upstream_seconds) * 1e6),
        }
        if o.key_name is not None:
            entry["key"] = o.key_name
        if o.error_type is not None:
            entry["error_type"] = o.error_type
            entry["error_code"] = o.error_code
        return entry
    d = o.deployment
    model = d.model if d is not None else None
    if model is None and req is not None and req.group is not None and req.group.deployments:
        model = req.group.deployments[0].model  # a cache hit: priced as its primary deployment would have been
    price = prices.known(model)
    cost = price.cost(o.prompt_tokens, o.completion_tokens, o.cached_tokens) if price and o.status == 200 else 0.0
    cached = o.from_cache
    return {
        "ts": time.time(), "request_id": o.request_id, "method": o.method, "route": o.route, "status": o.status,
        "latency_us": int(elapsed * 1e6), "overhead_us": int(max(0.0, elapsed - o.upstream_seconds) * 1e6),
        "key": o.key_name, "surface": o.surface, "model": o.model,
        "provider": d.provider if d is not None else None, "deployment": d.name if d is not None else None,
        "attempts": o.attempts, "failover": o.failover, "hedged": o.hedged,
        "cache": o.cache, "similarity": o.similarity,
        "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens, "cached_tokens": o.cached_tokens,
        "cost_usd": 0.0 if cached else cost, "saved_usd": cost if cached else 0.0,
        "upstream_us": int(o.upstream_seconds * 1e6), "ttft_us": _us(o.first_chunk_seconds),
        "error_type": o.error_type, "error_code": o.error_code, "client_gone": o.client_gone,
        "usage_estimated": o.usage_estimated,
    }


class AccessLog:
    def __init__(self, target: str, prices: Prices, flush_seconds: float = 0.05,
                 flush_lines: int = 256, max_pending: int = 1000) -> None:
        self.prices = prices
        self.flush_seconds = flush_seconds
        self.flush_lines = flush_lines
        self.max_pending = max_pending
        self.dropped = 0  # lines
        self._own_fd = target != "-"
        self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if self._own_fd else 2
        self._buf: list[bytes] = []
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None  # started by the first flush

    def on_finish(self, req, outcome) -> None:
        buf = self._buf
        if not buf:
            asyncio.get_running_loop().call_later(self.flush_seconds, self.flush)
        buf.append(orjson.dumps(line(req, outcome, self.prices), option=orjson.OPT_APPEND_NEWLINE))
        if len(buf) >= self.flush_lines:
            self.flush()

    def flush(self) -> None:
        buf = self._buf
        if not buf:
            return
        self._buf = []
        if self._queue.qsize() >= self.max_pending:
            self.dropped += len(buf)  # the metrics sampler forwards this as gateway_access_log_dropped_total
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="access-log", daemon=True)
            self._thread.start()
        self._queue.put(b"".join(buf))

    def _write(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError:
                logging.getLogger("gateway").exception("access log write failed")

    def close(self, timeout: float = 2.0) -> None:
        """Write what is buffered, then stop the writer (at worker shutdown)."""
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
        if self._own_fd:
            os.close(self._fd)
