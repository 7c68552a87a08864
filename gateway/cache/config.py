"""The cache's settings (``[cache]`` in the TOML file), coerced and validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, fields

from gateway.cache.embed import MiniLMVerifier
from gateway.config.validate import Refused, as_bool, as_int, as_number

EMBEDDERS = ("minilm", "hash", "openai")


@dataclass
class CacheConfig:
    """Every knob of the cache, with production defaults (``[cache]`` in the TOML file)."""

    enabled: bool = True
    ttl_seconds: int = 3600  # CACHE_TTL_SECONDS
    max_ttl_seconds: int = 7 * 86_400  # the most an x-gateway-cache-ttl header may ask for
    semantic: bool = True  # the semantic tier (False: exact matches only)
    semantic_threshold: float = 0.85  # SEMANTIC_THRESHOLD: the verifier's cosine for a semantic hit
    embedder: str = "minilm"  # the verifier: minilm (local, default) | hash (none) | openai (provider)
    embedder_url: str | None = None  # openai: base URL of an OpenAI-compatible API (…/v1)
    embedder_model: str = "text-embedding-3-small"
    embedder_key: str | None = None
    embedder_timeout_seconds: float = 5.0
    verify_window_tokens: int = 128  # minilm: tokens per window (longer prompts: head + tail windows)
    candidate_threshold: float = 0.4  # hashed-vector cosine for a candidate worth checking (paraphrases the guard lets through: >= 0.45)
    # Static MiniLM vector cosine for a short prompt's candidate (labelled paraphrases, tune split: 95 % >= 0.47).
    static_candidate_threshold: float = 0.45
    candidates: int = 4  # top-k taken from the vector index (long prompts; short ones: every entry of the content key)
    narrow_margin: float = 0.1  # long prompts (the guard): extra similarity asked per content word that differs (up to 2)
    # Short prompts (the veto): extra similarity asked when one adds content words to the other ("cook rice" /
    # "cook rice in a microwave": 0.90; "capital of X" / "which city is the capital of X": 0.96; tune split)
    added_words_margin: float = 0.06
    # Longer last messages: exact tier only. The guard analyses a query on the loop (~0.35 µs a
    # character: ~1.4 ms at 4,000); the spec's longest prompts are ~2,000 characters.
    max_semantic_chars: int = 4_000
    max_pending_verifications: int = 8  # more waiting than this: answer miss rather than queue
    # minilm under `gateway serve`: one verifier process for all workers (False: each worker loads the model)
    shared_verifier: bool = True
    max_entries: int = 100_000  # per worker; least recently used entries are evicted past it
    max_temperature: float = 1.0  # requests above it are not cached (absent = OpenAI's default, 1)
    cache_tool_calls: bool = False  # requests with tools / answers with tool calls
    cache_multiple_choices: bool = False  # n > 1
    scope_by_key: bool = False  # True: each API key has its own cache
    redis_prefix: str = "gw:cache:"
    stream_maxlen: int = 100_000  # events kept in the Redis stream (approximate)
    write_queue: int = 10_000  # stores waiting for the writer; more are dropped (and counted)
    backlog: int = 10_000  # writes kept while Redis is down, replayed when it returns
    sweep_seconds: float = 1.0  # expiry sweep and index compaction period
    redis_retry_seconds: float = 0.5
    redis_timeout_seconds: float = 2.0

    @classmethod
    def from_mapping(cls, d: dict | None) -> "CacheConfig":
        cfg = cls()
        known = {f.name: f for f in fields(cls)}
        for name, value in (d or {}).items():
            f = known.get(name)
            if f is None:
                raise ValueError(f"cache.{name}: unknown setting (known: {', '.join(sorted(known))})")
            setattr(cfg, name, _coerce(name, f.type, value))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"cache.{name}: {why}, got {getattr(self, name)!r}")

        for name in ("ttl_seconds", "max_ttl_seconds", "max_entries", "candidates", "verify_window_tokens",
                     "max_semantic_chars", "write_queue", "stream_maxlen"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        for name in ("backlog", "max_pending_verifications"):
            if getattr(self, name) < 0:
                raise bad(name, "must not be negative")
        if self.ttl_seconds > self.max_ttl_seconds:
            raise bad("ttl_seconds", f"must not exceed max_ttl_seconds ({self.max_ttl_seconds})")
        if not 0 < self.semantic_threshold <= 1:
            raise bad("semantic_threshold", "must be in (0, 1]")
        for name in ("candidate_threshold", "static_candidate_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "must be in [0, 1]")
        for name in ("narrow_margin", "added_words_margin"):
            if not 0 <= getattr(self, name) <= 0.5:
                raise bad(name, "must be in [0, 0.5]")
        if not 0 <= self.max_temperature <= 2:
            raise bad("max_temperature", "must be in [0, 2]")
        if not 8 <= self.verify_window_tokens <= 512:
            raise bad("verify_window_tokens", "must be in [8, 512]")
        for name in ("sweep_seconds", "redis_retry_seconds", "redis_timeout_seconds", "embedder_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be positive")
        if self.embedder not in EMBEDDERS:
            raise bad("embedder", f"must be one of {', '.join(EMBEDDERS)}")
        if self.embedder == "openai" and not self.embedder_url:
            raise bad("embedder_url", "is required with embedder = 'openai'")
        if self.embedder == "minilm" and self.semantic and self.enabled:
            why = MiniLMVerifier.available()
            if why:
                raise ValueError(f"cache.embedder: 'minilm' cannot load: {why}; or set embedder = 'hash'")
        if not self.redis_prefix:
            raise bad("redis_prefix", "must not be empty")


def _coerce(name: str, kind, value):
    """A cache option from TOML or the environment, as its field's type (the shared checks of config.validate)."""
    kind = str(kind)
    try:
        if kind.startswith("bool"):
            return value if isinstance(value, bool) else _strict_bool(value)
        if kind.startswith("int"):
            return as_int(value, text=True)
        if kind.startswith("float"):
            return as_number(value, text=True)
    except Refused:
        what = "true or false" if kind.startswith("bool") else "an integer" if kind.startswith("int") else "a number"
        raise ValueError(f"cache.{name}: must be {what}, got {value!r}") from None
    if value is not None and not isinstance(value, str):
        raise ValueError(f"cache.{name}: must be a string, got {value!r}")
    return value


def _strict_bool(value) -> bool:
    # Text only (as the environment gives it): a TOML number is not a boolean here.
    if not isinstance(value, str):
        raise Refused(False)
    return as_bool(value)
