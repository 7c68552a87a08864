"""The provider registry: every provider's facts come from its folder, and everything else reads them.

Each registered provider is checked for what the gateway needs of it (adapter
functions, a catalogue its own prefix resolves, tier equivalents, a default URL,
env names that the settings read), and its adapter is run over real HTTP
against its own simulated wire format. A fourth provider registered in a fresh
interpreter shows that nothing outside the registry lists providers.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from gateway.config import PROVIDERS as CONFIG_PROVIDERS
from gateway.config import load_settings
from gateway.providers import ADAPTERS, PROVIDERS, get_adapter
from gateway.providers.base import Deployment
from gateway.routing.resolve import Snapshot, equivalent_model, provider_for
from gateway.simulator import PROVIDERS as SIMULATED
from gateway.simulator import Simulator, SimulatorProcess
from gateway.simulator.wire import Request
from gateway.sse import SSEDecoder

ADAPTER_FUNCTIONS = ("build_request", "parse_response", "new_stream", "parse_stream_event", "map_error")
NAMES = list(PROVIDERS)


def test_every_list_of_providers_is_the_registry():
    assert NAMES == ["openai", "anthropic", "google"]
    assert CONFIG_PROVIDERS == tuple(NAMES)
    assert SIMULATED == tuple(NAMES)
    assert list(ADAPTERS) == NAMES
    assert list(load_settings({}).providers) == NAMES
    assert list(Simulator().settings) == NAMES
    with pytest.raises(ValueError, match="expected one of: openai, anthropic, google"):
        get_adapter("cohere")


@pytest.mark.parametrize("name", NAMES)
def test_entry_has_what_the_gateway_needs(name):
    p = PROVIDERS[name]
    assert p.name == name
    assert get_adapter(name) is p.adapter
    for fn in ADAPTER_FUNCTIONS:
        assert callable(getattr(p.adapter, fn)), fn
    assert p.catalogue and all(provider_for(m) == name for m in p.catalogue)
    assert set(p.equivalent) == {"small", "large"}
    assert all(provider_for(m) == name for m in p.equivalent.values())
    # The tiers are told apart by the names themselves: a small model's equivalent is small.
    for other in NAMES:
        assert equivalent_model(p.equivalent["small"], other) == PROVIDERS[other].equivalent["small"]
        assert equivalent_model(p.equivalent["large"], other) == PROVIDERS[other].equivalent["large"]
    assert urlsplit(p.base_url).scheme == "https" and urlsplit(p.base_url).hostname
    assert {p.api_key_env, p.base_url_env, p.transport_env} <= {f"{name.upper()}_{s}" for s in ("API_KEY", "BASE_URL", "TRANSPORT")}
    assert importlib.import_module(p.simulated).ROUTES


@pytest.mark.parametrize("name", NAMES)
def test_settings_read_the_entry(name):
    p = PROVIDERS[name]
    default = load_settings({}).providers[name]
    assert (default.api_key, default.base_url) == (None, p.base_url)
    s = load_settings({p.api_key_env: "k-1", p.base_url_env: "http://127.0.0.1:9/x/", p.transport_env: "httpx"})
    got = s.providers[name]
    assert (got.api_key, got.base_url, got.transport) == ("k-1", "http://127.0.0.1:9/x", "httpx")
    assert s.configured_providers == [name]
    models = Snapshot(s, {}, lambda group, register: group)
    assert [m for m in models.model_names()] == list(p.catalogue)
    d = models.resolve(p.catalogue[0]).deployments
    assert [(x.provider, x.base_url, x.api_key) for x in d] == [(name, "http://127.0.0.1:9/x", "k-1")]


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess() as sim:
        yield sim


def _deployment(sim: SimulatorProcess, name: str) -> Deployment:
    model = PROVIDERS[name].equivalent["small"]
    return Deployment(f"{name}:{model}", name, model, sim.base_url_for(name), "sim-key")


@pytest.mark.parametrize("name", NAMES)
def test_adapter_speaks_its_simulated_wire_format(sim, name):
    """The adapter's request, sent over loopback to the simulator at the provider's base path, parses back."""
    d = _deployment(sim, name)
    adapter = PROVIDERS[name].adapter
    body = {"model": "x", "messages": [{"role": "user", "content": "registry check"}], "max_tokens": 8}
    with httpx.Client(timeout=5) as http:
        up = adapter.build_request(body, d, False)
        r = http.request(up.method, up.url, headers=up.headers, content=up.body)
        assert r.status_code == 200, r.text
        doc = adapter.parse_response(r.content, d)
        assert doc["choices"][0]["message"]["content"].startswith(f"Simulated {name} reply to: registry check")

        up = adapter.build_request({**body, "stream": True}, d, True)
        r = http.request(up.method, up.url, headers=up.headers, content=up.body)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        state = adapter.new_stream(body, d)
        decoder = SSEDecoder()
        text = "".join(
            c["choices"][0]["delta"].get("content") or ""
            for data in [*decoder.feed(r.content), *decoder.flush()]
            for c in adapter.parse_stream_event(data, state)
            if c["choices"]
        )
        assert text == doc["choices"][0]["message"]["content"]
        assert state.usage and state.usage["completion_tokens"] == 8

        # Its error shape too: what its adapter maps back to an OpenAI-shaped error.
        sim.configure(name, mode="error", error_status=429)
        try:
            up = adapter.build_request(body, d, False)
            r = http.request(up.method, up.url, headers=up.headers, content=up.body)
        finally:
            sim.reset()
        assert r.status_code == 429
        assert adapter.map_error(r.status_code, r.content).status == 429


@pytest.mark.parametrize("name", NAMES)
def test_simulator_routes_each_registered_provider(name):
    """Every route a provider's simulated module declares reaches that provider, shared paths by auth header."""
    wire = importlib.import_module(PROVIDERS[name].simulated)
    route = Simulator().route
    for method, path in wire.ROUTES:
        found = route(Request(method, path, "", {wire.AUTH_HEADER: b"k"}, b""))
        assert found is not None and found[0] == name, (method, path)


