"""Keys, budgets and the usage ledger against real databases: SQLite and PostgreSQL (tests/pg_server.py).

The gateway's ASGI app runs in this process (as in tests/test_lifecycle.py)
so every exit path can be driven exactly; its upstream is the real simulator
over loopback, its database a fresh one per test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import subprocess
import sys
import time
import uuid

import orjson
import pytest
import sqlalchemy as sa

from gateway.config import load_settings
from gateway.db import SchemaBehind, check_schema, create_engine, upgrade
from gateway.db.schema import api_keys, usage, usage_daily
from gateway.http.asgi import Gateway
from gateway.pricing import Prices
from gateway.request import prompt_estimate
from tests.harness import ADMIN_KEY, API_KEY, simulator_env
from tests.test_lifecycle import Exchange, _reset, chat, scope, sim  # noqa: F401 - fixtures: the simulator, reset per test

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def bearer(key: str) -> list:
    return [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]


async def call(gw, body: bytes = b"", key: str = API_KEY, method: str = "POST", path: str = "/v1/chat/completions",
               query: bytes = b"", ex: Exchange | None = None) -> Exchange:
    ex = ex or Exchange(body)
    s = scope(method, path, bearer(key))
    s["query_string"] = query
    await asyncio.wait_for(gw(s, ex.receive, ex.send), 20)
    return ex


class Running:
    """Gateways (one per simulated worker) over one database, started and closed like Granian's lifespan would."""

    def __init__(self, sim, url: str, **env) -> None:
        self.sim, self.url, self.env = sim, url, env
        self.apps: list[Gateway] = []

    async def add(self, **env) -> Gateway:
        settings = load_settings(simulator_env(self.sim.base_url) | {
            "GATEWAY_API_KEYS": API_KEY, "GATEWAY_ADMIN_KEYS": ADMIN_KEY, "GATEWAY_CACHE": "off",
            "GATEWAY_STREAM_PING_SECONDS": "0.1", "DATABASE_URL": self.url, "RATE_LIMIT_ENABLED": "false",
            **self.env, **env,
        })
        gw = Gateway(settings)
        if gw.cache is not None:
            await gw.cache.start()
        await gw.accounting.start()
        self.apps.append(gw)
        return gw

    async def close(self) -> None:
        for gw in self.apps:
            await gw.accounting.close()
            await gw.router.close()
            if gw.cache is not None:
                await gw.cache.close()


@pytest.fixture
async def running(sim, db_url):
    r = Running(sim, db_url)
    yield r
    await r.close()


async def select(url: str, query) -> list:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(query)).mappings().all())
    finally:
        await engine.dispose()


async def ledger(url: str) -> dict[str, list]:
    """Ledger rows by request id."""
    out: dict[str, list] = {}
    for r in await select(url, sa.select(usage)):
        out.setdefault(r["request_id"], []).append(r)
    return out


# --- schema --------------------------------------------------------------------------------


async def test_migrations_up_from_empty(empty_db):
    from gateway.config.validate import database_url

    url = database_url("DATABASE_URL", empty_db)
    engine = create_engine(url)
    try:
        with pytest.raises(SchemaBehind, match="gateway db upgrade"):
            await check_schema(engine)
        upgrade(url)
        await check_schema(engine)
        async with engine.connect() as conn:
            names = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
        assert {"api_keys", "usage", "usage_daily", "alembic_version"} <= names
    finally:
        await engine.dispose()


async def test_a_gateway_refuses_a_schema_behind(sim, empty_db):
    from gateway.config.validate import database_url

    r = Running(sim, database_url("DATABASE_URL", empty_db))
    with pytest.raises(SchemaBehind, match="gateway db upgrade"):
        await r.add()


async def test_pool_settings_honoured(db_url):
    from gateway.db.engine import settings_engine

    settings = load_settings({"DATABASE_URL": db_url, "DATABASE_POOL_SIZE": "2", "DATABASE_MAX_OVERFLOW": "1",
                              "DATABASE_POOL_TIMEOUT": "0.3"})
    engine = settings_engine(settings)
    try:
        assert engine.pool.size() == 2 and engine.pool._max_overflow == 1 and engine.pool._timeout == 0.3
        held = [await engine.connect() for _ in range(3)]  # pool size + overflow
        t0 = time.monotonic()
        with pytest.raises(sa.exc.TimeoutError):
            await engine.connect()
        assert 0.25 <= time.monotonic() - t0 < 3
        for c in held:
            await c.close()
    finally:
        await engine.dispose()


# --- virtual keys --------------------------------------------------------------------------


