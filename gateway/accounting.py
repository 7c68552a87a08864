"""Keys, budgets and the usage ledger of one worker, over one database pool.

Built in ``Gateway.__init__`` when DATABASE_URL is not off; the hooks it adds
are the whole request-path footprint: a virtual-key lookup in admission's key
step (a dict), the budget limiter (only keys with a budget do any work), and
two finish listeners (a tuple appended to the ledger's buffer; a budget
settled).
"""

from __future__ import annotations

import logging

from gateway.budget import Budgets
from gateway.db.engine import settings_engine
from gateway.db.migrate import SchemaBehind, check_schema
from gateway.keys import KeyCache, KeyStore
from gateway.ledger import LedgerWriter, Recorder

log = logging.getLogger("gateway")

class Accounting:
    def __init__(self, settings) -> None:
        self.engine = settings_engine(settings)
        self.writer = LedgerWriter(self.engine, settings.ledger_buffer_rows, settings.ledger_batch_rows,
                                   settings.ledger_flush_seconds)
        self.recorder = Recorder(self.writer, settings.prices)
        self.store = KeyStore(self.engine)
        self.keys = KeyCache(self.store, settings.key_refresh_seconds, settings.redis_url, settings.redis_prefix)
        self.budgets = Budgets(
            settings.prices, self.engine, settings.redis_url, settings.redis_prefix, keys=lambda: self.keys.by_hash.values(),
            reconcile_seconds=settings.budget_reconcile_seconds, healthy=self._ledger_current,
            writer=None if settings.redis_url else self.writer,  # no Redis: the budget is shared through the database
        )

    def _ledger_current(self) -> bool:
        """This worker's ledger is written up to its last batch (a reconciliation pass then counts it all)."""
        w = self.writer
        return w.last_error is None and len(w.buffer) < w.batch

    def install(self, admission, finish) -> None:
        admission.virtual_keys = self.keys
        admission.limiters.append(self.budgets)  # keep last: a request another limiter refuses must not hold a reservation
        finish.add(self.recorder.on_finish)
        finish.add(self.budgets.on_finish)

    async def start(self) -> None:
        """Check the schema (fatal when behind), load the keys, start the writer; a database that is down is not fatal."""
        try:
            await check_schema(self.engine)
        except SchemaBehind:
            await self.engine.dispose()
            raise
        except Exception as exc:  # noqa: BLE001 - serve env/TOML keys; the ledger buffers; keys load when it returns
            log.error("database unreachable at start (%s): ledger rows buffer, virtual keys load when it answers", exc)
            self.writer.start()
            await self.keys.start(load=False)
            self.budgets.start()
            return
        self.writer.start()
        await self.keys.start()
        self.budgets.start()

    async def close(self) -> None:
        await self.writer.close()
        await self.keys.close()
        await self.budgets.close()
        await self.engine.dispose()

    def stats(self) -> dict:
        return {
            "ledger": self.writer.stats(),
            "keys": {"cached": len(self.keys.by_hash), "refreshes": self.keys.refreshes, "refresh_errors": self.keys.errors},
            "budgets": {"refused": self.budgets.refused, "redis_errors": self.budgets.redis_errors,
                        "database_errors": self.budgets.db_errors,
                        "reconciles": self.budgets.reconciles, "corrections": self.budgets.corrections},
        }
