"""Anthropic: the adapter (``adapter``), its simulated wire format (``simulated``), its facts (``provider.toml``)."""

from gateway.providers.base import Provider
from gateway.providers.anthropic import adapter

PROVIDER = Provider.load(__name__, adapter)