async def test_key_lifecycle_and_hashed_storage(running, db_url):
    gw = await running.add()
    ex = await call(gw, orjson.dumps({"name": "team-a", "owner": "ana", "team": "search", "models": ["gpt-4o-mini"],
                                      "budget_usd": 5, "requests_per_minute": 600, "burst": 50}),
                    key=ADMIN_KEY, path="/admin/keys")
    assert ex.status == 201, ex.text
    created = orjson.loads(ex.text)
    secret = created["key"]
    assert secret.startswith("gw-") and created["budget_period"] == "month" and "key_hash" not in created

    stored = (await select(db_url, sa.select(api_keys)))[0]
    assert stored["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert all(secret not in str(v) for v in stored.values())  # the secret itself is nowhere in the row

    assert (await call(gw, chat(), key=secret)).status == 200
    key = gw.accounting.keys(secret)
    assert (key.name, key.owner, key.team, key.requests_per_minute, key.burst) == ("team-a", "ana", "search", 600, 50)
    forbidden = await call(gw, chat("gpt-4o"), key=secret)
    assert forbidden.status == 403 and orjson.loads(forbidden.text)["error"]["code"] == "model_not_allowed"

    listed = orjson.loads((await call(gw, method="GET", key=ADMIN_KEY, path="/admin/keys")).text)["data"]
    assert [k["name"] for k in listed] == ["team-a"] and "key" not in listed[0] and "key_hash" not in listed[0]
    assert (await call(gw, method="GET", key=secret, path="/admin/keys")).status == 403  # not an admin key

    ex = await call(gw, orjson.dumps({"models": None}), key=ADMIN_KEY, method="PATCH", path=f"/admin/keys/{created['id']}")
    assert ex.status == 200 and orjson.loads(ex.text)["models"] is None
    assert (await call(gw, chat("gpt-4o"), key=secret)).status == 200

    # Another worker learns of the revocation at its next refresh (no Redis here).
    other = await running.add(GATEWAY_KEY_REFRESH_SECONDS="0.1")
    assert (await call(other, chat(), key=secret)).status == 200
    assert (await call(gw, key=ADMIN_KEY, method="DELETE", path=f"/admin/keys/{created['id']}")).status == 200
    for app in (gw, other):
        deadline = time.monotonic() + 3
        while (ex := await call(app, chat(), key=secret)).status == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert ex.status == 401 and orjson.loads(ex.text)["error"]["code"] == "invalid_api_key"
    bad = await call(gw, orjson.dumps({"name": "x", "budget_usd": -1}), key=ADMIN_KEY, path="/admin/keys")
    assert bad.status == 400 and orjson.loads(bad.text)["error"]["param"] == "budget_usd"


async def test_an_expired_key_is_refused(running):
    gw = await running.add()
    ex = await call(gw, orjson.dumps({"name": "brief", "expires_at": time.time() + 0.5}), key=ADMIN_KEY, path="/admin/keys")
    secret = orjson.loads(ex.text)["key"]
    assert (await call(gw, chat(), key=secret)).status == 200
    await asyncio.sleep(0.6)
    ex = await call(gw, chat(), key=secret)
    assert ex.status == 401 and orjson.loads(ex.text)["error"]["code"] == "expired_api_key"


# --- the ledger ----------------------------------------------------------------------------


async def cut_by_provider(sim, provider: str, sending) -> Exchange:
    """A stream of ``provider`` that the simulator drops after 0.5 s (every connection refused)."""
    sim.configure(provider, tokens_per_second=20, response_tokens=200)
    task = asyncio.ensure_future(sending)
    await asyncio.sleep(0.5)
    sim.configure("*", mode="refuse")
    try:
        return await task
    finally:
        sim.reset()


async def client_leaves(gw, sim) -> Exchange:
    """An OpenAI stream whose client goes away after 0.4 s."""
    sim.configure("openai", tokens_per_second=10, response_tokens=100)
    ex = Exchange(chat(stream=True))
    task = asyncio.ensure_future(call(gw, ex=ex))
    await asyncio.sleep(0.4)
    ex.left.set()
    await task
    return ex


async def test_one_row_per_request_on_every_path(sim, db_url):
    r = Running(sim, db_url)
    try:
        gw = await r.add()
        cached = await r.add(GATEWAY_CACHE="on")
        seen: dict[str, Exchange] = {}

        async def send(app, body, **kw):
            ex = await call(app, body, **kw)
            seen[ex.headers["x-request-id"]] = ex
            return ex

        rest = await send(gw, chat())
        sse = await send(gw, chat(stream=True))
        bad_json = await send(gw, b"{nope")
        wrong_key = await send(gw, chat(), key="wrong")
        for _ in range(40):  # the cache stores after answering: ask until the repeat is a hit
            hit = await send(cached, chat("gpt-4o", temperature=0))
            if hit.headers.get("x-cache") == "hit":
                break
            await asyncio.sleep(0.05)
        assert hit.headers["x-cache"] == "hit"
        sim.configure("openai", mode="error", error_status=500)
        provider_error = await send(gw, chat())
        sim.reset()
        # A stream the provider cuts after the headers (Anthropic reports usage as it goes).
        cut = await cut_by_provider(sim, "anthropic", send(gw, chat("claude-3-5-haiku-latest", stream=True)))
        # A client that leaves mid-stream.
        ex = await client_leaves(gw, sim)
        seen[ex.headers["x-request-id"]] = ex
        for app in r.apps:
            assert await app.accounting.writer.flush(5)

        rows = await ledger(db_url)
        assert set(rows) == set(seen) and all(len(v) == 1 for v in rows.values())  # exactly one each
        one = {rid: v[0] for rid, v in rows.items()}
        row = one[rest.headers["x-request-id"]]
        assert (row["surface"], row["status"], row["provider"]) == ("rest", 200, "openai")
        assert row["completion_tokens"] > 0 and row["cost_usd"] > 0 and row["latency_ms"] >= row["upstream_ms"] > 0
        # What a request did not have is NULL, never the stand-ins the SQLite writer binds for it ('' and -1.0).
        assert (row["cache"], row["first_chunk_ms"], row["error_type"], row["error_code"]) == (None, None, None, None)
        refused = one[wrong_key.headers["x-request-id"]]
        assert (refused["model"], refused["provider"], refused["deployment"]) == (None, None, None)
        row = one[sse.headers["x-request-id"]]
        assert row["surface"] == "sse" and row["completion_tokens"] > 0 and row["cost_usd"] > 0  # never $0 for a stream
        assert row["first_chunk_ms"] is not None
        assert one[bad_json.headers["x-request-id"]]["status"] == 400
        assert one[bad_json.headers["x-request-id"]]["error_type"] == "client"
        assert one[wrong_key.headers["x-request-id"]]["error_code"] == "invalid_api_key"
        row = one[hit.headers["x-request-id"]]
        assert row["cache"] == "hit" and row["cost_usd"] == 0
        assert one[provider_error.headers["x-request-id"]]["error_type"] == "provider"
        row = one[cut.headers["x-request-id"]]
        assert row["status"] == 200 and row["error_type"] == "provider" and row["prompt_tokens"] > 0 and row["cost_usd"] > 0
        # Anthropic reported the prompt at the start; the output it never reported is estimated from what was relayed.
        assert row["usage_estimated"] and row["completion_tokens"] > 0
        assert one[ex.headers["x-request-id"]]["client_gone"]

        daily = await select(db_url, sa.select(sa.func.sum(usage_daily.c.requests)))
        assert list(daily[0].values())[0] == len(seen)
    finally:
        await r.close()


def _relayed_chars(sse: bytes) -> int:
    """Characters of content the client received in an SSE answer."""
    n = 0
    for line in sse.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in orjson.loads(line[6:]).get("choices") or ():
                n += len((choice.get("delta") or {}).get("content") or "")
    return n


async def test_a_cut_openai_stream_is_priced_from_an_estimate(sim, db_url):
    """OpenAI reports a stream's usage in its last chunk: a stream cut before it (the provider drops the
    connection, or the client leaves) is logged with estimated tokens and their cost, marked so, never $0."""
    r = Running(sim, db_url)
    try:
        gw = await r.add()
        body = orjson.loads(chat(stream=True))
        whole = await call(gw, chat(stream=True))  # a complete stream: the provider's own usage
        provider_cut = await cut_by_provider(sim, "openai", call(gw, chat(stream=True)))
        left = await client_leaves(gw, sim)
        assert await gw.accounting.writer.flush(5)

        one = {rid: v[0] for rid, v in (await ledger(db_url)).items()}
        row = one[whole.headers["x-request-id"]]
        assert not row["usage_estimated"] and row["completion_tokens"] > 0
        prices = Prices()
        for ex, gone in ((provider_cut, False), (left, True)):
            row = one[ex.headers["x-request-id"]]
            relayed = _relayed_chars(ex.text)
            assert relayed > 0 and b'"usage"' not in ex.text  # content went out, no usage ever came
            assert row["usage_estimated"] and row["client_gone"] is gone and row["provider"] == "openai"
            assert row["prompt_tokens"] == prompt_estimate(body)
            assert row["completion_tokens"] == (relayed + 3) // 4 > 0
            assert row["cost_usd"] == pytest.approx(prices.cost("gpt-4o-mini", row["prompt_tokens"], row["completion_tokens"]))
            assert row["cost_usd"] > 0
        assert one[provider_cut.headers["x-request-id"]]["error_type"] == "provider"
        daily = await select(db_url, sa.select(sa.func.sum(usage_daily.c.completion_tokens)))
        assert list(daily[0].values())[0] == sum(one[ex.headers["x-request-id"]]["completion_tokens"]
                                                  for ex in (whole, provider_cut, left))  # the roll-up counts them too
    finally:
        await r.close()


async def test_500_concurrent_requests_two_workers_no_lost_row(sim, db_url):
    r = Running(sim, db_url)
    try:
        apps = [await r.add(), await r.add()]
        results = await asyncio.gather(*(call(apps[i % 2], chat(user=f"u{i}")) for i in range(500)))
        assert [x.status for x in results].count(200) == 500
        for app in apps:
            assert await app.accounting.writer.flush(20)
            assert app.accounting.writer.overflow == 0
        rows = await ledger(db_url)
        assert len(rows) == 500 and set(rows) == {x.headers["x-request-id"] for x in results}
        total = await select(db_url, sa.select(sa.func.sum(usage_daily.c.requests).label("n")))
        assert total[0]["n"] == 500
    finally:
        await r.close()


async def test_usage_reports_read_the_ledger(running):
    gw = await running.add()
    for model in ("gpt-4o-mini", "gpt-4o-mini", "claude-3-5-haiku-latest"):
        assert (await call(gw, chat(model))).status == 200
    data = orjson.loads((await call(gw, method="GET", path="/v1/usage")).text)["data"]
    by_model = {d["model"]: d for d in data}
    assert by_model["gpt-4o-mini"]["requests"] == 2 and by_model["claude-3-5-haiku-latest"]["requests"] == 1
    assert all(d["total_tokens"] == d["prompt_tokens"] + d["completion_tokens"] and d["cost_usd"] > 0 for d in data)
    assert (await call(gw, method="GET", path="/v1/usage", query=b"all=1")).status == 403
    csv = (await call(gw, method="GET", path="/admin/usage", key=ADMIN_KEY, query=b"by=day&format=csv")).text.decode()
    head, *lines = csv.strip().splitlines()
    assert head.startswith("key,model,day,requests") and len(lines) == 2 and time.strftime("%Y-%m-%d", time.gmtime()) in lines[0]


# --- budgets -------------------------------------------------------------------------------


def _one_request_max(body: dict, model: str = "gpt-4o-mini") -> float:
    return Prices().cost(model, prompt_estimate(body), body["max_tokens"])


@pytest.mark.parametrize("workers, shared", [(1, "database"), (2, "redis"), (3, "database")])
async def test_budget_race(sim, db_url, redis_url, workers, shared):
    """100 concurrent requests against a budget for 10: at most 10 admitted, spend within the budget; with
    Redis the workers share the amount there, without it in the database (each worker its own pool and, on
    SQLite, its own connection, as separate processes have)."""
    import uuid

    from gateway.budget import period_of
    from gateway.db.schema import budget_spend

    r = Running(sim, db_url, REDIS_URL=redis_url) if shared == "redis" else Running(sim, db_url)
    try:
        apps = [await r.add() for _ in range(workers)]
        name = "race-" + uuid.uuid4().hex[:8]
        body = {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "What is machine learning?"}]}
        one = _one_request_max(body)
        ex = await call(apps[0], orjson.dumps({"name": name, "budget_usd": 10 * one, "budget_period": "day"}),
                        key=ADMIN_KEY, path="/admin/keys")
        secret = orjson.loads(ex.text)["key"]
        for app in apps[1:]:
            await app.accounting.keys.refresh()
        sim.configure("openai", latency_ms=1500)  # all 100 are admitted or refused before the first one settles
        results = await asyncio.gather(*(call(apps[i % workers], orjson.dumps(body), key=secret) for i in range(100)))
        statuses = [x.status for x in results]
        refused = [orjson.loads(x.text)["error"] for x in results if x.status == 429]
        assert statuses.count(200) + len(refused) == 100
        assert 1 <= statuses.count(200) <= 10, statuses
        assert all(e["code"] == "budget_exceeded" and e["type"] == "insufficient_quota" for e in refused)
        for app in apps:
            await app.accounting.writer.flush(5)
        spent = await select(db_url, sa.select(sa.func.sum(usage.c.cost_usd).label("usd")).where(usage.c.key_name == name))
        print(f"budget race ({workers} worker(s), {db_url.split(':')[0]}): {statuses.count(200)} admitted, "
              f"spent ${spent[0]['usd']:.6f} of ${10 * one:.6f} ({spent[0]['usd'] / (10 * one):.1%}); one request's max ${one:.6f}")
        assert 0 < spent[0]["usd"] <= 10 * one + one
        if shared == "database":
            assert all(app.accounting.budgets.db_errors == 0 and not app.accounting.budgets.local for app in apps)
            # Settled in the ledger's own transactions: the shared amount is the ledger's spend, nothing held.
            held = await select(db_url, sa.select(budget_spend.c.amount).where(budget_spend.c.slot == f"{name}:{period_of('day')[0]}"))
            assert held[0]["amount"] == pytest.approx(spent[0]["usd"], rel=1e-9)
    finally:
        await r.close()


