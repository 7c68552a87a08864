"""The load tests' prompt mix (benchmarks/prompt_mix.json) has the spec's shape: class shares, token ranges,
average input about 85 tokens, a max_tokens cap of 500, paraphrases and the three domains."""

from __future__ import annotations

import json
import math
from pathlib import Path

MIX = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "prompt_mix.json").read_text())


def tokens(system: str, user: str) -> int:
    # The estimate the data file states: ceil(chars / 4) + 4 per message, + 3 per request.
    return math.ceil(len(system) / 4) + 4 + math.ceil(len(user) / 4) + 4 + 3


def by_class() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {name: [] for name in MIX["classes"]}
    for p in MIX["prompts"]:
        out[p["class"]].append(p)
    return out


def test_shares_are_the_specs():
    assert {k: v["share"] for k, v in MIX["classes"].items()} == {"short": 0.3, "medium": 0.5, "long": 0.2}


def test_every_variant_is_in_its_class_range():
    for p in MIX["prompts"]:
        lo, hi = MIX["classes"][p["class"]]["tokens"]
        for v in p["variants"]:
            assert lo <= tokens(MIX["system"], v) <= hi, (p["id"], tokens(MIX["system"], v))


def test_average_input_is_about_85_tokens():
    # What k6 sends on average: a class by share, a prompt by weight in it, a variant uniformly.
    avg = 0.0
    for name, prompts in by_class().items():
        total_w = sum(p["weight"] for p in prompts)
        cls = sum(p["weight"] / total_w * sum(tokens(MIX["system"], v) for v in p["variants"]) / len(p["variants"]) for p in prompts)
        avg += MIX["classes"][name]["share"] * cls
    assert 75 <= avg <= 95, avg


def test_max_tokens_stay_within_the_specs_500():
    assert all(0 < p["max_tokens"] <= MIX["max_tokens"] == 500 for p in MIX["prompts"])


def test_paraphrases_domains_and_code():
    assert sum(len(p["variants"]) > 1 for p in MIX["prompts"]) >= len(MIX["prompts"]) * 0.8
    assert {p["domain"] for p in MIX["prompts"]} == {"technical", "conversational", "analytical"}
    text = " ".join(v for p in MIX["prompts"] for v in p["variants"])
    assert "def " in text and "function " in text  # Python and JavaScript snippets
    assert len({p["id"] for p in MIX["prompts"]}) == len(MIX["prompts"])
