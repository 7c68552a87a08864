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
Redis). Without Redis it lives in the database's ``budget_spend`` row of the
(key, period), seeded the same way, and is reserved with one conditional
UPDATE (added only if the sum stays within the budget: atomic in SQLite and
PostgreSQL alike), so the workers and instances of one database share it just
as they share Redis: their admitted reservations never sum past the budget.
Its settle is applied in the ledger writer's next batch, in the same
transaction as the request's ledger row (``LedgerWriter.settle``): no write of
its own, and the amount is always the ledger's spend plus the reservations in
flight. Only while that shared store is unreachable does a worker count alone
(``local``), from the amount it last saw there: then N workers can overshoot
by at most N - 1 times what remained of the budget when it went away.

Each shared reservation is also held in a Redis hash (request id → amount and
the time by which its request must have ended) until it is settled, so the
shared amount is always explainable as the ledger's spend plus the held
reservations. ``reconcile`` (every ``GATEWAY_BUDGET_RECONCILE_SECONDS``, by
whichever worker of whichever instance holds the Redis lease of that
interval) recomputes each budget key's period spend from the roll-ups, drops
reservations held past their request's end (a worker that died before it
settled), and corrects the shared amount when it drifts from ledger + held by
more than 1 % of the budget (Redis restarted or flushed, a lost settle, a
corrupted value). The ledger lags the settles by the writers' batching
(~250 ms), which that tolerance absorbs; a pass is skipped while this worker's
ledger writes fail.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
from typing import Callable, Iterable

import sqlalchemy as sa

from gateway.db.schema import budget_spend, usage_daily
from gateway.errors import GatewayError

log = logging.getLogger("gateway.budget")

DEFAULT_MAX_TOKENS = 4096  # the completion a request without max_tokens may run to, for its reservation
_TTL = {"day": 2 * 86_400, "month": 32 * 86_400}

DB_CONNECTIONS = 4  # pool connections one worker's budget reservations and seeds use at once
HELD_GRACE = 60.0  # seconds past a request's deadline before its unsettled reservation counts as lost
RECONCILE_TOLERANCE = 0.01  # of the budget: drift below this is the ledger's batching lag, left alone

# KEYS[1]: spent+reserved, KEYS[2]: held reservations; ARGV: amount, budget, ttl, request id, held until.
# Returns {admitted, amount after} (strings: Lua floats).
_RESERVE = """
local spent = redis.call('GET', KEYS[1])
if not spent then return {-1, '0'} end
if tonumber(spent) + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {0, spent} end
local total = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[1] .. ' ' .. ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, total}
"""

# KEYS[1], KEYS[2] as above; ARGV: cost - reserved, request id. A counter that vanished (flushed) is not
# recreated from a bare delta: the next reservation seeds it from the ledger.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBYFLOAT', KEYS[1], ARGV[1]) end
redis.call('HDEL', KEYS[2], ARGV[2])
"""

# KEYS[1], KEYS[2] as above; ARGV: the ledger's spend, now (epoch s), tolerance (USD), ttl.
# Returns {amount before or false, ledger + live held, corrected 0/1, stale reservations dropped}.
_RECONCILE = """
local live, stale = 0, 0
local held = redis.call('HGETALL', KEYS[2])
for i = 1, #held, 2 do
  local amount, expiry = string.match(held[i + 1], '(%S+) (%S+)')
  if tonumber(expiry) < tonumber(ARGV[2]) then
    redis.call('HDEL', KEYS[2], held[i])
    stale = stale + 1
  else
    live = live + tonumber(amount)
  end
end
local target = tonumber(ARGV[1]) + live
local have = redis.call('GET', KEYS[1])
if not have then
  redis.call('SET', KEYS[1], string.format('%.17g', target), 'EX', ARGV[4])
  return {false, string.format('%.17g', target), 1, stale}
end
if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end  -- a bare SET lost it
local drift = tonumber(have) - target
if math.abs(drift) > tonumber(ARGV[3]) then
  redis.call('INCRBYFLOAT', KEYS[1], string.format('%.17g', -drift))
  return {have, string.format('%.17g', target), 1, stale}