async def test_a_database_budget_is_read_by_a_worker_started_later(sim, db_url):
    """Without Redis: a worker started later reads the spend the others left in ``budget_spend`` (not its own
    zero)."""
    r = Running(sim, db_url)
    try:
        a = await r.add()
        body = {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "What is machine learning?"}]}
        one = _one_request_max(body)
        ex = await call(a, orjson.dumps({"name": "resume-" + uuid.uuid4().hex[:8], "budget_usd": 4.5 * one,
                                         "budget_period": "month"}), key=ADMIN_KEY, path="/admin/keys")
        secret = orjson.loads(ex.text)["key"]
        assert [(await call(a, orjson.dumps(body), key=secret)).status for _ in range(2)] == [200, 200]
        assert await a.accounting.writer.flush(5)
        b = await r.add()  # a new worker: 2 of 4.5 spent (each settled below its reservation), 2 more fit
        statuses = [(await call(b, orjson.dumps(body), key=secret)).status for _ in range(4)]
        assert statuses[:2] == [200, 200] and 429 in statuses[2:], statuses
    finally:
        await r.close()


async def test_reconciliation_restores_redis_spend_from_the_ledger(sim, db_url, redis_url):
    """Redis's shared spend deleted, zeroed, inflated, or holding a reservation nobody will settle: a
    reconciliation pass puts it back to the ledger's spend plus the live reservations; one worker per
    interval does it (the lease); with an interval set, the workers do it by themselves."""
    import redis.asyncio as aioredis

    from gateway.budget import period_of

    # A prefix of its own: another test run on this Redis must not hold the reconcile lease or see the counter.
    prefix = f"gwt-{uuid.uuid4().hex[:8]}:"
    r = Running(sim, db_url, REDIS_URL=redis_url, GATEWAY_BUDGET_RECONCILE_SECONDS="0", GATEWAY_REDIS_PREFIX=prefix)
    red = aioredis.from_url(redis_url)
    try:
        a, b = await r.add(), await r.add()
        name = "reconcile-" + uuid.uuid4().hex[:8]
        # $0.002: four requests spend ~$0.00005, above the 1 % of the budget that a pass leaves alone.
        ex = await call(a, orjson.dumps({"name": name, "budget_usd": 0.002, "budget_period": "day"}), key=ADMIN_KEY, path="/admin/keys")
        secret = orjson.loads(ex.text)["key"]
        await b.accounting.keys.refresh()
        for i in range(4):
            assert (await call((a, b)[i % 2], chat(max_tokens=20), key=secret)).status == 200
        for app in (a, b):
            assert await app.accounting.writer.flush(5)
            await asyncio.gather(*app.accounting.budgets._tasks)  # the settles reached Redis
        slot = f"{name}:{period_of('day')[0]}"
        counter, held = f"{prefix}budget:{slot}", f"{prefix}budget:{slot}:held"
        spent = (await select(db_url, sa.select(sa.func.sum(usage.c.cost_usd).label("usd")).where(usage.c.key_name == name)))[0]["usd"]
        assert spent > 0 and await red.hlen(held) == 0  # every reservation settled
        assert float(await red.get(counter)) == pytest.approx(spent, rel=1e-9)

        async def reconciled(app=a) -> dict:
            found = await app.accounting.budgets.reconcile(lease=False)
            return next(x for x in found if x["slot"] == slot)

        row = await reconciled()
        assert not row["corrected"] and row["ledger"] == pytest.approx(spent, rel=1e-9)
        for broken in (None, "0", "1.0", "-3"):  # flushed, lost spend, inflated, corrupted
            if broken is None:
                await red.delete(counter)
            else:
                await red.set(counter, broken)
            row = await reconciled()
            assert row["corrected"] and row["redis"] == (None if broken is None else float(broken))
            assert float(await red.get(counter)) == pytest.approx(spent, rel=1e-9)
        assert await red.ttl(counter) > 0

        # A worker died before settling (its reservation's request long over), another request is in flight.
        await red.hset(held, mapping={"req-dead": f"0.0004 {time.time() - 1}", "req-live": f"0.0002 {time.time() + 600}"})
        await red.incrbyfloat(counter, 0.0006)
        row = await reconciled(b)
        assert row["corrected"] and row["stale_reservations"] == 1 and row["expected"] == pytest.approx(spent + 0.0002)
        assert float(await red.get(counter)) == pytest.approx(spent + 0.0002, rel=1e-9)
        assert list(await red.hkeys(held)) == [b"req-live"]
        await red.hdel(held, "req-live")
        await red.incrbyfloat(counter, -0.0002)
        row = await reconciled()
        assert not row["corrected"]  # within 1 % of the budget: the ledger's batching lag, left alone

        # The lease: of two workers asking in the same interval, one runs the pass.
        await red.delete(f"{prefix}budget:reconcile-lease")
        assert await a.accounting.budgets.reconcile() is not None
        assert await b.accounting.budgets.reconcile() is None

        # Periodic: both workers try every 0.3 s, the lease lets one a time; the deleted counter comes back.
        manual = sum(app.accounting.budgets.reconciles for app in (a, b))
        t0 = time.monotonic()
        for app in (a, b):
            app.accounting.budgets.reconcile_seconds = 0.3
            app.accounting.budgets.start()
        await red.delete(counter)
        deadline = time.monotonic() + 5
        while (value := await red.get(counter)) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert value is not None and float(value) == pytest.approx(spent, rel=1e-9)
        await asyncio.sleep(1.2)
        runs = sum(app.accounting.budgets.reconciles for app in (a, b)) - manual
        intervals = (time.monotonic() - t0) / 0.3
        assert 2 <= runs <= intervals + 1, (runs, intervals)  # one pass an interval, not one per worker
    finally:
        await red.aclose()
        await r.close()


