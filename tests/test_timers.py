"""The coarse per-request timers (gateway/timers.py): fire once, within a tick; disarmed ones never."""

import asyncio

from gateway.timers import TICK, Timers


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


# relay.Watch: the one timer a plain HTTP request arms is first its body deadline, then its lazy client watch.

from gateway.http.relay import LAZY_WATCH_SECONDS, Watch  # noqa: E402


class Receiver:
    """An ASGI receive() as Granian's is (it returns a future) whose disconnect never comes: counts how
    often the watch listened."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> asyncio.Future:
        self.calls += 1
        return asyncio.get_running_loop().create_future()


async def test_the_watch_timer_is_the_body_deadline_while_the_body_is_read():
    timers = Timers()
    watch = Watch(timers)
    expired_at = []

    async def reading():
        watch.reading(0.25)  # longer than the lazy delay: the timer fires once, re-arms for the rest
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            expired_at.append(asyncio.get_running_loop().time())
            raise

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    task = asyncio.ensure_future(reading())
    await asyncio.gather(task, return_exceptions=True)
    assert watch.expired and task.cancelled()
    assert 0.25 <= expired_at[0] - t0 <= 0.25 + 2 * TICK + 0.1
    assert len(timers) == 0


async def test_a_body_read_in_time_leaves_the_timer_to_start_the_lazy_watch():
    timers = Timers()
    receiver = Receiver()
    watch = Watch(timers)
    watch.reading(10)
    watch.reading_left = None  # what the body reader does once the body is in
    watch.arm(receiver, lazy=True)
    await asyncio.sleep(LAZY_WATCH_SECONDS / 2)
    assert receiver.calls == 0  # not before its time
    await asyncio.sleep(LAZY_WATCH_SECONDS + 3 * TICK)
    assert receiver.calls == 1 and not watch.expired
    watch.stop()
    assert len(timers) == 0


async def test_a_timer_that_fires_during_admission_starts_the_watch_when_armed():
    timers = Timers()
    receiver = Receiver()
    watch = Watch(timers)
    watch.reading(10)
    watch.reading_left = None  # what the body reader does once the body is in
    await asyncio.sleep(LAZY_WATCH_SECONDS + 3 * TICK)  # e.g. a slow budget check between body and relay
    assert receiver.calls == 0 and not watch.expired
    watch.arm(receiver, lazy=True)
    assert receiver.calls == 1  # at once: it is already late
    watch.stop()


async def test_a_stream_listens_at_once_and_disarms_the_body_timer():
    timers = Timers()
    receiver = Receiver()
    watch = Watch(timers)
    watch.reading(10)
    watch.reading_left = None  # what the body reader does once the body is in
    watch.arm(receiver, lazy=False)
    assert receiver.calls == 1 and len(timers) == 0
    watch.stop()


async def test_a_slow_body_does_not_delay_the_watch_to_the_body_deadline():
    # The timer fired while the body was still coming and was re-armed for the rest of its deadline
    # (10 s); once the body is in, the watch must start at once, not when that deadline passes.
    timers = Timers()
    receiver = Receiver()
    watch = Watch(timers)
    watch.reading(10)
    await asyncio.sleep(LAZY_WATCH_SECONDS + 3 * TICK)
    assert not watch.expired and len(timers) == 1  # the deadline, re-armed
    watch.reading_left = None
    watch.arm(receiver, lazy=True)
    assert receiver.calls == 1 and len(timers) == 0
    watch.stop()
