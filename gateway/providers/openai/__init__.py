"""OpenAI: the adapter (``adapter``), its simulated wire format (``simulated``) and its facts."""

from gateway.providers.base import Provider
from gateway.providers.openai import adapter

PROVIDER = Provider(
    name="openai",
    adapter=adapter,
    prefix=r"gpt-|chatgpt-|o\d|text-embedding-",  # o\d: the o-series (o1, o3, o4-mini...)
    # What /v1/models lists and what implicit groups serve (with dated snapshots of these names).
    catalogue=(
        "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini",
        "gpt-4.1-nano", "gpt-5", "gpt-5-mini", "gpt-5-nano", "o1", "o1-mini", "o3", "o4-mini",
        "gpt-4-turbo", "gpt-4", "gpt-3.5-turbo", "chatgpt-4o-latest",
        "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
    ),
    small=r"(?<![a-z])(?:mini|nano)",  # "-mini", never the "mini" inside "gemini"
    equivalent={"small": "gpt-4o-mini", "large": "gpt-4o"},
    base_url="https://api.openai.com/v1",
    api_key_env="OPENAI_API_KEY",
    base_url_env="OPENAI_BASE_URL",
    transport_env="OPENAI_TRANSPORT",
    simulated="gateway.providers.openai.simulated",
)
