"""``POST /v1/messages`` over HTTP: Anthropic's REST answer, SSE event sequence and error shape.

The relay, admission and pipeline are chat's; this module only translates
the body on the way in (``messages_api.to_chat``) and frames the answer the
way Anthropic does. The key may come as ``x-api-key`` (the Anthropic SDK's
api_key) or ``Authorization: Bearer`` (its auth_token).
"""

from __future__ import annotations

import orjson
from starlette.types import Receive, Scope, Send

from gateway import messages_api
from gateway.errors import GatewayError
from gateway.http import headers
from gateway.http.chat import HTTPSurface, scope_headers, serve
from gateway.pipeline.outcome import Outcome
from gateway.request import parse_json

ROUTE = "/v1/messages"
PATHS = frozenset({ROUTE})


class MessagesSurface(HTTPSurface):
    """The relay's output as Anthropic frames it."""

    __slots__ = ("events",)
    keepalive = messages_api.event({"type": "ping"})

    def __init__(self, send: Send, outcome: Outcome) -> None:
        super().__init__(send, outcome)
        self.events = messages_api.Events()

    async def answer(self, completion: dict) -> None:
        await super().answer(messages_api.to_message(completion, self.outcome.request_id))

    async def open(self) -> None:
        # message_start goes first, so a keepalive ping is never the stream's first event (the SDK requires that order).
        await super().open()
        start = messages_api.Events.start("msg_" + self.outcome.request_id, self.outcome.model or "")
        await self.send({"type": "http.response.body", "body": start, "more_body": True})

    async def batch(self, chunks: list[dict]) -> None:
        body = self.events.feed(chunks)
        if body:
            await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def end(self) -> None:
        await self.send({"type": "http.response.body", "body": self.events.end(), "more_body": False})

    async def error(self, err: GatewayError) -> None:
        doc = messages_api.error_body(err)
        if self.started:
            await self.send({"type": "http.response.body", "body": messages_api.event(doc), "more_body": False})
            return
        self.started = True
        hdrs = headers.build(self.outcome, headers.JSON, err=err)
        await self.send({"type": "http.response.start", "status": err.status, "headers": hdrs})
        await self.send({"type": "http.response.body", "body": orjson.dumps(doc)})


def _translated(read):
    """``read_body`` for admission: the Anthropic body read as chat would be, handed on as a Chat Completions body."""

    async def read_chat(limit: int) -> bytes:
        return orjson.dumps(messages_api.to_chat(parse_json(await read(limit))))

    return read_chat


async def handle(gateway, scope: Scope, receive: Receive, send: Send) -> None:
    hdrs = scope_headers(scope)
    if "authorization" not in hdrs and "x-api-key" in hdrs:
        hdrs["authorization"] = "Bearer " + hdrs["x-api-key"]
    await serve(gateway, scope, receive, send, MessagesSurface, ROUTE, hdrs=hdrs, translate=_translated)
