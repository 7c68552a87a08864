"""What every provider's simulated wire format shares: requests, replies, answers, checks.

Each provider's handlers live in its folder (``gateway/providers/NAME/simulated.py``,
named by the registry). A handler takes a parsed ``Request`` and the provider's
``Settings`` and returns a ``Reply``; the server decides when (latency) and how fast
(tokens_per_second) it goes out. Answers are deterministic functions of the
request ("Simulated openai reply to: <first words of the last user turn>"
followed by filler), so tests and cache tests can tell them apart.

Streams are returned as *frames*: the bytes written at once, one per content
chunk, with the provider's opening events glued to the first frame and its
closing events to the last, so pacing only ever waits between content chunks.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import zlib
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import numpy as np
import orjson

from gateway.config.validate import Refused, as_int, as_number
from gateway.simulator.settings import Settings


@dataclass(slots=True)
class Request:
    method: bytes
    path: str
    query: str
    headers: dict[bytes, bytes]  # lower-cased names
    body: bytes
    keep_alive: bool = True


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes = b""
    frames: list[bytes] | None = None  # set for a stream (sent with chunked encoding)
    content_type: bytes = b"application/json"
    headers: bytes = b""  # extra header lines, each ending in \r\n


Handler = Callable[[Request, Settings], Reply]


class Invalid(Exception):
    """A request the real API would refuse with a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# ---------------------------------------------------------------- answers

_FILLER = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi ut "
    "aliquip ex ea commodo consequat duis aute irure dolor in reprehenderit in voluptate velit esse cillum"
).split()
_FILLER_LONG = list(itertools.islice(itertools.cycle(_FILLER), 4096))


@dataclass(slots=True)
class Answer:
    text: str
    tokens: int
    end: str  # "end" | "length" | "stop_sequence"
    stop_sequence: str | None = None


def answer(provider: str, last_user: str, tokens: int, max_tokens: int | None, stops: list[str]) -> Answer:
    """The text a provider "generates", cut by a stop sequence or max_tokens like the real thing."""
    words = ["Simulated", provider, "reply", "to:", *last_user.split()[:8]]
    if len(words) < tokens:
        need = tokens - len(words)
        words += _FILLER_LONG[:need] if need <= len(_FILLER_LONG) else list(itertools.islice(itertools.cycle(_FILLER), need))
    else:
        del words[tokens:]
    text = " ".join(words)
    if stops:
        first: tuple[int, str] | None = None
        for stop in stops:
            at = text.find(stop) if stop else -1
            if at >= 0 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            cut = text[: first[0]]
            used = len(cut.split())
            if max_tokens is None or used <= max_tokens:
                return Answer(cut, used, "stop_sequence", first[1])
    if max_tokens is not None and max_tokens < len(words):
        return Answer(" ".join(words[:max_tokens]), max_tokens, "length")
    return Answer(text, len(words), "end")


def pieces(text: str, per_chunk: int) -> list[str]:
    """Split an answer into streamed pieces whose concatenation is exactly ``text``."""
    words = text.split(" ")
    if per_chunk == 1:
        return [words[0], *[" " + w for w in words[1:]]]
    out = [" ".join(words[i : i + per_chunk]) for i in range(0, len(words), per_chunk)]
    return [out[0], *[" " + p for p in out[1:]]]


def words(text: str) -> int:
    return len(text.split())


def read_turns(turns: list, read: Callable[[int, object], tuple[str, str]], prompt: int = 0) -> tuple[int, str]:
    """The prompt's words and the last user turn's text; ``read(i, turn)`` checks a turn and gives (role, text)."""
    last_user = ""
    for i, turn in enumerate(turns):
        role, text = read(i, turn)
        prompt += words(text)
        if role == "user":
            last_user = text
    return prompt, last_user


_id_prefix = os.urandom(4).hex()
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}{_id_prefix}{next(_ids):012x}"


def json_object(body: bytes) -> dict:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"We could not parse the JSON body of your request. ({exc})") from None
    if not isinstance(obj, dict):
        raise Invalid("The request body must be a JSON object.")
    return obj


