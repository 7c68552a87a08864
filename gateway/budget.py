"""Budgets that hold under concurrency: reserve the most a request can cost, settle to what it cost.

At admission (an ``admission.limiters`` entry) a request of a key with a
budget reserves its maximum cost: the prompt's estimated tokens plus its
``max_tokens`` (or ``DEFAULT_MAX_TOKENS``) at the dearest price among its
group's deployments. A reservation that would take the period's spent plus
reserved amount past the budget is refused with a 429 ``budget_exceeded``.
The finish hook settles the reservation to the real cost (0 for a cache hit;
a cut stream: what the provider reported, else the gateway's estimate). So concurrent requests can never
spend more than the budget, bar a request whose prompt was under-estimated.

With REDIS_URL the amount lives in Redis, one key per (key name, period),
checked and added in one Lua script, so every worker and instance shares it;
it is seeded from the ledger's roll-ups when absent (a new period, a flushed
Redis). Without Redis, or while Redis is unreachable, each worker keeps its
own amount, seeded the same way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import sqlalchemy as sa

from gateway.db.schema import usage_daily
from gateway.errors import GatewayError

log = logging.getLogger("gateway.budget")

DEFAULT_MAX_TOKENS = 4096  # the completion a request without max_tokens may run to, for its reservation
_TTL = {"day": 2 * 86_400, "month": 32 * 86_400}

# KEYS[1]: spent+reserved; ARGV: amount, budget, ttl. Returns {admitted, amount after} (strings: Lua floats).
_RESERVE = """
local spent = redis.call('GET', KEYS[1])
if not spent then return {-1, '0'} end
if tonumber(spent) + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {0, spent} end
return {1, redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])}
"""


def period_of(period: str | None, now: dt.datetime | None = None) -> tuple[str, dt.date]:
    """The current period's label and first day (UTC)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if period == "day":
        return now.date().isoformat(), now.date()
    first = now.date().replace(day=1)
    return first.strftime("%Y-%m"), first


class Reservation:
    __slots__ = ("slot", "amount", "shared")

    def __init__(self, slot: str, amount: float, shared: bool) -> None:
        self.slot = slot
        self.amount = amount
        self.shared = shared  # held in Redis (else in this worker's ``local``)


class Budgets:
    def __init__(self, prices, engine, redis_url: str | None = None, prefix: str = "gw:") -> None:
        self.prices = prices
        self.engine = engine
        self.prefix = prefix + "budget:"
        self.local: dict[str, float] = {}  # slot → spent + reserved, when not shared through Redis
        self.refused = 0
        self.redis_errors = 0
        self._redis = None
        self._script = None
        if redis_url:
            import redis.asyncio as redis

            self._redis = redis.from_url(redis_url)
            self._script = self._redis.register_script(_RESERVE)
        self._tasks: set[asyncio.Task] = set()

    # --- admission ---------------------------------------------------------------------

    def __call__(self, req):
        key = req.key
        if key is None or key.budget_usd is None:
            return None  # the common case: no budget, no cost
        return self._reserve(req, key)

    def max_cost(self, req) -> float:
        body = req.body
        completion = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        prompt = req.prompt_tokens()  # the token limiter's figure, computed once
        models = [d.model for d in req.group.deployments] if req.group is not None else [req.model]
        return max(self.prices.cost(m, prompt, completion) for m in models)

    async def _reserve(self, req, key) -> None:
        label, first_day = period_of(key.budget_period)
        slot = f"{key.name}:{label}"
        amount = self.max_cost(req)
        if self._redis is not None:
            try:
                admitted, total = await self._reserve_shared(slot, amount, key, first_day)
            except Exception as exc:  # noqa: BLE001 - Redis away: this worker's own count, not an outage
                self.redis_errors += 1
                if self.redis_errors == 1 or self.redis_errors % 1000 == 0:
                    log.warning("budget: Redis unreachable (%s); counting in this worker", exc)
            else:
                if not admitted:
                    self._refuse(key, total, label)
                req.budget = Reservation(slot, amount, True)
                return
        spent = self.local.get(slot)
        if spent is None:
            loaded = await self._ledger_spent(key.name, first_day)
            spent = self.local.setdefault(slot, loaded)  # another request of this key may have loaded and reserved meanwhile
        if spent + amount > key.budget_usd:
            self._refuse(key, spent, label)
        self.local[slot] = spent + amount
        req.budget = Reservation(slot, amount, False)

    async def _reserve_shared(self, slot: str, amount: float, key, first_day: dt.date) -> tuple[bool, float]:
        rkey = self.prefix + slot
        args = (repr(amount), repr(key.budget_usd), _TTL[key.budget_period or "month"])
        admitted, total = await self._script(keys=[rkey], args=args)
        if admitted == -1:  # a new period or a flushed Redis: start from what the ledger has
            spent = await self._ledger_spent(key.name, first_day)
            await self._redis.set(rkey, repr(spent), ex=_TTL[key.budget_period or "month"], nx=True)
            admitted, total = await self._script(keys=[rkey], args=args)
        return admitted == 1, float(total)

    async def _ledger_spent(self, name: str, since: dt.date) -> float:
        q = sa.select(sa.func.coalesce(sa.func.sum(usage_daily.c.cost_usd), 0.0)).where(
            usage_daily.c.key_name == name, usage_daily.c.day >= since
        )
        async with self.engine.connect() as conn:
            return float((await conn.execute(q)).scalar())

    def _refuse(self, key, spent: float, label: str) -> None:
        self.refused += 1
        raise GatewayError(
            429,
            f"Budget exceeded: key '{key.name}' has spent or reserved ${spent:.4f} of its ${key.budget_usd:.2f} "
            f"for {label}.",
            "insufficient_quota",
            None,
            "budget_exceeded",
        )

    # --- the finish hook ---------------------------------------------------------------

    def on_finish(self, req, outcome) -> None:
        r = req.budget if req is not None else None
        if r is None:
            return
        req.budget = None
        d = outcome.deployment
        if outcome.from_cache or d is None:
            cost = 0.0
        elif outcome.first_chunk_seconds is not None and not outcome.prompt_tokens and not outcome.completion_tokens:
            cost = r.amount  # a stream that relayed something yet has no usage, not even estimated: never $0
        else:
            cost = self.prices.cost(d.model, outcome.prompt_tokens, outcome.completion_tokens)
        delta = cost - r.amount
        if r.shared:
            task = asyncio.get_running_loop().create_task(self._settle_shared(r.slot, delta))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.local[r.slot] = self.local.get(r.slot, 0.0) + delta

    async def _settle_shared(self, slot: str, delta: float) -> None:
        try:
            await self._redis.incrbyfloat(self.prefix + slot, delta)
        except Exception as exc:  # noqa: BLE001 - the reservation stays counted: errs on the refusing side
            self.redis_errors += 1
            log.warning("budget: could not settle %s by %+.6f on Redis: %s", slot, delta, exc)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()
