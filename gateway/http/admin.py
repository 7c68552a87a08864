"""Everything but chat: models, health, readiness, usage, providers and the admin endpoints.

A plain Starlette app: these routes are not the hot path. Errors render in
OpenAI's shape through ``GatewayError``; ``x-request-id`` and the overhead
header are added by the ASGI dispatcher from the request's ``Outcome``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import reload as reloading
from gateway.auth import ApiKey, require_admin
from gateway.config import ConfigError
from gateway.errors import GatewayError
from gateway.http.relay import INTERNAL
from gateway.keys import fields as key_fields
from gateway.ledger import reports

log = logging.getLogger("gateway")

ROUTES = (
    "/health", "/ready", "/v1/models", "/v1/models/{model}", "/v1/usage", "/v1/providers",
    "/admin/reload", "/admin/cache", "/admin/cache/flush", "/metrics", "/admin/keys", "/admin/keys/{key_id}",
    "/admin/usage", "/admin/limits",
)


def route_template(path: str) -> str:
    """The route a path matches, as a bounded label (never the raw path)."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path.startswith("/admin/keys/"):
        return "/admin/keys/{key_id}"
    return "unmatched"


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def error_response(err: GatewayError) -> Response:
    return Response(err.body(), err.status, headers=err.headers, media_type="application/json")


