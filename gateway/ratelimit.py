"""Per-key request and token limits: token buckets on the event loop, shared through Redis leases.

Each worker decides every request with plain arithmetic on its own loop (one
event loop per worker, so no lock). Without Redis each worker has its own
buckets: the limit is per worker process. With ``REDIS_URL`` one bucket per
key and kind lives in Redis; a worker leases a batch of its tokens with one
atomic script (refill on the Redis server's clock, grant, give back, count the
workers using the key) and spends the batch locally. A request costs a Redis
call only when the worker's lease runs out, so the shared limit holds across
any number of workers and instances without a round trip per request:

- lease size follows the worker's own demand (tokens spent per second times
  ``LEASE_SECONDS``), capped by the script at a fair share of what is left, so
  a drained bucket hands out single tokens and a full one larger batches;
- a lease not spent within ``LEASE_SECONDS`` goes back to the shared bucket;
- when Redis says the bucket is empty the worker refuses locally until the
  next token is due instead of asking again per request;
- Redis unreachable: the worker fails open to a local bucket at its share
  (1 / the workers last seen using the key), logs it, counts it, and keeps
  trying in the background; leasing resumes as soon as Redis answers.

Keys in Redis are hash-tagged per API key (``<GATEWAY_REDIS_PREFIX>rl:{tag}:...``), so both
keys of a script call share one slot and the same script runs on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable

from gateway.errors import GatewayError
from gateway.request import prompt_estimate

log = logging.getLogger("gateway")

LEASE_SECONDS = 1.0  # a lease covers about this much of a worker's demand, then goes back unspent
ACTIVE_SECONDS = 5.0  # a worker counts towards a key's fair share this long after its last lease
REDIS_TIMEOUT = 0.5  # default of RATE_LIMIT_REDIS_TIMEOUT_SECONDS: a lease slower than this fails open
RETRY_SECONDS = 1.0  # after a Redis failure, the next attempt waits this long

# One atomic step on the shared bucket: refill by the server's clock, take back what a
# worker returns (or charge what it owes), grant a lease, count the active workers.
# KEYS: bucket hash, workers zset. ARGV: rate/s, capacity, give, want, need, worker, active window.
# Returns {granted, level after, active workers, seconds until `need` is available}.
LEASE_SCRIPT = """
local rate = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local give = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local need = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(s[1])
local ts = tonumber(s[2])
if tokens == nil or ts == nil then
  tokens = cap
  ts = now
end
if now > ts and tokens < cap then
  tokens = math.min(cap, tokens + (now - ts) * rate)
end
tokens = math.min(cap, tokens + give)
if want > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[6])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[7]))
local active = math.max(1, redis.call('ZCARD', KEYS[2]))
local grant = 0
if want > 0 and tokens >= need then
  local fair = math.max(need, math.floor(tokens / active))
  grant = math.min(want, fair, math.floor(tokens))
  tokens = tokens - grant
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
local ttl = math.ceil((cap - tokens) / rate * 1000) + 60000
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[7]) * 1000) + 1000)
local wait = 0
if tokens < need then
  wait = (need - tokens) / rate
