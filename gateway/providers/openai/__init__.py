"""OpenAI: the adapter (``adapter``), its simulated wire format (``simulated``), its facts (``provider.toml``)."""

from gateway.providers.base import Provider
from gateway.providers.openai import adapter

PROVIDER = Provider.load(__name__, adapter)
