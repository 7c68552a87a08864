"""Anthropic: the adapter (``adapter``), its simulated wire format (``simulated``) and its facts."""

from gateway.providers.anthropic import adapter
from gateway.providers.base import Provider

PROVIDER = Provider(
    name="anthropic",
    adapter=adapter,
    prefix=r"claude-",
    # What /v1/models lists and what implicit groups serve (with dated snapshots of these names).
    catalogue=(
        "claude-3-5-haiku-latest", "claude-sonnet-4-5", "claude-opus-4-1",
        "claude-haiku-4-5", "claude-sonnet-4-0", "claude-opus-4-0", "claude-3-7-sonnet-latest",
        "claude-3-5-sonnet-latest", "claude-3-opus-latest", "claude-3-haiku-20240307",
    ),
    small=r"haiku",
    equivalent={"small": "claude-3-5-haiku-latest", "large": "claude-sonnet-4-5"},
    base_url="https://api.anthropic.com",
    api_key_env="ANTHROPIC_API_KEY",
    base_url_env="ANTHROPIC_BASE_URL",
    transport_env="ANTHROPIC_TRANSPORT",
    simulated="gateway.providers.anthropic.simulated",
)