def endpoint(auth: Callable[[Request, Settings], Reply | None], refuse: Callable[[Invalid], Reply]):
    """A handler's frame: the provider's auth check first, and an ``Invalid`` raised inside becomes its 400."""

    def wrap(handler: Callable[..., Reply]) -> Callable[..., Reply]:
        @functools.wraps(handler)
        def handle(req: Request, s: Settings, *args) -> Reply:
            denied = auth(req, s)
            if denied is not None:
                return denied
            try:
                return handler(req, s, *args)
            except Invalid as exc:
                return refuse(exc)

        return handle

    return wrap


def text_field(obj: dict, name: str, message: str, param: str | None = None) -> str:
    """A required non-empty string; ``message`` is the provider's own words for its absence."""
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise Invalid(message, param)
    return value


def opt_int(obj: dict, name: str, low: int = 1, high: int = 1_000_000) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    try:
        return as_int(value, low, high, whole_floats=False)
    except Refused:
        raise Invalid(f"Invalid '{name}': expected an integer between {low} and {high}, got {value!r}.", name) from None


def opt_number(obj: dict, name: str, low: float, high: float) -> None:
    value = obj.get(name)
    if value is None:
        return
    try:
        as_number(value, low, high)
    except Refused:
        raise Invalid(f"{name}: range: {low:g}..{high:g}", name) from None


def stops_list(value: object, name: str, limit: int | None) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise Invalid(f"Invalid '{name}': expected a string or a list of strings.", name)
    if limit is not None and len(stops) > limit:
        raise Invalid(f"Invalid '{name}': at most {limit} sequences.", name)
    return stops


def sse_frames(events: list[list[bytes]], head: list[bytes], tail: list[bytes]) -> list[bytes]:
    """Join per-piece events into frames: ``head`` goes with the first, ``tail`` with the last."""
    events[0] = head + events[0]
    events[-1] = events[-1] + tail
    return [b"".join(e) for e in events]


SSE = b"text/event-stream"

_WORD = re.compile(r"\w+")
_word_vectors: dict[tuple[str, int], np.ndarray] = {}


def _word_vector(word: str, dims: int) -> np.ndarray:
    vec = _word_vectors.get((word, dims))
    if vec is None:
        if len(_word_vectors) > 100_000:
            _word_vectors.clear()
        rng = np.random.default_rng(zlib.crc32(word.encode()))
        vec = _word_vectors[(word, dims)] = rng.standard_normal(dims, dtype=np.float32)
    return vec


def embed(text: str, dims: int = 256) -> np.ndarray:
    """A unit vector that is the sum of one fixed random vector per word: shared words, similar texts."""
    tokens = _WORD.findall(text.lower()) or [""]
    vec = np.sum([_word_vector(t, dims) for t in tokens], axis=0, dtype=np.float32)
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm else vec


# ---------------------------------------------------------------- errors

# A provider's simulated module (see the registry) has: ROUTES, AUTH_HEADER, OVERLOADED,
# error(status, message=None) -> Reply, and optionally match(req) -> Handler | None.


def error_words(status: int, message: str | None, kinds: dict[int, str], messages: dict[int, str], server: str, client: str) -> tuple[str, str]:
    """An error's kind and message: the provider's own for ``status``, else its default for a 5xx (``server``) or 4xx."""
    kind = kinds.get(status, server if status >= 500 else client)
    return kind, message or messages.get(status, "Simulated error.")


def error(wire: ModuleType, status: int, retry_after: int | None = None) -> Reply:
    """A provider-shaped error; 429/503/529 carry Retry-After like the real services."""
    reply = wire.error(status)
    if retry_after is not None and status in (429, 503, 529):
        reply.headers = b"retry-after: %d\r\n" % retry_after
    return reply


def overloaded(wire: ModuleType, retry_after: int) -> Reply:
    """What a provider sends when it sheds load (529 for Anthropic, 429 elsewhere)."""
    return error(wire, wire.OVERLOADED, retry_after)
