"""Whole-tier cases of issue 15, written for these tests (in no labelled set, so no split depends on them).

Each pair in a namespace of its own, through the defaults (static candidates, the contrast veto,
MiniLM at SEMANTIC_THRESHOLD 0.85): the contrasts must be refused, the rewordings served. The
rewordings include issue 15's quoted examples, which the cache was not tuned on.
"""

from __future__ import annotations

import pytest

from gateway.cache import Cache
from gateway.cache.text import analyse, veto
from tests.test_cache_helpers import chat, completion, config

# Issue 15's table (every one a miss when it was filed) and the one that hit.
ISSUE_EXAMPLES = [
    ("What's the capital of France?", "Which city is the capital of France?"),
    ("Write a Python function to reverse a list", "Give me Python code that reverses a list"),
    ("How do I undo the last git commit?", "How can I revert my most recent commit in git?"),
    ("How do I merge two dictionaries in Python?", "Combine two dicts into one in Python"),
    ("What is the population of Japan?", "How many people live in Japan?"),
    ("What is the speed of light?", "How fast does light travel?"),
    ("What is machine learning?", "Can you explain what machine learning is?"),
]

REWORDINGS = ISSUE_EXAMPLES + [
    ("What's the tallest waterfall in the world?", "Which waterfall is the tallest on Earth?"),
    ("Explain what an API gateway does.", "What does an API gateway do?"),
    ("how do i grow basil indoors", "How do I grow basil indoors?"),
    ("Could you please tell me how to clean suede shoes?", "How do I clean suede shoes?"),
    ("In Python, how do I check if a file exists?", "How do I check if a file exists in Python?"),
    ("Whats the diffrence between a lake and a pond?", "What's the difference between a lake and a pond?"),
    ("How do I stop my cat from scratching furniture?", "How can I stop my cat from scratching the furniture?"),
    ("Write a Python function that counts vowels in a string.", "Give me Python code to count the vowels in a string."),
    # A filler adverb between the question word and its verb keeps the question's kind (issue 15, third pass).
    ("When did the Meiji era begin?", "When exactly did the Meiji era begin?"),
    ("Where did jazz originate?", "Where exactly did jazz originate?"),
]

# One contrast each that MiniLM scores close (a sibling, an opposite, a symbol, a flag, a name, a number,
# what a number counts, a request turned around, a reversed relation).
CONTRASTS = [
    ("What does the ?? operator do in C#?", "What does the ?. operator do in C#?"),
    ("How many calories are in 2 boiled eggs?", "How many calories are in 2 fried eggs?"),
    ("How do I make my cat use the litter box?", "How do I stop my cat from using the litter box?"),
    ("What is 45 percent of 60?", "What is 45 percent more than 60?"),
    ("What does the tar -x flag do?", "What does the tar -c flag do?"),
    ("Tell me 3 surprising facts about black holes.", "Quick question: list 3 surprising facts about white holes."),
    ("Why does my_list change after the call?", "Why does my_dict change after the call?"),
    ("How do I undo the last git commit?", "How do I undo the last git push?"),
    ("What is the boiling point of water in Fahrenheit?", "What is the freezing point of water in Fahrenheit?"),
    ("How do I say thank you in Swahili?", "How do I say thank you in Zulu?"),
    ("Write a haiku about winter.", "Write a haiku about summer."),
    ("Is it safe to eat raw salmon?", "Is it unsafe to eat raw salmon?"),
    ("Which foods are high in fiber?", "Which foods are low in fiber?"),
    ("How do I convert a string to bytes in Python?", "How do I convert bytes to a string in Python?"),
    ("Explain how a compiler works.", "Explain how an interpreter works."),
    ("How many days are in 3 weeks?", "How many days are in 4 weeks?"),
    ("Convert 3 nautical miles to kilometers.", "Convert 3 miles to kilometers."),
    # The two ends of a quantity (issue 15, third pass): "much" and "many" are stopwords, MiniLM scores these 0.94+.
    ("What happens if a cake has too much baking soda?", "What happens if a cake has too little baking soda?"),
    ("Which bird lays the most eggs?", "Which bird lays the fewest eggs?"),
    ("Why do I get so many notifications from Slack?", "Why do I get so few notifications from Slack?"),
]


@pytest.fixture(scope="module")
async def results():
    cache = Cache(config(), None)  # the defaults: embedder minilm, threshold 0.85
    await cache.start()
    pairs = [(a, b, "hit") for a, b in REWORDINGS] + [(a, b, "miss") for a, b in CONTRASTS]
    try:
        assert cache.config.embedder == "minilm" and cache.config.semantic_threshold == 0.85
        for i, (a, _, _) in enumerate(pairs):
            req = chat(a, headers={"x-gateway-cache-namespace": f"c{i}"})
            await cache.lookup(req)
            cache.store(req, completion(f"answer {i}"))
        await cache.drain()
        out = {}
        for i, (a, b, label) in enumerate(pairs):
            r = await cache.lookup(chat(b, headers={"x-gateway-cache-namespace": f"c{i}"}))
            out[(a, b)] = (label, r.status, r.similarity)
        yield out
    finally:
        await cache.close()


@pytest.mark.parametrize("a, b", REWORDINGS)
async def test_rewordings_are_served(results, a, b):
    label, status, sim = results[(a, b)]
    assert status == "semantic-hit", (status, sim)


@pytest.mark.parametrize("a, b", CONTRASTS)
async def test_contrasts_are_refused(results, a, b):
    label, status, sim = results[(a, b)]
    assert status == "miss", (status, sim)


# The veto's own rules, without the embedder: each case fails without its rule (checked against cd78753).
QUANTITY = [
    ("What happens if a cake has too much baking soda?", "What happens if a cake has too little baking soda?"),
    ("Which bird lays the most eggs?", "Which bird lays the fewest eggs?"),
    ("Why do I get so many notifications from Slack?", "Why do I get so few notifications from Slack?"),
    ("Is it risky to sleep more than nine hours?", "Is it risky to sleep less than nine hours?"),
]
# One prompt has more of one end and the other has the same amount of it: not a contrast.
NOT_QUANTITY = [
    ("Tell me a little more about the Hanseatic League.", "Tell me more about the Hanseatic League."),
    ("How many calories are in a little muffin?", "How many calories are in a small muffin?"),
    ("How much does a passport cost in Canada?", "What is the price of a passport in Canada?"),
]


@pytest.mark.parametrize("a, b", QUANTITY)
def test_the_two_ends_of_a_quantity_are_a_contrast(a, b):
    assert veto(analyse(a), analyse(b)) == "quantity"
    assert veto(analyse(b), analyse(a)) == "quantity"


@pytest.mark.parametrize("a, b", NOT_QUANTITY)
def test_a_quantity_word_on_one_side_only_is_no_contrast(a, b):
    assert veto(analyse(a), analyse(b)) != "quantity"


@pytest.mark.parametrize("a, b", [
    ("When did the Meiji era begin?", "When exactly did the Meiji era begin?"),
    ("Where did jazz originate?", "Where exactly did jazz originate?"),
    ("When was the printing press invented?", "When actually was the printing press invented?"),
])
def test_a_filler_adverb_keeps_the_kind_of_question(a, b):
    assert veto(analyse(a), analyse(b)) is None


def test_a_filler_adverb_does_not_hide_another_kind_of_question():
    assert veto(analyse("When did the Meiji era begin?"), analyse("Why exactly did the Meiji era begin?")) == "kind"
