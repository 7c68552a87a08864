"""The metrics' timer, per worker: flushes the request buffers, samples the gauges.

Every ``interval`` the request metrics buffered by ``metrics.Recorder`` are
written out; every ``sample_every`` intervals the gauges (breakers, process,
cache, verifier, Redis) are read: states, not events, so they are sampled
(and right before this worker renders a scrape) instead of being updated on
the request path. Counters kept elsewhere as plain ints (Redis errors,
verifier sheds, finish-listener failures) are forwarded as deltas.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from time import perf_counter

from gateway import metrics as m

log = logging.getLogger("gateway")

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_sample() -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    m.PROCESS_CPU.set(usage.ru_utime + usage.ru_stime)
    try:
        with open("/proc/self/statm", "rb") as f:
            m.PROCESS_RSS.set(int(f.read().split()[1]) * _PAGE)
        m.PROCESS_FDS.set(len(os.listdir("/proc/self/fd")))
    except OSError:
        m.PROCESS_RSS.set(usage.ru_maxrss * 1024)  # no /proc: the high-water mark is what there is
    m.PROCESS_MAX_FDS.set(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    current, limit = _read_int("/sys/fs/cgroup/memory.current"), _read_int("/sys/fs/cgroup/memory.max")
    if current is not None:
        m.CONTAINER_MEMORY.set(current)
        m.CONTAINER_MEMORY_LIMIT.set(limit or 0)  # "max": no limit


def _read_int(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


class Sampler:
    def __init__(self, gateway, interval: float = 1.0, sample_every: int = 2) -> None:
        self.gateway = gateway
        self.interval = interval  # the request metrics' buffers are flushed every interval
        self.sample_every = sample_every  # gauges (and a Redis round trip) every this many intervals
        self._task: asyncio.Task | None = None
        self._seen = {"redis_errors": 0, "verify_shed": 0, "failures": 0, "log_dropped": 0}
        self._ticks = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            try:
                m.flush()
                if self._ticks % self.sample_every == 0:
                    self.sample()
                    await self.sample_redis()
            except Exception:  # noqa: BLE001 - a sampling bug must not stop the next sample
                log.exception("metrics sampling failed")
            self._ticks += 1
            await asyncio.sleep(self.interval)

    def _forward(self, name: str, total: int, counter) -> None:
        delta = total - self._seen[name]
        if delta > 0:
            counter.inc(delta)
        self._seen[name] = total

    def sample(self) -> None:
        gw = self.gateway
        process_sample()
        for name, state in gw.router.breaker_states().items():
            m.BREAKER.labels(name).set(BREAKER_VALUES.get(state, 2))
        self._forward("failures", gw.finish.failures, m.LISTENER_FAILURES)
        if gw.access_log is not None:
            self._forward("log_dropped", gw.access_log.dropped, m.ACCESS_LOG_DROPPED)
        cache = gw.cache
        if cache is None:
            return
        s = cache.stats()
        m.CACHE_ENTRIES.set(s["entries"])
        m.CACHE_MAX_ENTRIES.set(s["max_entries"])
        m.VERIFY_PENDING.set(s["verify_pending"])
        verifier = s.get("verifier")
        m.VERIFIER_READY.set(1 if verifier and verifier.get("ready") else 0)
        self._forward("verify_shed", s["verify_shed"], m.VERIFY_SHED)
        redis = s["redis"]
        self._forward("redis_errors", redis["errors"], m.REDIS_ERRORS)
        if redis["configured"]:
            m.REDIS_UP.set(1 if redis["up"] else 0)

    async def sample_redis(self) -> None:
        cache = self.gateway.cache
        client = cache.redis_client if cache is not None else None
        if client is None:
            return
        try:
            t0 = perf_counter()
            await asyncio.wait_for(client.ping(), 1.0)
            m.REDIS_LATENCY.observe(perf_counter() - t0)
            info = await asyncio.wait_for(client.info("memory"), 1.0)
        except Exception:  # noqa: BLE001 - Redis down is what REDIS_UP and the error counter say
            return
        m.REDIS_MEMORY.set(info.get("used_memory", 0))
        m.REDIS_MAX_MEMORY.set(info.get("maxmemory", 0))
