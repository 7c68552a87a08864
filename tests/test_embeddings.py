"""``POST /v1/embeddings`` through the gateway with the openai SDK: OpenAI and Gemini, float and base64, routed and cached.

Over loopback against the simulator, whose embeddings have the real models'
sizes; the gateway runs with the exact cache on (semantic off: embeddings are
cached by their exact input only).
"""

from __future__ import annotations

import numpy as np
import openai
import pytest

from gateway.simulator import SimulatorProcess
from tests.harness import gateway_with_config, openai_client

EMBED = {"openai": "text-embedding-3-small", "google": "gemini-embedding-001", "anthropic": "claude-sonnet-4-5"}


def _dep(name: str, provider: str, sim: SimulatorProcess, key: str | None = None) -> str:
    return (f'{{ name = "{name}", provider = "{provider}", model = "{EMBED[provider]}", '
            f'base_url = "{sim.base_url_for(provider)}", api_key = "{key or "sk-" + provider}" }}')

pytestmark = pytest.mark.usefixtures("fresh_sim")


@pytest.fixture(scope="module")
def gateway(sim):
    toml = "\n\n".join([
        "[cache]\nsemantic = false",
        *(f"[models.emb-{p}]\ndeployments = [{_dep(p, p, sim)}]" for p in EMBED),
        f'[models.emb-fo]\nstrategy = "priority"\ndeployments = [{_dep("fo-gemini", "google", sim, "wrong")}, {_dep("fo-openai", "openai", sim)}]',
        # A chat group, here because this module's gateway has the cache on.
        f'[models.rr]\nstrategy = "priority"\nreroute_unsupported = true\n'
        f'deployments = [{_dep("rr-claude", "anthropic", sim)}, {_dep("rr-gpt", "openai", sim)}]',
    ]) + "\n"
    with gateway_with_config(toml, {"GATEWAY_CACHE": "true"}) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway):
    return openai_client(gateway)


@pytest.mark.parametrize("provider, size", [("openai", 1536), ("google", 3072)])
def test_float_and_base64_of_the_real_size(client, provider, size):
    model = f"emb-{provider}"
    raw = client.embeddings.with_raw_response.create(model=model, input="the cat sat", encoding_format="float")
    one = raw.parse()
    assert raw.headers["x-gateway-provider"] == provider and len(one.data[0].embedding) == size
    # The SDK asks for base64 by default and decodes it: the same vector.
    packed = client.embeddings.create(model=model, input="the cat sat")
    assert np.allclose(packed.data[0].embedding, one.data[0].embedding, atol=1e-6)
    batch = client.embeddings.create(model=model, input=["red apple", "green apple", "quantum field"], dimensions=64)
    assert [d.index for d in batch.data] == [0, 1, 2] and all(len(d.embedding) == 64 for d in batch.data)
    a, b, c = (np.array(d.embedding) for d in batch.data)
    assert a @ b > a @ c  # in input order: the two apples are the close pair


def test_the_same_input_is_answered_from_the_cache(client, sim):
    first = client.embeddings.with_raw_response.create(model="emb-openai", input="cache me please")
    again = client.embeddings.with_raw_response.create(model="emb-openai", input="cache me please")
    other = client.embeddings.with_raw_response.create(model="emb-openai", input="cache me please", dimensions=8)
    assert (first.headers["x-cache"], again.headers["x-cache"], other.headers["x-cache"]) == ("miss", "hit", "miss")
    assert again.parse().data[0].embedding == first.parse().data[0].embedding
    assert sim.stats()["providers"]["openai"]["requests"] == 2


def test_a_failed_deployment_fails_over(client, sim):
    sim.configure("google", api_key="right")
    raw = client.embeddings.with_raw_response.create(model="emb-fo", input="fail over", dimensions=32)
    assert raw.headers["x-gateway-deployment"] == "fo-openai"
    assert raw.headers["x-gateway-failover"] == "fo-gemini (upstream_auth_error)"
    assert len(raw.parse().data[0].embedding) == 32


def test_refusals_name_the_parameter(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="emb-anthropic", input="x")
    assert e.value.body["param"] == "model" and "no embeddings API" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="emb-google", input=[[1, 2, 3]])
    assert e.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="emb-openai", input=[])
    assert e.value.body["param"] == "input"


def test_a_rerouted_chat_answer_is_not_cached_under_the_request(client):
    """Another model's answer to what the group's first model could not serve is not this request's answer."""
    ask = {"model": "rr", "messages": [{"role": "user", "content": "cache or not"}]}
    seen = [client.chat.completions.with_raw_response.create(**ask, logprobs=True).headers for _ in range(2)]
    assert [h["x-cache"] for h in seen] == ["miss", "miss"] and seen[1]["x-gateway-deployment"] == "rr-gpt"
    plain = [client.chat.completions.with_raw_response.create(**ask).headers["x-cache"] for _ in range(2)]
    assert plain == ["miss", "hit"]  # the cache is on: only the rerouted answer was kept out
