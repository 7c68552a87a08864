"""The coarse per-request timers (gateway/http/timers.py): fire once, within a tick; disarmed ones never."""

import asyncio

from gateway.http.timers import TICK, Timers


class Probe:
    def __init__(self, loop, fail: bool = False) -> None:
        self.loop, self.fail, self.at = loop, fail, []

    def fire(self) -> None:
        self.at.append(self.loop.time())
        if self.fail:
            raise RuntimeError("broken callback")


async def test_an_armed_timer_fires_once_not_early_and_within_a_tick():
    loop = asyncio.get_running_loop()
    timers = Timers()
    probes = [Probe(loop) for _ in range(3)]
    t0 = loop.time()
    for p, delay in zip(probes, (0.05, 0.12, 0.3)):
        timers.arm(delay, p)
    await asyncio.sleep(0.3 + 3 * TICK)
    for p, delay in zip(probes, (0.05, 0.12, 0.3)):
        assert len(p.at) == 1
        assert delay <= p.at[0] - t0 <= delay + TICK + 0.1  # +0.1: a busy host's loop is late itself
    assert len(timers) == 0 and timers._handle is None  # nothing armed: the loop timer stops too


async def test_a_disarmed_timer_never_fires_and_leaves_no_slot():
    loop = asyncio.get_running_loop()
    timers = Timers()
    kept, dropped = Probe(loop), Probe(loop)
    timers.arm(0.1, kept)
    slot = timers.arm(0.1, dropped)
    timers.disarm(slot, dropped)
    timers.disarm(slot, dropped)  # twice is harmless
    await asyncio.sleep(0.1 + 3 * TICK)
    assert dropped.at == [] and len(kept.at) == 1
    slot = timers.arm(5, dropped)
    timers.disarm(slot, dropped)
    assert timers._slots == {}


async def test_a_failing_callback_does_not_stop_the_others():
    loop = asyncio.get_running_loop()
    timers = Timers()
    bad, good = Probe(loop, fail=True), Probe(loop)
    timers.arm(0.05, bad)
    timers.arm(0.05, good)
    await asyncio.sleep(0.05 + 3 * TICK)
    assert len(bad.at) == 1 and len(good.at) == 1