# --- the database goes away -----------------------------------------------------------------


async def test_a_full_buffer_counts_and_logs_what_it_refuses(tmp_path, caplog):
    """Database unreachable past the buffer's bound: the overflow is counted and logged, what fits waits."""
    from gateway.ledger import LedgerWriter
    from gateway.ledger.rows import COLUMNS

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/missing-dir/ledger.db", pool_timeout=0.2)  # cannot open
    writer = LedgerWriter(engine, max_buffer=100, interval=0.01)
    writer.start()
    row = tuple(0 if c.endswith(("tokens", "usd", "ms", "ts", "status", "attempts")) else None for c in COLUMNS)
    for _ in range(150):
        writer.add(row)
    await asyncio.sleep(0.3)
    stats = writer.stats()
    assert stats["overflow"] == 50 and stats["buffered"] == 100 and stats["written"] == 0 and stats["failed_batches"] >= 1
    assert "ledger buffer full" in caplog.text and "50 usage rows refused" not in caplog.text  # logged at the first
    assert "1 usage rows refused so far" in caplog.text
    writer._task.cancel()
    await engine.dispose()



async def test_postgres_stopped_and_restarted_mid_run(sim):
    """No client error while PostgreSQL is down; every row is written once it is back."""
    from gateway.config.validate import database_url
    from tests.pg_server import own_pg_server

    with own_pg_server() as pg:
        url = database_url("DATABASE_URL", pg.url)
        upgrade(url)
        r = Running(sim, url)
        try:
            gw = await r.add()
            # A budget (no Redis: held in the database) that the outage must neither break nor reset.
            ex = await call(gw, orjson.dumps({"name": "during-outage", "budget_usd": 10, "budget_period": "day"}),
                            key=ADMIN_KEY, path="/admin/keys")
            secret = orjson.loads(ex.text)["key"]
            budgets = gw.accounting.budgets
            ids = []

            async def burst(n: int) -> None:
                res = await asyncio.gather(*(call(gw, chat(), key=secret if i % 2 else API_KEY) for i in range(n)))
                assert [x.status for x in res] == [200] * n
                ids.extend(x.headers["x-request-id"] for x in res)

            await burst(50)
            assert await gw.accounting.writer.flush(5)
            (slot, seen), = budgets.seen.items()
            assert seen > 0 and budgets.db_errors == 0
            pg.stop()
            await burst(100)  # keys from the worker's cache, rows into the buffer, the budget counted here
            await asyncio.sleep(0.5)
            assert gw.accounting.writer.stats()["buffered"] >= 100 and gw.accounting.writer.failures >= 1
            assert budgets.db_errors == 50 and budgets.local[slot] > seen  # from what the database last said
            pg.start()
            await burst(50)
            assert await gw.accounting.writer.flush(15)
            assert budgets.db_errors == 50 and slot not in budgets.local  # back on the shared row
            rows = await ledger(url)
            assert len(rows) == 200 and set(rows) == set(ids) and all(len(v) == 1 for v in rows.values())
            assert gw.accounting.writer.overflow == 0
        finally:
            await r.close()


