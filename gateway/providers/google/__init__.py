"""Google Gemini: the adapter (``adapter``), its simulated wire format (``simulated``) and its facts."""

from gateway.providers.base import Provider
from gateway.providers.google import adapter

PROVIDER = Provider(
    name="google",
    adapter=adapter,
    prefix=r"gemini-",
    # What /v1/models lists and what implicit groups serve (with dated snapshots of these names).
    catalogue=(
        "gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro",
        "gemini-2.0-flash-lite", "gemini-2.5-flash-lite", "gemini-1.5-pro", "gemini-1.5-flash",
        "gemini-embedding-001",
    ),
    small=r"flash|lite",
    equivalent={"small": "gemini-2.0-flash", "large": "gemini-2.5-pro"},
    base_url="https://generativelanguage.googleapis.com",
    api_key_env="GOOGLE_API_KEY",
    base_url_env="GOOGLE_BASE_URL",
    transport_env="GOOGLE_TRANSPORT",
    simulated="gateway.providers.google.simulated",
)
