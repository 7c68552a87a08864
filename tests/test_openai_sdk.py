"""The official openai SDK, unchanged, against a running gateway."""

from __future__ import annotations

import openai
import pytest

from gateway.simulator import SimulatorProcess
from tests.harness import API_KEY, running_gateway, simulator_env

MODELS = ["gpt-4o-mini", "claude-3-5-haiku-latest", "gemini-2.0-flash"]


@pytest.fixture(scope="module")
def gateway():
    with SimulatorProcess() as sim, running_gateway(simulator_env(sim.base_url)) as gw:
        yield gw


@pytest.mark.parametrize("model", MODELS)
def test_sync_create(gateway, model):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0)
    resp = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain neural networks"}],
        max_tokens=40,
        temperature=0.2,
    )
    assert resp.choices[0].message.content and "Explain neural networks" in resp.choices[0].message.content
    assert resp.usage.total_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_sync_stream(gateway, model):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Explain neural networks"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Explain neural networks" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("model", MODELS)
async def test_async_create_and_stream(gateway, model):
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0)
    resp = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is machine learning?"}])
    assert "What is machine learning" in resp.choices[0].message.content
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is machine learning?"}], stream=True
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "What is machine learning" in "".join(parts)
    await client.close()


def test_sdk_errors_are_typed(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert exc.value.param == "temperature"


def test_sdk_lists_models(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0)
    ids = {m.id for m in client.models.list()}
    assert set(MODELS) <= ids
    assert client.models.retrieve("claude-3-5-haiku-latest").owned_by == "anthropic"