# --- the commands ---------------------------------------------------------------------------


def gateway_cli(*args: str, url: str) -> subprocess.CompletedProcess:
    from tests.harness import clean_env

    return subprocess.run([sys.executable, "-m", "gateway", *args], env=clean_env(DATABASE_URL=url),
                          capture_output=True, text=True, timeout=60)


async def test_serve_refuses_a_postgres_schema_behind(pg_admin_url):
    from tests.pg_server import drop_database, new_database

    url = await new_database(pg_admin_url)
    try:
        proc = await asyncio.to_thread(gateway_cli, "serve", url=url)
        assert proc.returncode == 2
        assert "has no gateway schema" in proc.stderr and "run `gateway db upgrade`" in proc.stderr
    finally:
        await drop_database(pg_admin_url, url)


def test_cli_db_keys_and_usage(tmp_path, monkeypatch, capsys):
    """The commands in this process (``gateway.cli.main``, as the console script calls it), on a fresh SQLite file."""
    from gateway.cli import main

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")

    def gateway(*args: str) -> str:
        main(list(args))
        return capsys.readouterr().out

    with pytest.raises(SystemExit) as exit:
        gateway("db", "check")
    assert exit.value.code == 2 and "gateway db upgrade" in capsys.readouterr().err
    gateway("db", "upgrade")
    assert "up to date" in gateway("db", "check")
    made = gateway("keys", "create", "--name", "ci", "--budget", "3", "--period", "day", "--models", "gpt-4o,o3-mini")
    key_id, secret = made.split()[1], made.strip().splitlines()[-1]
    listed = gateway("keys", "list")
    assert key_id in listed and "$3/day" in listed and "models=gpt-4o,o3-mini" in listed and secret not in listed
    with pytest.raises(SystemExit):
        gateway("keys", "create", "--name", "ci")  # names are unique
    assert "exists already" in capsys.readouterr().err
    gateway("keys", "revoke", key_id)
    assert key_id not in gateway("keys", "list") and key_id in gateway("keys", "list", "--revoked")
    assert gateway("usage", "--by-day").split()[:3] == ["key", "model", "day"]