end
return {grant, tostring(tokens), active, tostring(wait)}
"""


class Bucket:
    """A token bucket: ``rate`` tokens per second up to ``capacity``; the clock is the caller's.

    ``tokens`` may go below zero when usage is charged after the fact (a stream
    that ran past its reservation): the debt refills like any other deficit.
    """

    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float, capacity: float, now: float, tokens: float | None = None) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity if tokens is None else min(capacity, tokens)
        self.stamp = now

    def level(self, now: float) -> float:
        if now > self.stamp:
            if self.tokens < self.capacity:
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def take(self, n: float, now: float) -> bool:
        if self.level(now) >= n:
            self.tokens -= n
            return True
        return False

    def charge(self, n: float, now: float) -> None:
        """Spend ``n`` whether or not it is there (negative ``n`` gives tokens back, up to capacity)."""
        self.tokens = min(self.capacity, self.level(now) - n)

    def wait(self, n: float, now: float) -> float:
        """Seconds until ``n`` tokens are there (0 if they are)."""
        missing = n - self.level(now)
        return missing / self.rate if missing > 0 else 0.0

    def reset(self, now: float) -> float:
        """Seconds until the bucket is full again (OpenAI's ``x-ratelimit-reset-*``)."""
        return (self.capacity - self.level(now)) / self.rate


@dataclass(frozen=True, slots=True)
class Rule:
    """One limit of one key: ``per_minute`` refill, ``burst`` capacity."""

    per_minute: int
    burst: int

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0


@dataclass(slots=True)
class State:
    """What a limit looked like after a request was admitted (for the headers)."""

    limit: int
    remaining: int
    reset: float  # seconds until full


@dataclass(slots=True)
class Stats:
    redis_leases: int = 0
    redis_returns: int = 0
    redis_errors: int = 0  # failed Redis calls: each means local buckets for a while
    fail_open: int = 0  # requests decided on the local fallback bucket while Redis was unreachable
    refused: int = 0


class Shared:
    """A worker's view of one shared bucket: its lease, its fallback, and what Redis last said."""

    __slots__ = (
        "rule", "redis_key", "workers_key", "allowance", "expires", "empty_until", "remote", "active",
        "pending", "spent", "since", "fallback", "down_until", "owed", "scarce", "lease",
    )

    def __init__(self, rule: Rule, tag: str, kind: str, active: int, now: float, prefix: str) -> None:
        self.rule = rule
        self.redis_key = f"{prefix}rl:{{{tag}}}:{kind}"
        self.workers_key = self.redis_key + ":w"
        self.allowance = 0.0  # leased and not spent; negative: spent beyond the lease, owed to Redis
        self.expires = 0.0
        self.empty_until = 0.0  # Redis said the bucket cannot serve before this loop time
        self.remote = float(rule.burst)  # the shared level at the last lease
        self.active = max(1, active)
        self.pending: asyncio.Future | None = None
        self.spent = 0.0  # tokens spent since the last lease (the demand estimate)
        self.since = now
        self.fallback: Bucket | None = None
        self.down_until = 0.0
        self.owed = 0.0  # spent on the fallback bucket: charged to the shared one when Redis answers again
        # The shared bucket is nearly drained: lease only for a waiting request, never ahead, so no
        # worker sits on tokens another one's client is waiting for.
        self.scarce = False
        self.lease = 1.0  # the last lease's size: a quarter of it left starts the next one

    def want(self, need: float, now: float) -> float:
        elapsed = max(now - self.since, 0.05)
        demand = self.spent / elapsed * LEASE_SECONDS
        return float(max(math.ceil(need - self.allowance), min(math.ceil(demand), self.rule.burst), 1))

    def state(self, now: float) -> State:
        level = max(0.0, self.remote + self.allowance) if self.fallback is None else max(0.0, self.fallback.level(now))
        reset = (self.rule.burst - level) / self.rule.rate if level < self.rule.burst else 0.0
        return State(self.rule.per_minute, int(min(level, self.rule.burst)), reset)


def key_tag(api_key: str) -> str:
    """The hash tag for one API key: never the key itself in Redis."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def rate_limited(kind: str, rule: Rule, retry: float) -> GatewayError:
    seconds = max(1, math.ceil(retry))
    what = "requests" if kind == "req" else "tokens"
    return GatewayError(
        429,
        f"Rate limit reached for {what} per minute: limit {rule.per_minute}, burst {rule.burst}. "
        f"Please try again in {format_reset(retry)}.",
        what, None, "rate_limit_exceeded",
        headers={"Retry-After": str(seconds)},
    )


def format_reset(seconds: float) -> str:
    """OpenAI's duration format for ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s" if minutes < 60 else f"{int(minutes // 60)}h{int(minutes % 60)}m{rest:.0f}s"


class Limiter:
    """The admission limiter and the finish listener for request and token limits.

    ``clock`` is injected (the loop's ``time`` in the gateway) so tests drive
    the arithmetic without sleeping.
    """

    def __init__(
        self, settings: Callable[[], object], redis=None, clock: Callable[[], float] = time.monotonic,
        timeout: float = REDIS_TIMEOUT,
    ) -> None:
        self.settings = settings  # the current snapshot's settings (a reload changes the global limits)
        self.timeout = timeout
        self.redis = redis
        self.clock = clock
        self.stats = Stats()
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.local: dict[tuple[str, str], Bucket] = {}
        self.shared: dict[tuple[str, str], Shared] = {}
        self._resolved: dict[str, tuple] = {}  # key → (settings, ApiKey, rules, buckets): no lookups per request
        self._script = redis.register_script(LEASE_SCRIPT) if redis is not None else None
        self._sweeper: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()

    # --- rules --------------------------------------------------------------

    def rules(self, key) -> tuple[Rule, Rule | None]:
        s = self.settings()
        req = Rule(key.requests_per_minute or s.rate_limit_requests_per_minute, key.burst or s.rate_limit_burst)
        tpm = key.tokens_per_minute if key.tokens_per_minute is not None else s.rate_limit_tokens_per_minute
        if not tpm:
            return req, None
        burst = key.token_burst or s.rate_limit_token_burst or tpm
        return req, Rule(tpm, burst)

    # --- admission ----------------------------------------------------------

    def _resolve(self, key, settings, now: float) -> tuple:
        """A key's rules and buckets under these settings, kept until a reload changes either."""
        req_rule, tok_rule = self.rules(key)
        if self.redis is None:
            first = self._local(key, "req", req_rule, now)
            second = self._local(key, "tok", tok_rule, now) if tok_rule is not None else None
        else:
            first = self._shared(key, "req", req_rule, now)
            second = self._shared(key, "tok", tok_rule, now) if tok_rule is not None else None
        entry = self._resolved[key.key] = (settings, key, req_rule, tok_rule, first, second)
        return entry

    def __call__(self, req):
        """Admit or raise a 429; returns an awaitable only when a lease must be fetched first."""
        key = req.key
        now = self.clock()
        settings = self.settings()
        entry = self._resolved.get(key.key)
        if entry is None or entry[0] is not settings or entry[1] is not key:
            entry = self._resolve(key, settings, now)
        _, _, req_rule, tok_rule, a, b = entry
        need = 0
        if tok_rule is not None:
            need = reservation(req.body, settings.rate_limit_default_max_tokens, req.prompt_tokens())
            if need > tok_rule.burst:
                raise GatewayError(
                    429, f"This request reserves {need} tokens, more than this key's token burst of {tok_rule.burst}. "
                    "Lower max_tokens or the prompt.", "tokens", "max_tokens", "rate_limit_exceeded",
                )
        if self.redis is None:
            self._take_local(req, a, "req", req_rule, 1, now, None)
            if b is not None:
                self._take_local(req, b, "tok", tok_rule, need, now, a)
            return None
        if a.allowance >= 1 and (b is None or b.allowance >= need) and a.fallback is None and (b is None or b.fallback is None):
            self._spend(a, 1, now)
            if b is not None:
                self._spend(b, need, now)
            self._admitted(req, a, b, need, now)
            return None
        return self._admit_shared(req, a, b, need)

    def _local(self, key, kind: str, rule: Rule, now: float) -> Bucket:
        b = self.local.get((key.key, kind))
        if b is None or b.rate != rule.rate or b.capacity != rule.burst:
            b = self.local[(key.key, kind)] = Bucket(rule.rate, rule.burst, now, None if b is None else b.level(now))
        return b

    def _take_local(self, req, b: Bucket, kind: str, rule: Rule, n: float, now: float, slot: Bucket | None) -> None:
        if not b.take(n, now):
            self.stats.refused += 1
            if slot is not None:
                slot.charge(-1, now)  # refused for tokens: the request slot it took goes back
            raise self._refusal(req, kind, rule, b.wait(n, now), now)
        out = req.outcome
        state = State(rule.per_minute, int(max(0.0, b.tokens)), b.reset(now))
        if kind == "req":
            out.limit_requests = state
        else:
            out.limit_tokens = state
            out.reserved_tokens = n
            if req.stream:
                req.meter = StreamMeter(self, req)

    def _refusal(self, req, kind: str, rule: Rule, retry: float, now: float) -> GatewayError:
        out = req.outcome
        state = State(rule.per_minute, 0, retry)
        if kind == "req":
            out.limit_requests = state
        else:
            out.limit_tokens = state
        return rate_limited(kind, rule, retry)

    def _shared(self, key, kind: str, rule: Rule, now: float) -> Shared:
        s = self.shared.get((key.key, kind))
        if s is None or s.rule != rule:
            settings = self.settings()
            s = self.shared[(key.key, kind)] = Shared(
                rule, key_tag(key.key), kind, settings.worker_processes, now, settings.redis_prefix,
            )
            self._ensure_sweeper()
        return s

    def _spend(self, s: Shared, n: float, now: float) -> None:
        s.allowance -= n
        s.spent += n
        if s.allowance * 4 < s.lease and s.pending is None and not s.scarce and s.fallback is None:
            self._background_lease(s, 0)  # top up before the lease runs dry, off the request's path

    def _admitted(self, req, a: Shared, b: Shared | None, need: float, now: float) -> None:
        out = req.outcome
        out.limit_requests = a.state(now)
        if b is not None:
            out.limit_tokens = b.state(now)
            out.reserved_tokens = need
            if req.stream:
                req.meter = StreamMeter(self, req)

    async def _admit_shared(self, req, a: Shared, b: Shared | None, need: float) -> None:
        for s, n, kind in ((a, 1, "req"), (b, need, "tok")):
            if s is None:
                continue
            retry = await self._ensure(s, n)
            if retry is not None:
                self.stats.refused += 1
                if kind == "tok":
                    self._give(a, 1)  # the request slot it took goes back
                raise self._refusal(req, kind, s.rule, retry, self.clock())
        self._admitted(req, a, b, need, self.clock())

    async def _ensure(self, s: Shared, n: float) -> float | None:
        """Spend ``n`` from the lease, leasing more first if needed; else the seconds to wait."""
        for _ in range(3):
            now = self.clock()
            if s.fallback is not None or now < s.down_until:
                return self._fail_open(s, n, now)
            if s.allowance >= n:
                self._spend(s, n, now)
                return None
            if now < s.empty_until:
                return s.empty_until - now
            fut = s.pending if s.pending is not None else self._start_lease(s, n)
            try:
                await asyncio.wait_for(asyncio.shield(fut), self.timeout)
            except asyncio.TimeoutError:
                if s.fallback is None:
                    self.stats.redis_errors += 1
                    self._note_down(s, self.clock())
            except Exception:  # noqa: BLE001 - a Redis failure of any kind: fail open (logged where it happened)
                if s.fallback is None:
                    self._note_down(s, self.clock())
        now = self.clock()
        if s.fallback is not None:
            return self._fail_open(s, n, now)
        if s.allowance >= n:
            self._spend(s, n, now)
            return None
        s.empty_until = max(s.empty_until, now + 0.01)
        return s.empty_until - now

    def _fail_open(self, s: Shared, n: float, now: float) -> float | None:
        if s.fallback is None:
            self._note_down(s, now)
        self.stats.fail_open += 1
        if now >= s.down_until and s.pending is None:
            self._background_lease(s, 0)  # probe: when Redis answers, leasing resumes
        if s.fallback.take(n, now):
            s.owed += n
            return None
        return s.fallback.wait(n, now)

    def _note_down(self, s: Shared, now: float) -> None:
        """Redis did not answer: from now on this key runs on a local bucket at this worker's share."""
        s.down_until = now + RETRY_SECONDS
        if s.fallback is None:
            share = 1.0 / s.active
            level = max(0.0, s.remote) * share + max(0.0, s.allowance)
            s.fallback = Bucket(s.rule.rate * share, max(1.0, s.rule.burst * share), now, level)
            s.allowance = 0.0
            log.warning("rate limits: Redis unreachable; %s on a local bucket at 1/%d of the limit", s.redis_key, s.active)

    # --- leases -------------------------------------------------------------

    def _start_lease(self, s: Shared, need: float) -> asyncio.Future:
        task = asyncio.ensure_future(self._lease(s, need))
        s.pending = task
        task.add_done_callback(lambda t, s=s: _clear(s, t))
        return task

    def _background_lease(self, s: Shared, need: float) -> None:
        task = self._start_lease(s, need)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _lease(self, s: Shared, need: float) -> None:
        now = self.clock()
        want = s.want(need, now)
        give = 0.0
        if s.allowance < 0:
            give, s.allowance = s.allowance, 0.0  # owed: charged to the shared bucket now
        # What was admitted on the fallback during an outage counts against the shared bucket too,
        # so an outage does not add a burst to what the key gets over the minute.
        owed, s.owed = s.owed, 0.0
        give -= owed
        try:
            granted, level, active, wait = await self._script(
                keys=[s.redis_key, s.workers_key],
                args=[s.rule.rate, s.rule.burst, give, want, max(1, math.ceil(need - s.allowance)), self.worker, ACTIVE_SECONDS],
            )
        except Exception as exc:  # noqa: BLE001 - any Redis failure: fail open
            s.allowance += give + owed  # still owed
            s.owed += owed
            self.stats.redis_errors += 1
            first = s.fallback is None
            self._note_down(s, self.clock())
            if first:
                log.warning("rate limits: Redis lease failed (%s: %s)", type(exc).__name__, exc)
            raise
        now = self.clock()
        self.stats.redis_leases += 1
        if s.fallback is not None:
            log.warning("rate limits: Redis reachable again; %s leases from the shared bucket", s.redis_key)
            s.fallback = None
        s.down_until = 0.0
        s.allowance += int(granted)
        s.lease = max(1.0, float(granted))
        s.remote = float(level)
        s.active = int(active)
        s.scarce = int(granted) < want or s.remote < s.active
        s.spent = 0.0
        s.since = now
        s.expires = now + LEASE_SECONDS
        s.empty_until = now + float(wait) if int(granted) == 0 else 0.0

    def _give(self, s: Shared, n: float) -> None:
        s.allowance += n
        if s.fallback is not None:
            s.fallback.charge(-n, self.clock())

    async def _return(self, s: Shared) -> None:
        """Hand an unspent lease (or a debt) back to the shared bucket."""
        give, s.allowance = s.allowance, 0.0
        try:
            _, level, active, _ = await self._script(
                keys=[s.redis_key, s.workers_key], args=[s.rule.rate, s.rule.burst, give, 0, 1, self.worker, ACTIVE_SECONDS]
            )
        except Exception:  # noqa: BLE001 - the tokens stay with this worker; it tries again later
            s.allowance += give
            self.stats.redis_errors += 1
            return
        self.stats.redis_returns += 1
        s.remote = float(level)
        s.active = int(active)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            try:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
            except RuntimeError:
                pass  # no loop (a synchronous test): nothing to sweep

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 4)
            now = self.clock()
            for s in list(self.shared.values()):
                if s.pending is None and s.fallback is None and s.allowance != 0 and now >= s.expires:
                    try:
                        await self._return(s)
                    except asyncio.CancelledError:
                        raise

    async def start(self) -> None:
        """Connect (a cluster client learns the slot map) before the first request needs a lease."""
        if self.redis is None:
            return
        try:
            await asyncio.wait_for(self.redis.ping(), 5)
        except Exception as exc:  # noqa: BLE001 - Redis down at start: the first leases fail open
            log.warning("rate limits: Redis not reachable at start (%s); local buckets until it is", exc)

    async def close(self) -> None:
        """Give every lease back (shutdown), then stop."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for s in list(self.shared.values()):
            if s.pending is None and s.fallback is None and s.allowance:
                await self._return(s)

    # --- settlement ---------------------------------------------------------

    def on_finish(self, req, outcome) -> None:
        """Cache hits cost no tokens and count at the configured weight; everything else pays what it used."""
        if req is None or outcome.limit_requests is None:
            return
        if outcome.from_cache:
            weight = self.settings().rate_limit_cache_hit_weight
            if weight != 1.0:
                self._refund_request(req, 1.0 - weight)
        if outcome.limit_tokens is not None and outcome.reserved_tokens:
            used = 0 if outcome.from_cache else outcome.prompt_tokens + outcome.completion_tokens
            if not used and not outcome.from_cache and outcome.status == 200:
                # No usage reported (a cut stream, a provider that omits it): what was metered, else the reservation.
                used = req.meter.used if req.meter is not None else outcome.reserved_tokens + outcome.charged_tokens
            self._settle(req, outcome, used)

    def _settle(self, req, outcome, used: float) -> None:
        delta = used - outcome.reserved_tokens - outcome.charged_tokens
        outcome.charged_tokens += delta
        if delta:
            self._charge(req.key.key, "tok", delta)

    def _refund_request(self, req, n: float) -> None:
        self._charge(req.key.key, "req", -n)

    def _charge(self, api_key: str, kind: str, n: float) -> None:
        now = self.clock()
        if self.redis is None:
            b = self.local.get((api_key, kind))
            if b is not None:
                b.charge(n, now)
            return
        s = self.shared.get((api_key, kind))
        if s is None:
            return
        if s.fallback is not None:
            s.fallback.charge(n, now)
            s.owed += n
        else:
            s.allowance -= n

    def report(self) -> dict:
        st = self.stats
        return {
            "backend": "redis" if self.redis is not None else "local (per worker)",
            "redis_leases": st.redis_leases, "redis_returns": st.redis_returns, "redis_errors": st.redis_errors,
            "fail_open": st.fail_open, "refused": st.refused,
            "keys_on_fallback": sum(1 for s in self.shared.values() if s.fallback is not None),
        }


def _clear(s: Shared, task) -> None:
    if s.pending is task:
        s.pending = None
    if not task.cancelled():
        task.exception()  # retrieved: a failed lease was handled in _lease


class StreamMeter:
    """Counts a stream's completion tokens as chunks pass, charging beyond the reservation while it runs.

    Content is estimated at 4 characters a token (the provider's real usage
    settles it at the end); the prompt's share was reserved at admission.
    """

    __slots__ = ("limiter", "req", "prompt")

    def __init__(self, limiter: Limiter, req) -> None:
        self.limiter = limiter
        self.req = req
        self.prompt = req.prompt_tokens()

    def __call__(self, chars: int) -> None:
        """``chars``: the answer characters a batch brought (the pipeline has added them to the outcome)."""
        if chars:
            out = self.req.outcome
            over = self.used - out.reserved_tokens - out.charged_tokens
            if over > 0:
                out.charged_tokens += over
                self.limiter._charge(self.req.key.key, "tok", over)


    @property
    def used(self) -> int:
        """Tokens so far by the estimate: the prompt's and the content's that has passed."""
        return self.prompt + (self.req.outcome.content_chars + 3) // 4


def reservation(body: dict, default_max: int, prompt: int | None = None) -> int:
    """What admission reserves: the prompt estimate plus the most the answer may use."""
    most = body.get("max_completion_tokens") or body.get("max_tokens") or default_max
    return (prompt_estimate(body) if prompt is None else prompt) + most * (body.get("n") or 1)


def connect(url: str, cluster: bool, timeout: float = REDIS_TIMEOUT):
    """The limiter's own Redis client: short time-outs and no retries, since a slow answer fails open anyway."""
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, socket_timeout=timeout * 2, socket_connect_timeout=timeout)
    import redis.asyncio as aioredis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return aioredis.Redis.from_url(
        url, socket_timeout=timeout * 2, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
    )