def build(gateway) -> Starlette:
    """The Starlette app for ``gateway`` (an ``http.asgi.Gateway``); reads its current snapshot per request."""

    def key_of(request: Request) -> ApiKey:
        return gateway.admission.authenticate(gateway.snapshot.keys, request.headers)

    async def health(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def ready(request: Request) -> Response:
        settings = gateway.snapshot.settings
        providers = {name: bool(p.api_key) for name, p in settings.providers.items()}
        ok = any(providers.values()) or bool(settings.models)
        redis = "not_configured"
        cache = gateway.cache
        if settings.redis_url:
            redis = "up" if cache is not None and cache.stats()["redis"]["up"] else "down"
        body = {
            # Redis down is "degraded", still 200: the cache falls back to this worker's memory,
            # and taking every instance out of a load balancer over it would turn a slower
            # cache into an outage.
            "status": ("degraded" if redis == "down" else "ready") if ok else "not_ready",
            "redis": redis,
            "providers": {name: ("configured" if v else "not_configured") for name, v in providers.items()},
            "simulated": settings.simulated,
            # This worker's circuit breakers (closed | open | half_open); open ones do not make it unready:
            # with a whole group open the gateway still answers at once (503 + Retry-After).
            "breakers": gateway.router.breaker_states(),
        }
        return json_response(body, 200 if ok else 503)

    async def providers_report(request: Request) -> Response:
        """Deployment health as this worker sees it: breaker state, EWMA latency, recent error rate."""
        key_of(request)
        return json_response({"object": "list", "worker": os.getpid(), "data": gateway.router.snapshot()})

    async def admin_reload(request: Request) -> Response:
        require_admin(key_of(request))
        try:
            settings = gateway.reload_config()
        except ConfigError as exc:
            raise GatewayError(400, f"Config not reloaded: {exc}", code="invalid_config") from None
        # Other Granian workers reload on SIGHUP (gateway/reload.py); ?scope=worker reloads this one only.
        signalled = 0 if request.query_params.get("scope") == "worker" else reloading.signal_siblings()
        return json_response(
            {"status": "reloaded", "worker": os.getpid(), "workers_signalled": signalled, "models": sorted(settings.models)}
        )

    async def admin_cache_stats(request: Request) -> Response:
        require_admin(key_of(request))
        if gateway.cache is None:
            return json_response({"enabled": False, "worker": os.getpid()})
        return json_response({"enabled": True, "worker": os.getpid(), **gateway.cache.stats()})

    async def admin_limits(request: Request) -> Response:
        require_admin(key_of(request))
        if gateway.limiter is None:
            return json_response({"enabled": False, "worker": os.getpid()})
        return json_response({"enabled": True, "worker": os.getpid(), **gateway.limiter.report()})

    async def admin_cache_flush(request: Request) -> Response:
        """Drop a namespace (``{"namespace": "x"}``) or everything (``{}``), here, in Redis and in every worker."""
        require_admin(key_of(request))
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise GatewayError(400, "Body must be JSON: {\"namespace\": \"name\"} or {}.", code="invalid_json") from None
        namespace = body.get("namespace") if isinstance(body, dict) else None
        if namespace is not None and not isinstance(namespace, str):
            raise GatewayError(400, "'namespace' must be a string or null.", param="namespace")
        cache = gateway.cache
        try:
            removed = await cache.flush(namespace) if cache is not None else 0
        except ValueError as exc:
            raise GatewayError(400, f"Cannot flush: {exc}.", param="namespace", code="invalid_cache_namespace") from None
        return json_response({"flushed": namespace or "*", "removed": removed, "worker": os.getpid()})

    async def metrics_report(request: Request) -> Response:
        """Prometheus exposition, summed over every worker (multiprocess mode); unauthenticated like /health."""
        if gateway.sampler is None:
            raise GatewayError(404, "Metrics are off on this gateway (GATEWAY_METRICS=off).", code="metrics_disabled")
        from gateway import metrics

        metrics.flush()
        gateway.sampler.sample()  # this worker fresh; the others are at most one interval (1 s, 2 s for gauges) behind
        body, content_type = await run_in_threadpool(metrics.render)  # reads every worker's files: off the loop
        return Response(body, media_type=content_type)

    async def models(request: Request) -> Response:
        key_of(request)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "gateway"} for m in gateway.router.model_names()]
        return json_response({"object": "list", "data": data})

    async def model(request: Request) -> Response:
        key_of(request)
        name = request.path_params["model"]
        group = gateway.router.resolve(name)
        return json_response({"id": name, "object": "model", "created": 0, "owned_by": group.deployments[0].provider})

    async def usage_report(request: Request) -> Response:
        key = key_of(request)
        every = request.query_params.get("all") in ("1", "true")
        if every:
            require_admin(key)
        if gateway.accounting is None:  # DATABASE_URL=off: this worker's in-memory counters
            return json_response({"object": "list", "data": gateway.usage.report(None if every else key.name)})
        return await ledger_report(request, None if every else key.name)

    async def admin_usage(request: Request) -> Response:
        require_admin(key_of(request))
        if gateway.accounting is None:
            return json_response({"object": "list", "data": gateway.usage.report(request.query_params.get("key"))})
        return await ledger_report(request, request.query_params.get("key"))

    async def ledger_report(request: Request, key_name: str | None) -> Response:
        """Per key and model (``?by=day``: and day), ``since``/``until``/``model`` filters, ``?format=csv``."""
        q = request.query_params
        by_day = q.get("by") == "day"
        fmt = q.get("format", "json")
        if fmt not in ("json", "csv"):
            raise GatewayError(400, "'format' must be json or csv.", param="format")
        acc = gateway.accounting
        await acc.writer.flush(2.0)  # this worker's rows so far, so a caller sees its own last request
        rows = await reports.report(
            acc.engine, key=key_name, model=q.get("model"), since=reports.parse_day("since", q.get("since")),
            until=reports.parse_day("until", q.get("until")), by_day=by_day,
        )
        if fmt == "csv":
            return Response(reports.to_csv(rows, by_day), media_type="text/csv; charset=utf-8")
        return json_response({"object": "list", "data": rows})

    # --- virtual keys (gateway/keys/) ---------------------------------------------------

    def key_store():
        if gateway.accounting is None:
            raise GatewayError(400, "Virtual keys need a database; DATABASE_URL is off.", code="database_disabled")
        return gateway.accounting

    async def json_body(request: Request) -> Any:
        raw = await request.body()
        try:
            return orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise GatewayError(400, "Body must be a JSON object.", code="invalid_json") from None

    async def admin_keys(request: Request) -> Response:
        require_admin(key_of(request))
        acc = key_store()
        if request.method == "GET":
            revoked = request.query_params.get("revoked") in ("1", "true")
            return json_response({"object": "list", "data": await acc.store.list(include_revoked=revoked)})
        record, secret = await acc.store.create(key_fields.parse(await json_body(request), creating=True))
        await acc.keys.changed()
        return json_response({**record, "key": secret}, 201)  # the secret, this once: only its hash is kept

    async def admin_key(request: Request) -> Response:
        require_admin(key_of(request))
        acc = key_store()
        key_id = request.path_params["key_id"]
        if request.method == "DELETE":
            record = await acc.store.revoke(key_id)
        else:
            record = await acc.store.update(key_id, key_fields.parse(await json_body(request), creating=False))
        await acc.keys.changed()
        return json_response(record)

    async def responses_api(request: Request) -> Response:
        # OpenAI's Responses API is a later issue; the SDK's client.responses.create must not get a bare "Unknown endpoint".
        raise GatewayError(
            404,
            "The Responses API (/v1/responses) is not served by this gateway yet; use POST /v1/chat/completions.",
            code="endpoint_not_supported",
        )

    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            err = GatewayError(404, f"Unknown endpoint: {request.method} {request.url.path}", code="not_found")
        elif exc.status_code == 405:
            err = GatewayError(405, f"Method {request.method} is not allowed on {request.url.path}.", code="method_not_allowed")
        else:
            err = GatewayError(exc.status_code, str(exc.detail), code=None)
        return error_response(err)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected failure on %s %s", request.method, request.url.path)
        return error_response(INTERNAL)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/v1/models", models),
            Route("/v1/models/{model:path}", model),
            Route("/v1/usage", usage_report),
            Route("/v1/providers", providers_report),
            Route("/v1/responses", responses_api, methods=["GET", "POST"]),
            Route("/v1/responses/{rest:path}", responses_api, methods=["GET", "POST", "DELETE"]),
            Route("/admin/reload", admin_reload, methods=["POST"]),
            Route("/admin/cache", admin_cache_stats),
            Route("/admin/limits", admin_limits),
            Route("/admin/cache/flush", admin_cache_flush, methods=["POST"]),
            Route("/metrics", metrics_report),
            Route("/admin/keys", admin_keys, methods=["GET", "POST"]),
            Route("/admin/keys/{key_id}", admin_key, methods=["PATCH", "DELETE"]),
            Route("/admin/usage", admin_usage),
        ],
        exception_handlers={GatewayError: gateway_error, HTTPException: http_error, Exception: unexpected},
        lifespan=gateway.lifespan,
    )