async def test_a_revocation_reaches_other_workers_through_redis(sim, db_url, redis_url):
    """With REDIS_URL a change is announced: the other worker drops the key at once, not at its next poll (60 s)."""
    r = Running(sim, db_url, REDIS_URL=redis_url, GATEWAY_KEY_REFRESH_SECONDS="60")
    try:
        gw, other = await r.add(), await r.add()
        await asyncio.sleep(0.2)  # both subscribed
        ex = await call(gw, orjson.dumps({"name": "announced"}), key=ADMIN_KEY, path="/admin/keys")
        made = orjson.loads(ex.text)
        deadline = time.monotonic() + 2
        while (ex := await call(other, chat(), key=made["key"])).status != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert ex.status == 200  # created on one worker, usable on the other within 2 s
        await call(gw, key=ADMIN_KEY, method="DELETE", path=f"/admin/keys/{made['id']}")
        t0 = time.monotonic()
        while (ex := await call(other, chat(), key=made["key"])).status == 200 and time.monotonic() - t0 < 2:
            await asyncio.sleep(0.02)
        assert ex.status == 401
    finally:
        await r.close()


async def test_one_redis_prefix_names_every_key_and_channel(sim, db_url, redis_url):
    """GATEWAY_REDIS_PREFIX: a deployment's rate-limit buckets, budget counters and key-change channel all
    start with it, so two deployments (or two test runs) on one Redis never read or lease each other's."""
    import redis.asyncio as aioredis

    from gateway.budget import period_of

    prefix = f"gwt-{uuid.uuid4().hex[:8]}:"
    r = Running(sim, db_url, REDIS_URL=redis_url, GATEWAY_REDIS_PREFIX=prefix, RATE_LIMIT_ENABLED="true")
    red = aioredis.from_url(redis_url)
    pubsub = red.pubsub()
    try:
        gw = await r.add()
        await pubsub.subscribe(prefix + "keys")
        name = "prefixed-" + uuid.uuid4().hex[:8]
        ex = await call(gw, orjson.dumps({"name": name, "budget_usd": 1.0, "budget_period": "day"}), key=ADMIN_KEY, path="/admin/keys")
        secret = orjson.loads(ex.text)["key"]
        announced = None
        for _ in range(50):
            announced = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if announced:
                break
        assert announced is not None and announced["channel"] == (prefix + "keys").encode()
        assert (await call(gw, chat(max_tokens=20), key=secret)).status == 200
        await asyncio.gather(*gw.accounting.budgets._tasks)
        ours = {k.decode() async for k in red.scan_iter(match=prefix + "*")}
        buckets = [k for k in ours if k.startswith(prefix + "rl:{") and k.endswith("}:req")]
        assert len(buckets) == 1, ours  # the key's request bucket
        tag = buckets[0][len(prefix) + 4:-5]
        assert f"{prefix}budget:{name}:{period_of('day')[0]}" in ours, ours
        assert [k async for k in red.scan_iter(match=f"gw:*{tag}*")] == []
        assert [k async for k in red.scan_iter(match=f"gw:budget:{name}*")] == []
    finally:
        await pubsub.aclose()
        for k in [k async for k in red.scan_iter(match=prefix + "*")]:
            await red.delete(k)
        await red.aclose()
        await r.close()


