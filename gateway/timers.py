"""Coarse timers for per-request deadlines that almost never fire.

Every plain request arms one, ``relay.Watch``: its body deadline, which then
becomes the lazy client watch (``relay.LAZY_WATCH_SECONDS``); the aiohttp
transport arms one per non-streaming call for its deadline. A uvloop timer handle costs ~2.3 µs to arm and
cancel (a libuv handle's init, start, stop and close), measured here beside
~0.07 µs for a clock read and a set insert and discard. So these timers are
slots of ``TICK`` seconds: arming adds to a slot's set, disarming removes, and
one loop timer ticks while any slot is armed. A timer fires up to one tick
late, which none of these deadlines minds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger("gateway")

TICK = 0.05


class Entry(Protocol):
    def fire(self) -> None: ...


class Timers:
    """One per worker (its loop): ``arm`` returns the slot to pass to ``disarm``."""

    __slots__ = ("_slots", "_handle", "_loop")

    def __init__(self) -> None:
        self._slots: dict[int, set[Entry]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self, delay: float, entry: Entry) -> int:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        slot = int((loop.time() + delay) / TICK) + 1  # the first tick at or after the deadline
        entries = self._slots.get(slot)
        if entries is None:
            entries = self._slots[slot] = set()
            # Only a new slot can need the loop timer: while any slot is armed, it ticks.
            if self._handle is None:
                self._handle = loop.call_later(TICK, self._tick)
        entries.add(entry)
        return slot

    def disarm(self, slot: int, entry: Entry) -> None:
        entries = self._slots.get(slot)
        if entries is not None:
            entries.discard(entry)
            if not entries:
                del self._slots[slot]

    def _tick(self) -> None:
        now = int(self._loop.time() / TICK)
        due = [s for s in self._slots if s <= now]
        for slot in sorted(due):
            for entry in self._slots.pop(slot):
                try:
                    entry.fire()
                except Exception:  # noqa: BLE001 - one broken callback must not stop the others' deadlines
                    log.exception("timer callback %r failed", entry)
        self._handle = self._loop.call_later(TICK, self._tick) if self._slots else None

    def __len__(self) -> int:
        return sum(len(s) for s in self._slots.values())
