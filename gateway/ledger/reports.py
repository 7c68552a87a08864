"""Usage reports from the daily roll-ups: per key and model, optionally per day; JSON rows or CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.schema import usage_daily
from gateway.errors import invalid

FIELDS = ("key", "model", "day", "requests", "errors", "cached_requests", "prompt_tokens", "completion_tokens",
          "cached_tokens", "total_tokens", "cost_usd")


def parse_day(name: str, raw: str | None) -> dt.date | None:
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise invalid(f"'{name}' must be a date, YYYY-MM-DD.", param=name) from None


async def report(
    engine: AsyncEngine, key: str | None = None, model: str | None = None,
    since: dt.date | None = None, until: dt.date | None = None, by_day: bool = False,
) -> list[dict]:
    """Rows summed per (key, model[, day]), biggest spenders first; ``key`` None: every key.

    ``requests`` counts answers (as OpenAI's usage does), ``errors`` the requests that failed; a
    request refused before it named a model the gateway serves (bad key, bad body) is in the
    ledger's rows but in no model's report row.
    """
    t = usage_daily.c
    group = [t.key_name, t.model] + ([t.day] if by_day else [])
    sums = [sa.func.sum(t[c]).label(c) for c in
            ("requests", "errors", "cached_requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd")]
    q = sa.select(*group, *sums).where(t.model.is_not(None), t.model != "").group_by(*group)
    if key is not None:
        q = q.where(t.key_name == key)
    if model is not None:
        q = q.where(t.model == model)
    if since is not None:
        q = q.where(t.day >= since)
    if until is not None:
        q = q.where(t.day <= until)
    q = q.order_by(*( [t.day] if by_day else []), sa.desc("cost_usd"), t.key_name, t.model)
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    out = []
    for r in rows:
        row = {
            "key": r.key_name, "model": r.model, "requests": int(r.requests) - int(r.errors), "errors": int(r.errors),
            "cached_requests": int(r.cached_requests), "prompt_tokens": int(r.prompt_tokens),
            "completion_tokens": int(r.completion_tokens), "cached_tokens": int(r.cached_tokens),
            "total_tokens": int(r.prompt_tokens) + int(r.completion_tokens), "cost_usd": round(float(r.cost_usd), 8),
        }
        if by_day:
            row["day"] = r.day.isoformat() if isinstance(r.day, dt.date) else str(r.day)
        out.append(row)
    return out


def to_csv(rows: list[dict], by_day: bool) -> str:
    fields = [f for f in FIELDS if by_day or f != "day"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def to_table(rows: list[dict], by_day: bool) -> str:
    """A plain-text table for the terminal (``gateway usage``)."""
    fields = [f for f in FIELDS if (by_day or f != "day") and f not in ("cached_tokens", "total_tokens")]
    cells = [[f for f in fields]] + [[_cell(r.get(f)) for f in fields] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(fields))]
    lines = ["  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6f}"
    return str(v)
