"""The one finish hook: listeners that run exactly once when a request ends.

Every exit path of every surface (an answer, an error before any byte, an
error after the headers, a client that left, a stream the provider cut, a
request cancelled on shutdown) ends in ``Finish.run``. Usage, metrics, access
logs and a ledger register here at start-up instead of being called from each
exit point. Listeners run after the last byte was handed to the server, on
the loop: they must be quick and must not block (queue slow work).
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Callable

from gateway.pipeline.outcome import Outcome

log = logging.getLogger("gateway")

# on_finish(request, outcome): request is the admitted ChatRequest, or None when admission refused it.
Listener = Callable[[object, Outcome], None]


class Finish:
    __slots__ = ("listeners", "failures")

    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        self.failures = 0  # listener calls that raised (logged, never seen by the client)

    def add(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def run(self, req: object, outcome: Outcome) -> None:
        if outcome.finished:
            return  # exactly once, even if two paths reach here
        outcome.finished = perf_counter()
        for listener in self.listeners:
            try:
                listener(req, outcome)
            except Exception:  # noqa: BLE001 - a broken listener must not break the response or its siblings
                self.failures += 1
                log.exception("finish listener %r failed for %s", listener, outcome.request_id)
