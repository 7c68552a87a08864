"""The database's commands: ``gateway db upgrade|check``, ``gateway keys create|list|update|revoke``, ``gateway usage``.

They talk to DATABASE_URL directly (no gateway needs to run) and print one
line per failure with exit code 2, like a bad setting. ``prepare`` is what
``gateway serve`` runs before any worker starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import orjson
from sqlalchemy.exc import DBAPIError

from gateway.config import ConfigError, load_settings
from gateway.db.engine import settings_engine
from gateway.db.migrate import SchemaBehind, check_schema, upgrade
from gateway.errors import GatewayError

log = logging.getLogger("gateway")


def _die(message: str) -> None:
    print(f"gateway: {message}", file=sys.stderr)
    raise SystemExit(2)


def _settings():
    try:
        s = load_settings()
    except ConfigError as exc:
        _die(f"config error: {exc}")
    if not s.database_url:
        _die("DATABASE_URL is off: there is no database to work on")
    return s


def prepare(settings) -> None:
    """Before serving: the embedded SQLite file is brought up to date; any other database must already be."""
    if not settings.database_url:
        return
    logging.getLogger("alembic").setLevel(logging.WARNING)  # serve's first log line stays the one that matters
    if settings.database_url.startswith("sqlite"):
        try:
            upgrade(settings.database_url)  # the gateway owns its embedded file: nobody else would run the migration
        except DBAPIError as exc:
            # Not a database, unreadable, or a deleted file's -wal/-shm left beside it ("disk I/O error"):
            # one line naming the file, not a traceback from inside the migration.
            _die(f"DATABASE_URL: cannot use {settings.database_url}: {exc.orig} "
                 "(move the file and any -wal/-shm beside it away, or set DATABASE_URL=off)")
        return

    async def check() -> None:
        engine = settings_engine(settings)
        try:
            await check_schema(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except SchemaBehind as exc:
        _die(str(exc))
    except OSError as exc:  # unreachable: workers start anyway (env keys work, the ledger buffers), but say so
        log.error("database unreachable at start (%s); serving without it until it answers", exc)


def _run(coro_fn, settings):
    async def main():
        engine = settings_engine(settings)
        try:
            return await coro_fn(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except GatewayError as exc:
        _die(exc.message)
    except SchemaBehind as exc:
        _die(str(exc))


def db_command(args: argparse.Namespace) -> None:
    s = _settings()
    if args.action == "upgrade":
        upgrade(s.database_url)
        print("database schema is up to date")
    else:
        _run(check_schema, s)
        print("database schema is up to date")


def _key_fields(args: argparse.Namespace, creating: bool) -> dict:
    from gateway.keys import fields

    raw = {}
    for name in fields.EDITABLE:
        value = getattr(args, name, None)
        if value is not None:
            raw[name] = value
    if isinstance(raw.get("models"), str):
        raw["models"] = [m.strip() for m in raw["models"].split(",") if m.strip()]
    try:
        return fields.parse(raw, creating=creating)
    except GatewayError as exc:
        _die(exc.message)


def keys_command(args: argparse.Namespace) -> None:
    from gateway.keys import KeyStore

    s = _settings()

    async def act(engine):
        await check_schema(engine)
        store = KeyStore(engine)
        if args.action == "create":
            record, secret = await store.create(_key_fields(args, creating=True))
            print(f"created {record['id']} ({record['name']}); the key, shown this once:\n{secret}")
        elif args.action == "list":
            for k in await store.list(include_revoked=args.revoked):
                state = "revoked" if k["revoked"] else "live"
                budget = f"${k['budget_usd']:g}/{k['budget_period']}" if k["budget_usd"] is not None else "-"
                print(f"{k['id']}  {k['name']:<24} {k['prefix']}…  {state:<7} owner={k['owner'] or '-'} "
                      f"team={k['team'] or '-'} budget={budget} models={','.join(k['models'] or ['*'])}")
        elif args.action == "update":
            print(orjson.dumps(await store.update(args.id, _key_fields(args, creating=False))).decode())
        else:
            record = await store.revoke(args.id)
            print(f"revoked {record['id']} ({record['name']})")

    _run(act, s)


def usage_command(args: argparse.Namespace) -> None:
    from gateway.ledger import reports

    s = _settings()

    async def act(engine):
        await check_schema(engine)
        since = reports.parse_day("since", args.since)
        until = reports.parse_day("until", args.until)
        return await reports.report(engine, key=args.key, model=args.model, since=since, until=until, by_day=args.by_day)

    rows = _run(act, s)
    print(reports.to_csv(rows, args.by_day) if args.csv else reports.to_table(rows, args.by_day))


def add_parsers(sub) -> None:
    p = sub.add_parser("db", help="database schema: upgrade (run the migrations) or check")
    p.add_argument("action", choices=("upgrade", "check"))
    p.set_defaults(func=db_command)

    p = sub.add_parser("keys", help="virtual keys: create, list, update, revoke")
    keys = p.add_subparsers(dest="action", required=True)
    for action in ("create", "update"):
        k = keys.add_parser(action)
        if action == "update":
            k.add_argument("id")
        k.add_argument("--name", required=action == "create")
        k.add_argument("--owner")
        k.add_argument("--team")
        k.add_argument("--models", help="comma-separated model names (default: every model)")
        k.add_argument("--admin", action="store_const", const=True)
        k.add_argument("--requests-per-minute", dest="requests_per_minute", type=int)
        k.add_argument("--burst", type=int)
        k.add_argument("--tokens-per-minute", dest="tokens_per_minute", type=int)
        k.add_argument("--budget", dest="budget_usd", type=float, help="USD per --period")
        k.add_argument("--period", dest="budget_period", choices=("day", "month"))
        k.add_argument("--expires", dest="expires_at", help="ISO 8601 time (UTC unless given)")
    k = keys.add_parser("list")
    k.add_argument("--revoked", action="store_true", help="include revoked keys")
    k = keys.add_parser("revoke")
    k.add_argument("id")
    p.set_defaults(func=keys_command)

    p = sub.add_parser("usage", help="usage and cost per key and model, from the ledger")
    p.add_argument("--key")
    p.add_argument("--model")
    p.add_argument("--since", help="YYYY-MM-DD")
    p.add_argument("--until", help="YYYY-MM-DD")
    p.add_argument("--by-day", action="store_true")
    p.add_argument("--csv", action="store_true")
    p.set_defaults(func=usage_command)
