"""Virtual keys in the database: the operator's side (create, list, update, revoke).

Only the sha256 of a secret is stored: secrets are 256 random bits, so a
plain hash cannot be reversed or guessed and needs no salt, and the request
path checks one with a single hash and a dict lookup. The secret is returned
once, by ``create``.
"""

from __future__ import annotations

import hashlib
import secrets
from time import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.auth import ApiKey
from gateway.db.schema import api_keys
from gateway.errors import GatewayError, invalid

SECRET_PREFIX = "gw-"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def to_api_key(row) -> ApiKey:
    """A database row as the ``ApiKey`` admission works with (``key`` holds the hash)."""
    models = row.models
    return ApiKey(
        key=row.key_hash, name=row.name, requests_per_minute=row.requests_per_minute, burst=row.burst,
        models=None if models is None else frozenset(models), admin=bool(row.admin), id=row.id, owner=row.owner,
        team=row.team, tokens_per_minute=row.tokens_per_minute, budget_usd=row.budget_usd,
        budget_period=row.budget_period, expires_at=row.expires_at,
    )


# Plain strings (orjson refuses SQLAlchemy's str subclass as a dict key): every column but the hash.
PUBLIC = (
    "id", "name", "prefix", "owner", "team", "models", "admin", "requests_per_minute", "burst", "tokens_per_minute",
    "budget_usd", "budget_period", "expires_at", "created_at", "updated_at", "revoked_at",
)


def public(row) -> dict:
    """What the API and the CLI show of a key: everything but the hash."""
    out = {c: getattr(row, c) for c in PUBLIC}
    out["object"] = "api_key"
    out["revoked"] = row.revoked_at is not None
    return out


class KeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, fields: dict) -> tuple[dict, str]:
        """A new key from checked ``fields`` (gateway/keys/fields.py): its public record and the secret, shown once."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        now = time()
        values = {
            "id": "key_" + secrets.token_hex(8), "key_hash": hash_secret(secret), "prefix": secret[:10],
            "admin": False, "created_at": now, "updated_at": now, **fields,
        }
        async with self.engine.begin() as conn:
            if (await conn.execute(sa.select(api_keys.c.id).where(api_keys.c.name == values["name"]))).first():
                raise _name_taken(values["name"])
            await conn.execute(sa.insert(api_keys).values(values))
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == values["id"]))).one()
        return public(row), secret

    async def list(self, include_revoked: bool = False) -> list[dict]:
        q = sa.select(api_keys).order_by(api_keys.c.created_at)
        if not include_revoked:
            q = q.where(api_keys.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            return [public(r) for r in (await conn.execute(q)).all()]

    async def update(self, key_id: str, fields: dict) -> dict:
        async with self.engine.begin() as conn:
            row = await self._live(conn, key_id)
            name = fields.get("name")
            if name and name != row.name:
                if (await conn.execute(sa.select(api_keys.c.id).where(api_keys.c.name == name))).first():
                    raise _name_taken(name)
            await conn.execute(sa.update(api_keys).where(api_keys.c.id == key_id).values(**fields, updated_at=time()))
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).one()
        return public(row)

    async def revoke(self, key_id: str) -> dict:
        now = time()
        async with self.engine.begin() as conn:
            await self._live(conn, key_id)
            await conn.execute(sa.update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=now, updated_at=now))
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).one()
        return public(row)

    async def changed_since(self, since: float) -> list:
        """Rows updated at or after ``since`` (revoked ones too: a worker drops those)."""
        q = sa.select(api_keys).where(api_keys.c.updated_at >= since)
        async with self.engine.connect() as conn:
            return list((await conn.execute(q)).all())

    @staticmethod
    async def _live(conn, key_id: str):
        row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None or row.revoked_at is not None:
            raise GatewayError(404, f"No live API key with id '{key_id}'.", code="key_not_found")
        return row


def _name_taken(name: str) -> GatewayError:
    err = invalid(f"A key named '{name}' exists already; names are unique (usage and budgets are kept by name).", param="name")
    err.status = 409
    err.code = "key_name_taken"
    return err
