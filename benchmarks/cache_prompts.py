"""The spec's prompt mix, as traffic: deterministic, seeded, reusable.

30 % short prompts (10-50 tokens), 50 % medium (50-150), 20 % long (150-500),
with the repeats and paraphrases real traffic has: each request either starts
a new *intent* (a question with its slots filled: topic, language, numbers,
a document ...) or comes back to an earlier one, picked with a Zipf law, in
the same words as before (an exact repeat) or in other words (a paraphrase).
New intents share templates with old ones and differ in a slot (another
number, another language, another topic): the near misses a cache must not
serve.

Every prompt carries its intent id, so a benchmark can tell a right semantic
hit (same intent) from a false one.

    python benchmarks/cache_prompts.py --n 20000 --seed 7 --dump prompts.json
    python benchmarks/cache_prompts.py --n 10 --show

``generate(n, seed)`` returns the list; the JSON dump is a list of
``{"i", "intent", "phrasing", "bucket", "tokens", "model", "messages"}``
objects a load script (k6, wrk) can post as-is.
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import sys

TOPICS = """photosynthesis;neural networks;the French Revolution;black holes;compound interest;the immune system;
plate tectonics;quantum entanglement;the stock market;inflation;supply and demand;DNA replication;the water cycle;
climate change;the Roman Empire;the Cold War;machine learning;blockchain;the theory of evolution;general relativity;
the Big Bang;volcanoes;earthquakes;hurricanes;the greenhouse effect;antibiotics;vaccines;the nervous system;
the digestive system;the human heart;cryptography;public key encryption;the TCP handshake;DNS resolution;
garbage collection;virtual memory;database indexing;consistent hashing;the CAP theorem;eventual consistency;
the Renaissance;the Industrial Revolution;the printing press;World War I;the Silk Road;ancient Egypt;the Maya;
impressionism;baroque music;jazz;the blues;game theory;the prisoner's dilemma;opportunity cost;comparative advantage;
the placebo effect;cognitive dissonance;confirmation bias;the scientific method;natural selection;mitosis;meiosis;
the periodic table;chemical bonds;nuclear fission;nuclear fusion;solar panels;wind turbines;electric cars;
lithium batteries;the speed of light;gravity;magnetism;electricity;semiconductors;transistors;the internet;
HTTP caching;load balancing;microservices;containers;Kubernetes;serverless computing;edge computing;
recommendation systems;search engines;PageRank;gradient descent;backpropagation;transformers in NLP;
attention mechanisms;word embeddings;reinforcement learning;computer vision;speech recognition;
the Fibonacci sequence;prime numbers;calculus;linear algebra;probability;Bayes' theorem;statistics;
the Pythagorean theorem;fractals;chaos theory;the butterfly effect;string theory;dark matter;dark energy;
exoplanets;the Moon landing;the International Space Station;Mars exploration;coral reefs;rainforests;
deserts;glaciers;ocean currents;tides;the ozone layer;recycling;composting;urban planning;
the electoral college;parliamentary democracy;the separation of powers;human rights;stoicism;existentialism;
utilitarianism;the trolley problem;mindfulness;sleep cycles;circadian rhythms;nutrition;intermittent fasting;
muscle growth;marathon training;yoga;meditation;public speaking;negotiation;time management;leadership""".replace("\n", "").split(";")

QUALIFIERS = ["", "", "", " for a beginner", " for a high school student", " in simple terms", " with an example",
              " and why it matters", " in the context of history", " and its main criticisms"]

LANGS = ["Python", "JavaScript", "TypeScript", "Java", "Go", "Rust", "C++", "C#", "Ruby", "PHP", "Kotlin", "Swift"]
TASKS = [
    ("checks whether a number is prime", "check whether a number is prime"),
    ("reverses a string", "reverse a string"),
    ("sorts a list of numbers", "sort a list of numbers"),
    ("removes duplicates from a list", "remove duplicates from a list"),
    ("counts the words in a text", "count the words in a text"),
    ("merges two sorted arrays", "merge two sorted arrays"),
    ("computes the factorial of n", "compute the factorial of n"),
    ("finds the maximum value in an array", "find the maximum value in an array"),
    ("parses a CSV file", "parse a CSV file"),
    ("validates an email address", "validate an email address"),
    ("converts a date string to a timestamp", "convert a date string to a timestamp"),
    ("flattens a nested list", "flatten a nested list"),
    ("reads a JSON file", "read a JSON file"),
    ("implements binary search", "implement binary search"),
    ("computes the Fibonacci numbers", "compute the Fibonacci numbers"),
    ("checks if a string is a palindrome", "check if a string is a palindrome"),
    ("groups a list of records by key", "group a list of records by key"),
    ("retries an HTTP request with backoff", "retry an HTTP request with backoff"),
    ("generates a random password", "generate a random password"),
    ("calculates the average of a list", "calculate the average of a list"),
]
COUNTRIES = """France;Germany;Japan;Brazil;Canada;Australia;India;China;Mexico;Italy;Spain;Egypt;Kenya;Nigeria;
Argentina;Chile;Peru;Norway;Sweden;Finland;Poland;Greece;Turkey;Vietnam;Thailand;Indonesia;South Korea;
New Zealand;Ireland;Portugal;Morocco;Ethiopia;Colombia;Iceland;Austria;Switzerland;Belgium;the Netherlands""".replace("\n", "").split(";")
ATTRS = ["capital", "population", "official language", "currency", "largest city", "highest mountain",
         "national dish", "form of government", "main exports", "climate"]
UNITS = [("kilometers", "miles"), ("miles", "kilometers"), ("Celsius", "Fahrenheit"), ("Fahrenheit", "Celsius"),
         ("kilograms", "pounds"), ("pounds", "kilograms"), ("liters", "gallons"), ("gallons", "liters"),
         ("meters", "feet"), ("feet", "meters"), ("euros", "dollars"), ("dollars", "euros")]
PROJECTS = ["a small web shop", "a mobile game", "a data pipeline", "a personal blog", "a chat application",
            "an internal dashboard", "a machine learning model", "a REST API", "a CLI tool", "a home automation system",
            "a school project", "a startup pitch", "a research paper", "a marketing campaign", "a budget spreadsheet"]
CONTEXT = [
    "The team is small and we have two weeks left before the deadline.",
    "We already tried the obvious approach but it was too slow for our users.",
    "Most of our users are on mobile phones with slow connections.",
    "I am new to this area and I want to understand the trade-offs before I decide.",
    "The current version works, but the code is hard to maintain and test.",
    "Our manager wants a short written proposal by the end of the week.",
    "We run everything on a single small server with limited memory.",
    "Security matters a lot because we handle personal data.",
    "The budget is limited, so paid services are only an option if they are cheap.",
    "We have a lot of legacy code written years ago by people who have left.",
    "I have read a few blog posts but they contradict each other.",
    "The data comes from several sources and is often incomplete.",
]
QUESTIONS = [
    ["What should I focus on first?", "Where should I start?", "What would you prioritise first?"],
    ["What are the main risks I should watch out for?", "Which risks should I keep an eye on?", "What could go wrong here?"],
    ["Can you suggest a step-by-step plan?", "Please give me a step by step plan.", "What plan would you suggest, step by step?"],
    ["Which tools would you recommend?", "What tools do you recommend for this?", "Can you recommend some tools?"],
    ["How should I structure the work?", "How would you organise the work?", "What is a good way to structure the work?"],
]
DOC_SUBJECTS = ["the new office policy", "the quarterly sales report", "the product launch", "the city council meeting",
                "the research findings", "the software release", "the customer survey", "the annual budget",
                "the hiring plan", "the migration project", "the safety inspection", "the marketing results"]
DOC_SENTENCES = [
    "{S} was discussed in detail by the {who} on {day}.",
    "According to the {who}, {s} will change how the {dept} department works.",
    "The {who} noted that costs rose by {n} percent compared with last year.",
    "Several people raised concerns about the timeline for {s}.",
    "A follow-up meeting is planned for {day} to review the open questions.",
    "The {dept} department asked for {n} more days to prepare its part of the work.",
    "Early feedback on {s} has been mostly positive, with a few exceptions.",
    "The main risk identified is the dependency on an external supplier.",
    "If the plan is approved, the first phase will start in {month}.",
    "The {who} suggested publishing a summary for all employees.",
    "Training sessions will be offered to the {dept} team in {month}.",
    "The final decision depends on the results of the pilot with {n} participants.",
    "Some of the numbers in the draft were corrected after a review by the {who}.",
    "Everyone agreed that communication about {s} could have been clearer.",
]
WHO = ["board", "project lead", "finance team", "external auditor", "operations manager", "steering committee"]
DEPTS = ["sales", "engineering", "support", "finance", "legal", "logistics", "research"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
MONTHS = ["January", "March", "April", "June", "September", "November"]
DOC_TASKS = [
    ["Summarize the following text:", "Please summarize this text:", "Give me a short summary of the text below:"],
    ["List the action items in this text:", "What are the action items in the following text?", "Extract the action items from this text:"],
    ["Translate the following text into French:", "Please translate this text to French:", "Translate this into French:"],
    ["Rewrite the following text in a more formal tone:", "Make this text sound more formal:", "Please rewrite this text formally:"],
]
CODE_TASKS = [
    ["Review this code and point out bugs:", "Can you review this code and find the bugs?", "Find the bugs in this code:"],
    ["Explain what this code does:", "What does this code do?", "Can you explain this code?"],
    ["Add type hints and docstrings to this code:", "Please add docstrings and type hints to this code:", "Annotate this code with type hints and docstrings:"],
]
FUNC_NAMES = ["process_orders", "load_users", "compute_totals", "parse_events", "merge_reports", "send_alerts",
              "clean_records", "update_stock", "score_items", "build_index"]
VARS = ["items", "rows", "records", "events", "orders", "values", "entries", "users"]

PREAMBLES = ["", "", "Quick question: ", "I'm preparing for an exam tomorrow and I'm a bit confused. ",
             "My colleague and I were arguing about this at lunch today. ",
             "I have been reading about this for a while but I still do not get it. ",
             "This is for a presentation I am giving next week to my team at work, so please be clear. "]

MODELS = ["gpt-4o-mini"]
RANGES = {"short": (10, 50), "medium": (50, 150), "long": (150, 500)}


def _short(r: random.Random) -> tuple[tuple, list[str]]:
    # A preamble ("Quick question: ") does not change what is asked: it is part of the wording.
    key, phrasings = _short_q(r)
    return key, [pre + p for pre in dict.fromkeys(PREAMBLES) for p in phrasings]


def _short_q(r: random.Random) -> tuple[tuple, list[str]]:
    kind = r.randrange(5)
    if kind == 0:
        t = r.choice(TOPICS)
        q = r.choice(QUALIFIERS)
        return ("explain", t, q), [f"Explain {t}{q}.", f"Can you explain {t}{q}?", f"Help me understand {t}{q}.",
                                   f"Please explain {t}{q}.", f"Describe {t}{q}."]
    if kind == 1:
        lang = r.choice(LANGS)
        a, b = r.choice(TASKS)
        return ("code", lang, a), [f"Write a {lang} function that {a}.", f"Write a function in {lang} that {a}.",
                                   f"Please write a {lang} function to {b}.", f"Can you write a {lang} function that {a}?"]
    if kind == 2:
        c = r.choice(COUNTRIES)
        at = r.choice(ATTRS)
        return ("fact", c, at), [f"What is the {at} of {c}?", f"What's the {at} of {c}?",
                                 f"Tell me the {at} of {c}.", f"Can you tell me the {at} of {c}?"]
    if kind == 3:
        n = r.choice([r.randrange(1, 20), r.randrange(1, 1000), 5 * r.randrange(1, 60), r.randrange(1000, 100_000)])
        a, b = r.choice(UNITS)
        return ("convert", n, a, b), [f"Convert {n} {a} to {b}.", f"Please convert {n} {a} to {b}.",
                                      f"Can you convert {n} {a} into {b}?", f"Convert {n} {a} into {b}, please."]
    t = r.choice(TOPICS)
    k = r.choice([3, 5, 10])
    return ("facts", t, k), [f"Give me {k} interesting facts about {t}.", f"Tell me {k} interesting facts about {t}.",
                             f"List {k} interesting facts about {t}.", f"Can you give me {k} interesting facts about {t}?"]


def _medium(r: random.Random) -> tuple[tuple, list[str]]:
    project = r.choice(PROJECTS)
    ctx = tuple(sorted(r.sample(range(len(CONTEXT)), r.randint(2, 4))))  # the same sentences in another order: same intent
    qi = r.randrange(len(QUESTIONS))
    topic = r.choice(TOPICS)
    body = " ".join(CONTEXT[i] for i in ctx)
    openers = [f"I am working on {project} and I need to use {topic}.", f"I'm building {project} that relies on {topic}.",
               f"For {project}, I have to deal with {topic}."]
    phrasings = []
    for o in openers:
        for q in QUESTIONS[qi]:
            phrasings.append(f"{o} {body} {q}")
    r.shuffle(phrasings)
    return ("medium", project, ctx, qi, topic), phrasings[:5]


def _document(r: random.Random, n_sent: int) -> str:
    s = r.choice(DOC_SUBJECTS)
    out = []
    for i in r.sample(range(len(DOC_SENTENCES)), min(n_sent, len(DOC_SENTENCES))):
        out.append(DOC_SENTENCES[i].format(S=s[0].upper() + s[1:], s=s, who=r.choice(WHO), dept=r.choice(DEPTS),
                                           day=r.choice(DAYS), month=r.choice(MONTHS), n=r.randrange(2, 60)))
    return " ".join(out)


def _code(r: random.Random, n_lines: int) -> str:
    name = r.choice(FUNC_NAMES)
    v = r.choice(VARS)
    lines = [f"def {name}({v}, limit={r.randrange(5, 500)}):", "    result = []", "    total = 0"]
    body = [
        f"    for item in {v}:",
        f"        if item.get('status') == '{r.choice(['open', 'closed', 'pending', 'failed'])}':",
        "            total += item['amount']",
        "            result.append(item)",
        f"        if len(result) > limit:",
        "            break",
        f"    {v}.sort(key=lambda x: x['{r.choice(['date', 'id', 'amount', 'name'])}'])",
        f"    print('processed', len({v}), 'rows')",
        f"    average = total / len(result) if result else {r.choice(['0', 'None', '-1'])}",
        "    return result, total, average",
    ]
    lines += body[: max(4, n_lines)]
    return "\n".join(lines)


def _long(r: random.Random) -> tuple[tuple, list[str]]:
    if r.random() < 0.6:
        doc = _document(r, r.randint(6, 14))
        if r.random() < 0.5:
            doc += " " + _document(r, r.randint(4, 10))
        ti = r.randrange(len(DOC_TASKS))
        return ("doc", ti, doc), [f"{p}\n\n{doc}" for p in DOC_TASKS[ti]]
    code = _code(r, r.randint(6, 10))
    ti = r.randrange(len(CODE_TASKS))
    extra = " ".join(r.sample(CONTEXT, r.randint(3, 6)))
    return ("code-review", ti, code, extra), [f"{p}\n\n```python\n{code}\n```\n\n{extra}" for p in CODE_TASKS[ti]]


def _tokens(text: str) -> int:
    """A tokenizer-free estimate (about 1.3 tokens per word, code counts more)."""
    return int(len(text.split()) * 1.3 + text.count("\n") + text.count("(") + text.count("'") / 2)


def _new_intent(r: random.Random, bucket: str, seen: set) -> tuple[tuple, list[str]]:
    make = _short if bucket == "short" else _medium if bucket == "medium" else _long
    lo, hi = RANGES[bucket]
    for _ in range(200):
        key, phrasings = make(r)
        if key in seen:
            continue
        phrasings = [p for p in phrasings if lo <= _tokens(p) <= hi]
        if phrasings:
            seen.add(key)
            return key, phrasings
    raise RuntimeError(f"could not make a new {bucket} prompt")


def generate(n: int, seed: int = 7, p_new: float = 0.5, p_same_words: float = 0.5, zipf_s: float = 1.1) -> list[dict]:
    """``n`` requests in the spec's mix; ``p_new`` of them start a new intent, the rest revisit one (Zipf)."""
    r = random.Random(seed)
    seen: set[tuple] = set()
    pools: dict[str, tuple[list, list[float]]] = {b: ([], []) for b in RANGES}
    out = []
    for i in range(n):
        bucket = r.choices(("short", "medium", "long"), (0.3, 0.5, 0.2))[0]
        intents, weights = pools[bucket]
        if not intents or r.random() < p_new:
            _, phrasings = _new_intent(r, bucket, seen)
            intents.append((len(out), phrasings, []))
            weights.append((weights[-1] if weights else 0.0) + 1.0 / (len(intents) ** zipf_s))
            idx = len(intents) - 1
        else:
            # Zipf over the bucket's intents: rank 1 (the oldest) is the most popular.
            idx = min(bisect.bisect_left(weights, r.random() * weights[-1]), len(intents) - 1)
        intent_id, phrasings, used = intents[idx]
        unused = [k for k in range(len(phrasings)) if k not in used]
        if used and (r.random() < p_same_words or not unused):
            ph = r.choice(used)
        else:
            ph = r.choice(unused)
            used.append(ph)
        text = phrasings[ph]
        out.append({"i": i, "intent": intent_id, "phrasing": ph, "bucket": bucket, "tokens": _tokens(text),
                    "model": MODELS[0], "messages": [{"role": "user", "content": text}]})
    return out