async def test_budget_race_across_worker_processes_without_redis(sim, db_url):
    """A real ``gateway serve`` with two worker processes, no Redis: 100 concurrent requests over 100
    connections against a budget for 10. The workers share the amount through the database, so at most 10
    are admitted between them (each worker counting alone would admit up to 10 apiece)."""
    import aiohttp

    from tests.harness import running_gateway, simulator_env

    env = simulator_env(sim.base_url) | {"DATABASE_URL": db_url, "GATEWAY_CACHE": "off", "GATEWAY_KEY_REFRESH_SECONDS": "0.2"}
    body = {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "What is machine learning?"}]}
    one = _one_request_max(body)
    name = "procs-" + uuid.uuid4().hex[:8]
    with running_gateway(env, workers=2) as gw:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as http:
            async with http.post(gw.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"},
                                 json={"name": name, "budget_usd": 10 * one, "budget_period": "day"}) as resp:
                assert resp.status == 201
                secret = (await resp.json())["key"]
            await asyncio.sleep(1.0)  # the other worker's key refresh (0.2 s)
            sim.configure("openai", latency_ms=1500)  # all 100 are admitted or refused before the first one settles

            async def one_call():
                async with http.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {secret}"},
                                     json=body) as resp:
                    return resp.status, resp.headers.get("x-request-id", ""), await resp.read()

            results = await asyncio.gather(*(one_call() for _ in range(100)))
        problems = [line for line in gw.log().splitlines() if "budget" in line and "unreachable" in line]
    statuses = [s for s, _, _ in results]
    assert not problems, problems[:3]
    assert statuses.count(200) + statuses.count(429) == 100, statuses
    workers = {rid[:20] for _, rid, _ in results}
    spent = (await select(db_url, sa.select(sa.func.sum(usage.c.cost_usd).label("usd")).where(usage.c.key_name == name)))[0]["usd"]
    print(f"budget race (2 worker processes, no Redis, {db_url.split(':')[0]}): {statuses.count(200)} admitted "
          f"by {len(workers)} worker(s), spent ${spent:.6f} of ${10 * one:.6f}; one request's max ${one:.6f}")
    assert len(workers) == 2  # both processes answered (request ids carry their process's prefix)
    assert 1 <= statuses.count(200) <= 10, statuses
    assert 0 < spent <= 10 * one + one


