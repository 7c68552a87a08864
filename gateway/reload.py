"""Config reload without a restart, across Granian's worker processes.

Two ways in, both documented in the README:

- ``POST /admin/reload`` (admin key) reloads the worker that got it, in
  process: the new settings are parsed and validated first, the router's
  state is built and then swapped as one reference, so a request sees either
  the old config or the new one, never a mix; breaker and latency state carry
  over. That worker then sends SIGHUP to its sibling workers, which do the
  same on their own loops (``install``).
- ``kill -HUP <worker pid>``: that worker alone reloads in process.
- ``kill -HUP <granian main pid>``: Granian's own behaviour (2.8) — it
  respawns every worker gracefully, one by one (``respawn_interval``, 3.5 s
  each); the new workers read the config afresh; breaker state starts over.

Sibling workers are found on Linux through /proc: the other children of our
parent process that run the same command line as we do (Granian forks its
workers from the main process, so they share it; the embedded simulator and
multiprocessing helpers do not). Elsewhere only the receiving worker reloads,
and the answer says so (``workers_signalled: 0``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Callable

log = logging.getLogger("gateway")


def _cmdline(pid: int | str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def _ppid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    rest = stat[stat.rfind(b")") + 2 :].split()
    return int(rest[1]) if len(rest) > 1 else None


def sibling_workers() -> list[int]:
    """Pids of the other Granian workers of this server (Linux; [] elsewhere)."""
    me = os.getpid()
    parent = os.getppid()
    mine = _cmdline(me)
    if not mine or parent <= 1 or not os.path.isdir("/proc"):
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        if _ppid(entry) == parent and _cmdline(entry) == mine:
            out.append(int(entry))
    return out


def signal_siblings(sig: int = signal.SIGHUP) -> int:
    sent = 0
    for pid in sibling_workers():
        try:
            os.kill(pid, sig)
            sent += 1
        except OSError:
            pass
    return sent


def install(callback: Callable[[], None]) -> bool:
    """Run ``callback`` on SIGHUP in this worker's loop; False where that is not possible."""
    if not hasattr(signal, "SIGHUP"):
        return False
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, callback)
    except (RuntimeError, ValueError):  # a loop without signal support raises a RuntimeError subclass
        return False  # not the main thread, or no signal support in this loop
    return True


def uninstall() -> None:
    try:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
    except (RuntimeError, ValueError, AttributeError):
        pass