def test_a_new_provider_is_one_registry_entry():
    """Registered before anything else is imported, a fourth provider is configurable, resolvable and simulated."""
    code = textwrap.dedent(
        """
        import dataclasses
        from gateway.providers import registry
        acme = dataclasses.replace(
            registry.PROVIDERS["openai"], name="acme", prefix="acme-", catalogue=("acme-1",), small="tiny",
            equivalent={"small": "acme-tiny", "large": "acme-1"},
            api_key_env="ACME_API_KEY", base_url_env="ACME_BASE_URL", transport_env="ACME_TRANSPORT",
        )
        registry.PROVIDERS["acme"] = acme  # what a fourth line in the registry's list does
        registry.NAMES = tuple(registry.PROVIDERS)
        registry.ADAPTERS["acme"] = acme.adapter

        from gateway.config import load_settings
        from gateway.routing.resolve import Snapshot
        from gateway.simulator import Simulator
        s = load_settings({"ACME_API_KEY": "k", "OPENAI_API_KEY": "o", "GATEWAY_IMPLICIT_FALLBACK": "true"})
        models = Snapshot(s, {}, lambda group, register: group)
        print([d.name for d in models.resolve("acme-1").deployments])
        print([d.name for d in models.resolve("gpt-4o-mini").deployments])
        print(s.providers["acme"].base_url, "acme-1" in models.model_names())
        print(list(Simulator({"acme": {"latency_ms": 1}}).settings))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "['acme:acme-1', 'openai:gpt-4o']",
        "['openai:gpt-4o-mini', 'acme:acme-tiny']",
        "https://api.openai.com/v1 True",
        "['openai', 'anthropic', 'google', 'acme']",
    ]


def test_simulated_error_has_the_providers_shape():
    for name in NAMES:
        wire = importlib.import_module(PROVIDERS[name].simulated)
        reply = wire.error(503, "registry says no")
        assert reply.status == 503 and "error" in orjson.loads(reply.body)
        err = PROVIDERS[name].adapter.map_error(503, reply.body)
        assert err.status == 502 and "HTTP 503" in err.message and "registry says no" in err.message, err


def test_each_providers_facts_ship_in_the_wheel():
    """``Provider.load`` reads the folder's provider.toml at import: a wheel without it could not start."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gateway.providers"]
    for name in NAMES:
        assert (root / "gateway" / "providers" / name / "provider.toml").is_file()
        assert any(fnmatch.fnmatch(f"{name}/provider.toml", g) for g in globs), name