end
return {have, string.format('%.17g', target), 0, stale}
"""


def period_of(period: str | None, now: dt.datetime | None = None) -> tuple[str, dt.date]:
    """The current period's label and first day (UTC)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if period == "day":
        return now.date().isoformat(), now.date()
    first = now.date().replace(day=1)
    return first.strftime("%Y-%m"), first


REDIS, DATABASE, LOCAL = 1, 2, 0  # where a reservation is held


class Reservation:
    __slots__ = ("slot", "amount", "shared", "request_id")

    def __init__(self, slot: str, amount: float, shared: int, request_id: str = "") -> None:
        self.slot = slot
        self.amount = amount
        self.shared = shared  # REDIS, DATABASE or LOCAL (this worker's ``local``)
        self.request_id = request_id  # its field in the slot's hash of held reservations (Redis)


class Budgets:
    def __init__(self, prices, engine, redis_url: str | None = None, prefix: str = "gw:",
                 keys: Callable[[], Iterable] = tuple, reconcile_seconds: float = 0.0,
                 healthy: Callable[[], bool] = lambda: True, writer=None) -> None:
        self.prices = prices
        self.engine = engine
        self.prefix = prefix + "budget:"
        self.local: dict[str, float] = {}  # slot → spent + reserved, while the shared store is unreachable
        self.seen: dict[str, float] = {}  # slot → the amount the database last answered (where ``local`` starts)
        self.writer = writer  # the ledger writer: settles reservations held in the database (None: not shared there)
        self.refused = 0
        self.redis_errors = 0
        self.db_errors = 0
        self.keys = keys  # the keys that may have a budget (the virtual keys this worker serves)
        self.reconcile_seconds = reconcile_seconds  # 0: no periodic reconciliation
        self.healthy = healthy  # whether this worker's ledger writes succeed (else a pass would under-count)
        self.reconciles = 0  # passes this worker ran (it held the lease)
        self.corrections = 0  # shared amounts it corrected
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._redis = None
        self._script = None
        if redis_url:
            import redis.asyncio as redis

            self._redis = redis.from_url(redis_url)
            self._script = self._redis.register_script(_RESERVE)
            self._settle = self._redis.register_script(_SETTLE)
            self._reconcile = self._redis.register_script(_RECONCILE)
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        # A burst of budgeted requests must not each take a pool connection: two workers' 100 concurrent
        # reservations ran PostgreSQL out of connections (max_connections 100) and fell back to counting alone.
        self._db_slots = asyncio.Semaphore(DB_CONNECTIONS)

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
                admitted, total = await self._reserve_shared(slot, amount, key, first_day, req)
            except Exception as exc:  # noqa: BLE001 - Redis away: this worker's own count, not an outage
                self.redis_errors += 1
                if self.redis_errors == 1 or self.redis_errors % 1000 == 0:
                    log.warning("budget: Redis unreachable (%s); counting in this worker", exc)
            else:
                if not admitted:
                    self._refuse(key, total, label)
                req.budget = Reservation(slot, amount, REDIS, req.request_id)
                return
        elif self.writer is not None:
            try:
                admitted, total = await self._reserve_db(slot, amount, key, first_day)
            except Exception as exc:  # noqa: BLE001 - the database away: this worker's own count from what it last saw
                self.db_errors += 1
                if self.db_errors == 1 or self.db_errors % 1000 == 0:
                    log.warning("budget: database unreachable (%s); counting in this worker", exc)
                if slot not in self.local and slot in self.seen:
                    self.local[slot] = self.seen[slot]
            else:
                self.seen[slot] = total
                self.local.pop(slot, None)  # the shared amount is back: a later outage starts from it
                if not admitted:
                    self._refuse(key, total, label)
                req.budget = Reservation(slot, amount, DATABASE)
                return
        spent = self.local.get(slot)
        if spent is None:
            try:
                loaded = await self._ledger_spent(key.name, first_day)
            except Exception as exc:  # noqa: BLE001 - nothing to start from but what the shared store last said
                loaded = self.seen.get(slot, 0.0)
                log.warning("budget: %s counted from $%.6f: the ledger is unreachable too (%s)", slot, loaded, exc)
            spent = self.local.setdefault(slot, loaded)  # another request of this key may have loaded and reserved meanwhile
        if spent + amount > key.budget_usd:
            self._refuse(key, spent, label)
        self.local[slot] = spent + amount
        req.budget = Reservation(slot, amount, LOCAL)

    async def _reserve_shared(self, slot: str, amount: float, key, first_day: dt.date, req) -> tuple[bool, float]:
        rkey = self.prefix + slot
        until = time.time() + max(0.0, req.deadline - asyncio.get_running_loop().time()) + HELD_GRACE
        args = (repr(amount), repr(key.budget_usd), _TTL[key.budget_period or "month"], req.request_id, repr(until))
        keys = [rkey, rkey + ":held"]
        admitted, total = await self._script(keys=keys, args=args)
        if admitted == -1:  # a new period or a flushed Redis: start from what the ledger has
            spent = await self._ledger_spent(key.name, first_day)
            await self._redis.set(rkey, repr(spent), ex=_TTL[key.budget_period or "month"], nx=True)
            admitted, total = await self._script(keys=keys, args=args)
        return admitted == 1, float(total)

    async def _reserve_db(self, slot: str, amount: float, key, first_day: dt.date) -> tuple[bool, float]:
        """Add ``amount`` to the slot's row if it stays within the budget: (admitted, the amount after or as it is)."""
        if self.engine.dialect.name == "sqlite":
            return await self.writer.run_sqlite(_reserve_sqlite, slot, amount, key.budget_usd, key.name, first_day.isoformat())
        async with self._db_slots:
            return await self._reserve_pg(slot, amount, key, first_day)

    async def _reserve_pg(self, slot: str, amount: float, key, first_day: dt.date) -> tuple[bool, float]:
        t = budget_spend.c
        add = (sa.update(budget_spend).where(t.slot == slot, t.amount + amount <= key.budget_usd)
               .values(amount=t.amount + amount).returning(t.amount))
        async with self.engine.begin() as conn:
            total = (await conn.execute(add)).scalar()
            if total is not None:
                return True, float(total)
            have = (await conn.execute(sa.select(t.amount).where(t.slot == slot))).scalar()
            if have is not None:
                return False, float(have)
        # A new period (or a first budget): the row starts from the ledger's spend, once, whoever gets there first.
        async with self.engine.begin() as conn:
            spent = sa.select(sa.literal(slot), sa.func.coalesce(sa.func.sum(usage_daily.c.cost_usd), 0.0)).where(
                usage_daily.c.key_name == key.name, usage_daily.c.day >= first_day)
            await conn.execute(_insert(conn)(budget_spend).from_select(["slot", "amount"], spent).on_conflict_do_nothing())
            total = (await conn.execute(add)).scalar()
            if total is not None:
                return True, float(total)
            return False, float((await conn.execute(sa.select(t.amount).where(t.slot == slot))).scalar())

    async def _ledger_spent(self, name: str, since: dt.date) -> float:
        q = sa.select(sa.func.coalesce(sa.func.sum(usage_daily.c.cost_usd), 0.0)).where(
            usage_daily.c.key_name == name, usage_daily.c.day >= since
        )
        # Bounded like the reservations: 100 requests of a new period each seeding Redis's amount took 100
        # connections ("too many clients") and fell back to counting in the worker.
        async with self._db_slots, self.engine.connect() as conn:
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
            cost = self.prices.cost(d.model, outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens)
        delta = cost - r.amount
        if r.shared == DATABASE:
            self.writer.settle(r.slot, delta)
        elif r.shared == REDIS:
            task = asyncio.get_running_loop().create_task(self._settle_shared(r.slot, delta, r.request_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.local[r.slot] = self.local.get(r.slot, 0.0) + delta

    async def _settle_shared(self, slot: str, delta: float, request_id: str) -> None:
        rkey = self.prefix + slot
        try:
            await self._settle(keys=[rkey, rkey + ":held"], args=(repr(delta), request_id))
        except Exception as exc:  # noqa: BLE001 - the reservation stays counted: errs on the refusing side
            self.redis_errors += 1
            log.warning("budget: could not settle %s by %+.6f on Redis: %s", slot, delta, exc)

    # --- reconciliation with the ledger -------------------------------------------------

    def start(self) -> None:
        """The periodic pass, with Redis and a non-zero interval (each worker tries; the lease picks one)."""
        if self._redis is not None and self.reconcile_seconds > 0:
            self._loop_task = asyncio.get_running_loop().create_task(self._reconcile_loop(), name="budget-reconcile")

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_seconds)
            try:
                await self.reconcile()
            except Exception as exc:  # noqa: BLE001 - Redis or the database away: the next pass tries again
                log.warning("budget: reconciliation with the ledger failed: %s", exc)

    async def reconcile(self, lease: bool = True) -> list[dict] | None:
        """One pass, if this worker takes the interval's lease (``lease=False``: regardless); None when it
        did not run, else what it found per budget key (the slot, Redis's amount before, ledger + held)."""
        if self._redis is None or not self.healthy():
            return None
        if lease:
            ms = max(1, int(self.reconcile_seconds * 1000 * 0.9)) if self.reconcile_seconds > 0 else 1000
            if not await self._redis.set(self.prefix + "reconcile-lease", self.worker, px=ms, nx=True):
                return None  # another worker or instance has this interval's pass
        budgeted = [k for k in self.keys() if getattr(k, "budget_usd", None) is not None]
        spent = await self._ledger_spent_all(budgeted)
        now = time.time()
        found = []
        for key in budgeted:
            label, _ = period_of(key.budget_period)
            slot = f"{key.name}:{label}"
            rkey = self.prefix + slot
            ledger = spent.get(key.name, 0.0)
            have, target, corrected, stale = await self._reconcile(
                keys=[rkey, rkey + ":held"],
                args=(repr(ledger), repr(now), repr(key.budget_usd * RECONCILE_TOLERANCE), _TTL[key.budget_period or "month"]))
            row = {"slot": slot, "redis": None if have is None else float(have), "ledger": ledger,
                   "expected": float(target), "corrected": bool(corrected), "stale_reservations": int(stale)}
            if corrected:
                self.corrections += 1
                log.warning("budget: %s: Redis had %s, ledger + held reservations $%.6f: corrected (%d stale dropped)",
                            slot, "nothing" if have is None else f"${float(have):.6f}", float(target), int(stale))
            found.append(row)
        self.reconciles += 1
        return found

    async def _ledger_spent_all(self, keys: list) -> dict[str, float]:
        """Each key's spend in its current period, from the roll-ups, in one query."""
        if not keys:
            return {}
        firsts = {k.name: period_of(k.budget_period)[1] for k in keys}
        q = (sa.select(usage_daily.c.key_name, usage_daily.c.day, sa.func.sum(usage_daily.c.cost_usd))
             .where(usage_daily.c.key_name.in_(list(firsts)), usage_daily.c.day >= min(firsts.values()))
             .group_by(usage_daily.c.key_name, usage_daily.c.day))
        out: dict[str, float] = {}
        async with self.engine.connect() as conn:
            for name, day, cost in (await conn.execute(q)).all():
                if day >= firsts[name]:
                    out[name] = out.get(name, 0.0) + float(cost)
        return out

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()


_SQLITE_ADD = "UPDATE budget_spend SET amount = amount + ? WHERE slot = ? AND amount + ? <= ? RETURNING amount"
_SQLITE_SEED = (
    "INSERT INTO budget_spend (slot, amount) SELECT ?, coalesce(sum(cost_usd), 0.0) FROM usage_daily "
    "WHERE key_name = ? AND day >= ? ON CONFLICT (slot) DO NOTHING"
)


def _reserve_sqlite(conn, slot: str, amount: float, budget: float, name: str, first_day: str) -> tuple[bool, float]:
    """``_reserve_db`` in the ledger writer's thread: one IMMEDIATE transaction (seeded when the row is new)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = next(iter(conn.execute(_SQLITE_ADD, (amount, slot, amount, budget)).fetchall()), None)
        if row is None:
            conn.execute(_SQLITE_SEED, (slot, name, first_day))
            row = next(iter(conn.execute(_SQLITE_ADD, (amount, slot, amount, budget)).fetchall()), None)
        if row is not None:
            conn.execute("COMMIT")
            return True, row[0]
        have = conn.execute("SELECT amount FROM budget_spend WHERE slot = ?", (slot,)).fetchone()[0]
        conn.execute("COMMIT")
        return False, have
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _insert(conn):
    """The dialect's INSERT (with ON CONFLICT DO NOTHING) for this connection."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert
