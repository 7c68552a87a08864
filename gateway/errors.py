"""Errors in OpenAI's shape.

Every failure a client can see is a ``GatewayError``: the app renders it as
``{"error": {"message", "type", "param", "code"}}`` with its status, so no code
path needs to know how errors look on the wire.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    __slots__ = ("status", "message", "type", "param", "code", "headers", "upstream_status", "retry_after")

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers
        # Set when a provider answered with an error: the router decides on retries from these.
        self.upstream_status: int | None = None
        self.retry_after: float | None = None

    def to_dict(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.message!r}, code={self.code!r})"


def invalid(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    """A 400 for a request the client must fix."""
    return GatewayError(400, message, "invalid_request_error", param, code)


def upstream_error(status: int, message: str, code: str = "upstream_error") -> GatewayError:
    """A 5xx for a provider that failed; the client may retry."""
    return GatewayError(status, message, "api_error", None, code)