# --- prices ----------------------------------------------------------------------------------


async def test_cached_prompt_tokens_are_priced_at_the_cached_rate_in_the_ledger_and_the_budget(tmp_path):
    """A provider's cached prompt tokens are billed at the catalogue's ``cached_input`` rate: the ledger row's
    cost and the budget's settle use it, as the access log and metrics do, not the full input price."""
    from gateway.budget import LOCAL, Budgets, Reservation
    from gateway.config.validate import database_url
    from gateway.ledger import LedgerWriter, Recorder
    from gateway.pipeline.outcome import Outcome
    from gateway.providers.base import Deployment

    url = database_url("DATABASE_URL", f"sqlite:///{tmp_path}/ledger.db")
    upgrade(url)
    engine = create_engine(url)
    prices = Prices()
    writer = LedgerWriter(engine, interval=0.01)
    writer.start()
    try:
        d = Deployment("openai:gpt-4o", "openai", "gpt-4o", "https://api.openai.com/v1", "sk-openai")
        o = Outcome("req-cached", time.perf_counter(), route="/v1/chat/completions", model="gpt-4o", status=200, deployment=d)
        o.add_usage({"prompt_tokens": 10_000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 8_000}})
        o.finished = time.perf_counter()
        full, cached = prices.cost("gpt-4o", 10_000, 100), prices.cost("gpt-4o", 10_000, 100, 8_000)
        assert cached < full  # gpt-4o's cached input is half its input price
        Recorder(writer, prices).on_finish(None, o)
        assert await writer.flush(5)
        rows = await select(url, sa.select(usage.c.cost_usd, usage.c.cached_tokens).where(usage.c.request_id == "req-cached"))
        assert [(r["cost_usd"], r["cached_tokens"]) for r in rows] == [(pytest.approx(cached, rel=1e-12), 8_000)]

        budgets = Budgets(prices, engine)

        class Req:
            budget = Reservation("k:2026-12", 0.05, LOCAL)

        budgets.local["k:2026-12"] = 0.05
        budgets.on_finish(Req, o)
        assert budgets.local["k:2026-12"] == pytest.approx(cached, rel=1e-12)
    finally:
        await writer.close()
        await engine.dispose()


async def test_batch_and_flush_settings_shape_the_writes(tmp_path, monkeypatch):
    """GATEWAY_LEDGER_BATCH_ROWS caps a transaction's rows and GATEWAY_LEDGER_FLUSH_SECONDS is how long a lone
    row waits for company: the worker's writer is built from them."""
    from gateway.accounting import Accounting
    from gateway.config.validate import database_url

    url = database_url("DATABASE_URL", f"sqlite:///{tmp_path}/ledger.db")
    upgrade(url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("GATEWAY_LEDGER_BATCH_ROWS", "3")
    monkeypatch.setenv("GATEWAY_LEDGER_FLUSH_SECONDS", "1.5")
    acc = Accounting(load_settings())
    writer = acc.writer
    assert (writer.batch, writer.interval) == (3, 1.5)
    writer.start()
    day, no = writer.day(dt.date.today()), writer.flags[False]
    nil, no_ms = writer.nil

    def row(i: int) -> tuple:
        return (f"flush-{i}", time.time(), day, "k", "gpt-4o-mini", "openai", "openai:gpt-4o-mini", "rest", 200, nil,
                1, 1, 0, 0.0, 1.0, 1.0, 0.0, no_ms, 1, nil, nil, no, no)

    try:
        writer.add(row(0))
        await asyncio.sleep(0.5)
        assert writer.written == 0  # a lone row waits for its batch up to the flush interval
        for i in range(1, 7):
            writer.add(row(i))
        assert await writer.flush(5)
        assert writer.written == 7 and writer.batches >= 3  # 7 rows, at most 3 a transaction
        assert len(await select(url, sa.select(usage.c.request_id).where(usage.c.request_id.like("flush-%")))) == 7
    finally:
        await writer.close()
        await acc.engine.dispose()