def unique_prompts(n: int, seed: int = 11) -> list[dict]:
    """``n`` prompts of the same mix, each a new intent (to fill an index)."""
    return generate(n, seed=seed, p_new=1.0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--p-new", type=float, default=0.5)
    ap.add_argument("--dump", help="write the prompts to this JSON file")
    ap.add_argument("--show", action="store_true", help="print the prompts")
    a = ap.parse_args(argv)
    prompts = generate(a.n, a.seed, a.p_new)
    if a.dump:
        with open(a.dump, "w") as f:
            json.dump(prompts, f)
    if a.show:
        for p in prompts:
            print(f"[{p['bucket']}, intent {p['intent']}, ~{p['tokens']} tokens] {p['messages'][0]['content']}\n")
    buckets = {b: sum(p["bucket"] == b for p in prompts) / len(prompts) for b in ("short", "medium", "long")}
    toks = {b: sorted(p["tokens"] for p in prompts if p["bucket"] == b) for b in buckets}
    seen_exact: set = set()
    seen_intent: set = set()
    exact = para = 0
    for p in prompts:
        k = (p["intent"], p["phrasing"])
        if k in seen_exact:
            exact += 1
        elif p["intent"] in seen_intent:
            para += 1
        seen_exact.add(k)
        seen_intent.add(p["intent"])
    print(f"{len(prompts)} prompts; mix " + ", ".join(f"{b} {v:.0%}" for b, v in buckets.items()), file=sys.stderr)
    for b, t in toks.items():
        if t:
            print(f"  {b}: tokens min {t[0]} median {t[len(t) // 2]} max {t[-1]}", file=sys.stderr)
    print(f"  exact repeats {exact / len(prompts):.1%}, paraphrases of a seen intent {para / len(prompts):.1%} "
          f"(the best possible hit rate is {(exact + para) / len(prompts):.1%})", file=sys.stderr)


if __name__ == "__main__":
    main()
