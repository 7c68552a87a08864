"""The ASGI application Granian serves: dispatch, start-up and reload.

``POST /v1/chat/completions`` goes to a raw ASGI handler (``http.chat``): it
is the hot path, and Starlette's routing and middleware stack measured at
roughly a third of a constant-JSON app's throughput (../shared/spec/anchors.md).
Everything else is a plain Starlette app (``http.admin``). Both end in the
same finish hook and carry headers from the same builder.
"""

from __future__ import annotations

import gc
import logging
import os
from contextlib import asynccontextmanager
from time import perf_counter
from typing import AsyncIterator

from starlette.types import Receive, Scope, Send

from gateway import accesslog
from gateway import ratelimit
from gateway import reload as reloading
from gateway.accounting import Accounting
from gateway.cache import Cache
from gateway.config import ConfigError, Settings, load_settings
from gateway.http import admin, chat, headers, messages
from gateway.http.relay import Relay
from gateway.timers import Timers
from gateway.pipeline.admission import Admission
from gateway.pipeline.finish import Finish
from gateway.pipeline.outcome import Outcome
from gateway.pipeline.pipeline import Pipeline
from gateway.routing.router import Router
from gateway.routing.resolve import Snapshot
from gateway.usage import Usage
from gateway.ws import WebSockets

log = logging.getLogger("gateway")


class Gateway:
    """The ASGI callable: one per worker process."""

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or load_settings()
        self.router = Router(settings)
        self.cache = Cache(settings.cache_config, settings.redis_url) if settings.cache_config.enabled else None
        self.usage = Usage()
        self.finish = Finish()
        self.sampler = None  # gateway/sampler.py: gauges read on a timer; None when metrics are off
        if settings.metrics:
            from gateway import metrics  # not imported at all with metrics off: their cost is then nil
            from gateway.sampler import Sampler

            metrics.install(self.finish, settings.prices)
            self.sampler = Sampler(self)
        if settings.traces:
            from gateway import tracing  # the optional extra: imported only when on

            if tracing.tracer is None:
                tracing.enable()
            self.finish.add(tracing.on_finish)
        self.access_log = None
        if accesslog.enabled(settings):
            self.access_log = accesslog.AccessLog(settings.access_log, settings.prices)
            self.finish.add(self.access_log.on_finish)
        self.admission = Admission(self.router, self.cache)
        self.limiter = None
        if settings.rate_limit_enabled:
            t = settings.rate_limit_redis_timeout
            redis = ratelimit.connect(settings.redis_url, settings.redis_cluster, t) if settings.redis_url else None
            self.limiter = ratelimit.Limiter(lambda: self.router.state.settings, redis, timeout=t)
            self.admission.limiters.append(self.limiter)
            self.finish.add(self.limiter.on_finish)  # settles token usage, weighs cache hits
        self.pipeline = Pipeline(self.router, self.cache)
        # Keys, budgets and the usage ledger (gateway/accounting.py); DATABASE_URL=off: env/TOML keys, in-memory usage.
        self.accounting = Accounting(settings) if settings.database_url else None
        if self.accounting is not None:
            self.accounting.install(self.admission, self.finish)
        else:
            self.finish.add(self.usage.on_finish)  # the ledger's roll-ups answer /v1/usage when it is on
        self.relay = Relay(self.admission, self.pipeline, self.finish, settings.stream_ping_seconds)
        self.web = admin.build(self)
        # Fixed for the process's life, like the connection limits it is derived from.
        self.body_reads = chat.BodyReads(settings.max_body_reads or settings.worker_connections // 2)
        self.timers = Timers()  # the per-request deadlines that almost never fire (gateway/timers.py)
        self.ws = WebSockets(self)

    @property
    def snapshot(self) -> Snapshot:
        """The configuration new requests are admitted under (settings, keys, routing)."""
        return self.router.state

    @property
    def settings(self) -> Settings:
        return self.router.state.settings

    # --- lifespan ---------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app) -> AsyncIterator[None]:
        sighup = reloading.install(self._on_sighup)  # gateway/reload.py: how reloads reach every worker
        if self.limiter is not None:
            await self.limiter.start()
        if self.cache is not None:
            await self.cache.start()  # loads live entries from Redis; never fails on a Redis outage
        if self.sampler is not None:
            self.sampler.start()
        if self.accounting is not None:
            await self.accounting.start()
        yield
        if sighup:
            reloading.uninstall()
        # Granian lets in-flight requests finish before this runs; then the pools close.
        await self.router.close()
        if self.limiter is not None:
            await self.limiter.close()  # unspent leases go back to the shared bucket
        if self.cache is not None:
            await self.cache.close()
        if self.access_log is not None:
            self.access_log.close()
        if self.sampler is not None:
            await self.sampler.stop()
            from gateway import metrics

            metrics.worker_exit()
        if self.accounting is not None:
            await self.accounting.close()  # after the last request: its ledger row is written first

    def reload_config(self) -> Settings:
        """Re-read the environment and GATEWAY_CONFIG; swap one snapshot.

        A bad file raises ConfigError and changes nothing; requests in flight
        keep the snapshot they were admitted under. Server settings (address,
        workers, connection limits) and cache settings still need a restart.
        """
        settings = load_settings()
        self.router.reload(settings)  # builds a new Snapshot (breaker and latency state carry over), assigns it once
        return settings

    def _on_sighup(self) -> None:
        try:
            settings = self.reload_config()
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return
        log.info("SIGHUP: config reloaded in worker %d (%d model groups)", os.getpid(), len(settings.models))

    # --- dispatch ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self.ws(scope, receive, send)  # /ws (gateway/ws.py); other paths are refused there
                return
            await self.web(scope, receive, send)  # lifespan
            return
        route = chat.ROUTES.get(scope["path"])
        if route is not None:  # chat and embeddings, straight to the relay: one coroutine layer fewer per resume
            await chat.serve(self, scope, receive, send, chat.HTTPSurface, *route)
            return
        if scope["path"] in messages.PATHS:
            await messages.handle(self, scope, receive, send)
            return
        outcome = Outcome(
            chat.request_id(_header(scope, b"x-request-id")), perf_counter(),
            route=admin.route_template(scope["path"]), method=scope["method"],
        )

        async def send_with_ids(message: dict) -> None:
            if message["type"] == "http.response.start":
                outcome.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *headers.build(outcome)]}
            await send(message)

        try:
            await self.web(scope, receive, send_with_ids)
        finally:
            self.finish.run(None, outcome)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


def create_app() -> Gateway:
    """Granian's factory target: each worker builds its own app from the environment."""
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Gateway(settings)
    # Start-up objects never die: freezing them keeps full collections from rescanning
    # them (+8 % requests/s alone), and a higher first threshold makes collections rare:
    # at 50 connections +9-10 % requests/s and half the streaming P99 against CPython's 700.
    # 10,000 rather than more keeps each young collection near 0.14 ms once the cache
    # holds long-lived entries (1.5 ms at 50,000).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
    return app
