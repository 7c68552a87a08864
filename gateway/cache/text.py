"""Lexical analysis of a prompt: the words that carry its intent.

Embedders, even good ones, score "Convert 100 Fahrenheit to Celsius" and
"Convert 100 Celsius to Fahrenheit" as near-identical, and cheap ones score
"sort a list" closer to "reverse a list" than to a real paraphrase. So before
a semantic hit is served, :func:`guard` compares the two prompts on the words
that decide what the answer is:

* numbers (``5`` and ``five`` are the same number), operators and comparisons;
* negations (``not``, ``without``, ``n't`` ...);
* identifiers and code (``snake_case``, ``camelCase``, ``a.b``, backticks, quotes);
* languages (programming and natural) and data formats;
* direction: two shared words that swap places across "to", "from", "into",
  "than" ... ("Celsius to Fahrenheit"; "A or B" and "B or A" stay equal);
* a swapped slot: both prompts use the same frame and differ in one or two
  content words ("by value" / "by key", "reverse" / "sort", "cats" / "dogs"),
  unless the words are known synonyms;
* a narrower question: one prompt adds a content word to the other
  ("neural networks" / "neural network pruning", "... with an example").

Words that only frame a request ("explain", "tell me", "briefly") are
neutral; synonyms and inflections ("paint"/"painter") count as the same word.

Everything here is pure Python on short strings: a few tens of microseconds.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from hashlib import blake2b
from typing import NamedTuple

# Words that carry no topic: dropped from the content sets (they still count
# in the hashed embedding, with a small weight).
STOPWORDS = frozenset(
    """
    a an the this that these those there here of in on at by for with as to from into onto
    and or but so if then than be is am are was were been being do does did done doing have has
    had having i me my mine we us our you your yours he him his she her it its they them their
    what which who whom whose when where why how whats hows whos wheres
    can could would should shall will may might must
    please pls kindly just simply really very quite some any all each every much many
    about also too again ever still yet only even well okay ok hey hi hello thanks thank
    something anything thing things someone anyone
    exactly actually basically possible possibly
    """.split()
)

# Synonym groups for the "swapped slot" rule: a swap inside one group is a
# paraphrase, not a different request. Keep to clear, common equivalences.
_SYNONYMS = [
    "explain describe clarify elaborate",
    "write create generate make produce compose draft build implement code",
    "show display print output",
    "list enumerate name give",
    "find get obtain retrieve determine",
    "fix repair correct debug resolve",
    "remove delete drop erase",
    "change modify alter edit update",
    "begin start commence",
    "end finish conclude stop",
    "big large huge",
    "small little tiny",
    "fast quick rapid speedy",
    "author writer wrote",
    "painter painted artist",
    "calculate compute",
    "ocean sea",
    "dict dictionary",
    "int integer",
    "str string",
    "func function method",
    "arr array",
    "app application",
    "repo repository",
    "dir directory folder",
    "pic picture image photo",
    "car automobile",
    "kid child",
    "buy purchase",
    "use utilize employ",
    "improve better enhance",
    "people person population",
    "kill terminate",
    "overview summary summarize summarise",
    "recipe recipes",
    "ideas suggestions",
    "check see verify",
    "exit quit leave",
    "prepare",
    "regular regularly",
    "exercise exercising",
    "tip tips advice",
    "fact facts",
    "interesting fun",
    "sleep sleeping",
    "vaccine vaccines",
    "travel",
]
SYNONYM_OF: dict[str, int] = {}

# Words that only frame the request ("explain", "tell me", "in simple terms"):
# adding or dropping one does not change what is asked.
NEUTRAL = frozenset(
    """
    explain describe tell give show help know want need like way please briefly brief short
    simply detail overview quick quickly question answer mean meaning
    """.split()
)

NEGATIONS = frozenset(
    "not no never none nothing nobody nowhere neither nor without cannot cant dont doesnt didnt isnt "
    "arent wasnt werent wont wouldnt shouldnt couldnt havent hasnt hadnt except excluding exclude "
    "lacking free".split()
)

# Words whose swap makes a different request even though embedders score the
# pair as near-identical: direction, extremes, comparisons.
DIRECTION_WORDS = frozenset(
    "to from into onto than before after over under".split()
)

LANGUAGES = frozenset(
    """
    python javascript js typescript ts java kotlin swift go golang rust ruby php perl scala haskell
    c c++ cpp c# csharp f# objective-c dart elixir erlang clojure lua julia r matlab fortran cobol
    sql mysql postgresql postgres sqlite mongodb redis bash sh zsh powershell shell html css sass
    react vue angular svelte node nodejs node.js django flask rails spring dotnet .net
    json yaml yml xml csv toml markdown latex pdf protobuf graphql regex
    english french spanish german italian portuguese russian chinese mandarin cantonese japanese
    korean arabic hindi bengali dutch swedish norwegian danish finnish polish turkish greek hebrew
    latin ukrainian czech vietnamese thai indonesian persian urdu
    """.split()
)

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "first": "#1", "second": "#2", "third": "#3", "fourth": "#4", "fifth": "#5", "last": "#last",
    "half": "0.5", "double": "x2", "twice": "x2", "triple": "x3",
}

_WORDS = re.compile(r"[a-z0-9]+")
_NUMBERS = re.compile(r"\d+(?:[.,]\d+)*%?")
_OPS = re.compile(r"(?<=[\s\d(])(?:<=|>=|==|!=|->|=>|\*\*|[-+*/^<>=])(?=[\s\d(])")
# Identifiers and code: dotted names, snake_case, camelCase, calls, `code`, 'quoted', "quoted" (++: see _ARROWS).
_IDENTS = re.compile(
    r"`[^`]{1,80}`|'[^'\s][^']{0,60}'|\"[^\"]{1,60}\""
    r"|\b\w++(?:(?:[._]\w++)+|\(\))|\b[a-z]++[A-Z]\w*+|\b[A-Z]{2,}+[a-z]\w*+"
)
# Language names the word regex would cut up (c++ -> c).
_SPECIAL_LANGS = re.compile(r"(?<![\w.])(c\+\+|c#|f#|\.net|node\.js|objective-c)(?![\w])")
_APOS = re.compile(r"(\w)['’](\w)")
# "<word> to|from|into ... [the|a|an] <word>": the pairs a direction word orders.
# Possessive (++): a word or a space run is never worth giving back, and these two patterns are most of
# an analysis' time (same matches on 25,000 prompts of the spec mix, ~20 % less time).
_ARROWS = re.compile(r"\b(\w++)\s++(?:to|from|into|onto|than|before|after|over|under)\s++(?=(?:the\s+|a\s+|an\s+)?(\w+))")


def _stem(word: str) -> str:
    """A light, deterministic stem: Harman's S-stemmer, -ing/-ed, then at most 7 letters.

    Only used to compare words ("databases"/"database", "exercising"/"exercise"),
    never shown; the guard also treats a word and its prefix as the same word.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        word = word[:-3] + "y"
    elif word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        word = word[:-1]
    elif word.endswith("s") and not word.endswith(("us", "ss")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            word = word[: -len(suffix)]
            if word[-1] == word[-2] and word[-1] not in "ls":
                word = word[:-1]  # running -> run, stopped -> stop
            break
    return word[:7]


for _i, _group in enumerate(_SYNONYMS):
    for _w in _group.split():
        SYNONYM_OF.setdefault(_w, _i)
        SYNONYM_OF.setdefault(_stem(_w), _i)
NEUTRAL_STEMS = frozenset(_stem(w) for w in NEUTRAL)
_NUMBER_WORD_SET = frozenset(_NUMBER_WORDS)
NARROWER_WORDS = 1  # content words one prompt may add to the other before it is a narrower question
LONG_PROMPT_WORDS = 20  # from this many content words (in both prompts) a few may differ


# The guard's equality-only rules, in the order it reports them.
LITERAL_RULES = ("numbers", "negation", "language", "operators", "identifiers")


class Analysis(NamedTuple):
    """What the guard needs to know about one prompt: small, kept per cache entry.

    Every cache entry holds one (computed when it is stored, so a lookup never
    analyses its candidates), hence the compact form: the rules that only ask
    "equal or not" (numbers, negation, languages, operators, identifiers) are
    one int made of a 64-bit hash per rule, the content words are a tuple of
    interned stems. This class names the fields; :func:`analyse` returns a
    plain tuple in this order: the garbage collector stops tracking a tuple of
    ints and strings, so 100,000 entries do not add 100,000 objects to every
    full collection (measured: a full collection at 100,000 entries took
    130 ms with an object per analysis, 60 ms without).
    """

    sig: int  # LITERAL_RULES[i] -> bits 64*i .. 64*i+63: the hash of that rule's values
    content: tuple[str, ...]  # stemmed content words and numbers, sorted (a tuple: 8 bytes a word)
    arrows: tuple[tuple[str, str], ...]  # (word before, word after) each direction word ("fahrenh", "celsius")
    seq: tuple[str, ...]  # content words in order of first use (only when there are direction words)


def _digest64(text: str) -> int:
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little")


def _signature(*values) -> int:
    # blake2b, not hash(): string hashes differ between processes, and the signature is part of the
    # content key that workers share through Redis. Values are sorted tuples, so their repr is stable.
    sig = 0
    for i, v in enumerate(values):
        sig |= _digest64(repr(v)) << (64 * i)
    return sig


def content_key(scope: str, a: tuple) -> int:
    """A key that every prompt which can pass :func:`guard`'s short-prompt rule with ``a`` shares.

    Below ``LONG_PROMPT_WORDS`` content words the guard lets two prompts
    through only when they have the same literals (``sig``) and every
    content word that is not a framing word pairs with one in the other
    prompt: the same stem, a synonym, or one a prefix of the other (4
    letters at least). So the key is the scope, the signature and the set of
    content words mapped to their synonym group or first 4 letters: equal
    for every such pair, and an exact dict lookup finds them all, however
    many entries there are (an approximate vector search at 100,000 entries
    missed about half of them).
    """
    canon = set()
    for w in a[1]:
        if w in NEUTRAL_STEMS:
            continue
        g = SYNONYM_OF.get(w)
        canon.add(f"#{g}" if g is not None else w[:4])
    return _digest64(f"{scope}\x1f{a[0]:x}\x1f" + " ".join(sorted(canon)))


def is_long(a: tuple) -> bool:
    """Whether the guard's long-prompt rule (a few differing words allowed) can apply: then the vector index finds candidates."""
    return len(a[1]) >= LONG_PROMPT_WORDS


_STEMS: dict[str, str] = {}


def _stem_cached(w: str) -> str:
    st = _STEMS.get(w)
    if st is None:
        st = sys.intern(_stem(w))
        if len(_STEMS) < 200_000:
            _STEMS[sys.intern(w)] = st
    return st


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    return text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')


def analyse(text: str) -> tuple:
    """The prompt's :class:`Analysis`, as a plain tuple (see there why)."""
    if not text.isascii():
        text = normalise(text)
    if "'" in text:
        text = _APOS.sub(r"\1\2", text)  # "don't" -> "dont", "what's" -> "whats"
    idents = set()
    for m in _IDENTS.findall(text):
        if m[0] in "`'\"":
            m = m[1:-1]
        m = m.strip().lower()
        if m not in LANGUAGES:
            idents.add(m)
    ops = tuple(sorted(_OPS.findall(text)))
    low = text.lower()
    langs = set()
    if "c+" in low or "#" in low or ".net" in low or "node.js" in low or "objective-c" in low:
        langs.update(_SPECIAL_LANGS.findall(low))
        low = _SPECIAL_LANGS.sub(" ", low)
    words = _WORDS.findall(low)
    wset = set(words)
    langs.update(wset & LANGUAGES)
    if "golang" in langs:
        langs.discard("golang")
        langs.add("go")
    numbers = [n.replace(",", "") for n in _NUMBERS.findall(low)]
    for w in wset & _NUMBER_WORD_SET:
        numbers.extend(_NUMBER_WORDS[w] for _ in range(words.count(w)))
    content = {_stem_cached(w) for w in wset - STOPWORDS - NEGATIONS - _NUMBER_WORD_SET}
    content.update(numbers)
    arrows: tuple[tuple[str, str], ...] = ()
    seq: tuple[str, ...] = ()
    if wset & DIRECTION_WORDS:
        arrows = tuple((_stem_cached(x), _stem_cached(y)) for x, y in _ARROWS.findall(low)
                       if x not in STOPWORDS and y not in STOPWORDS)
        seq = tuple(dict.fromkeys([_stem_cached(w) for w in words if w not in STOPWORDS]))
    return (
        _signature(tuple(sorted(numbers)), bool(wset & NEGATIONS), tuple(sorted(langs)), ops, tuple(sorted(idents))),
        tuple(sorted(content)),
        arrows,
        seq,
    )


def _same(a: str, b: str) -> bool:
    """Synonyms, or one word a prefix of the other ("paint"/"painter", "safe"/"safely")."""
    if a == b:
        return True
    ga = SYNONYM_OF.get(a)
    if ga is not None and ga == SYNONYM_OF.get(b):
        return True
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 4 and long.startswith(short) and len(long) - len(short) <= 3


def _direction_flip(a: tuple, b: tuple, shared: set[str]) -> bool:
    """"X to Y" in one prompt, Y before X in the other ("Celsius to Fahrenheit")."""
    for (_, _, arrows, p_seq), (_, _, _, q_seq) in ((a, b), (b, a)):
        for x, y in arrows:
            if x in shared and y in shared and x != y:
                if x not in q_seq or y not in q_seq:
                    continue  # q has no direction word: the other rules decide
                if (p_seq.index(x) < p_seq.index(y)) != (q_seq.index(x) < q_seq.index(y)):
                    return True
    return False


def guard(a: tuple, b: tuple) -> tuple[str | None, int]:
    """Whether two prompts may share an answer.

    Returns ``(reason, added)``: ``reason`` is None when they may, else why not;
    ``added`` is how many content words one prompt adds to the other (a
    narrower question: the caller asks the verifier for a higher similarity).
    """
    if a[0] != b[0]:
        # The lowest differing 64-bit field is the first rule that differs (a
        # hash collision, 2**-64 a rule, would let a pair through to the rest).
        x = a[0] ^ b[0]
        return LITERAL_RULES[((x & -x).bit_length() - 1) // 64], 0
    ca, cb = set(a[1]), set(b[1])
    shared = set(ca & cb)
    only_a = [w for w in ca - cb if w not in NEUTRAL_STEMS]
    only_b = [w for w in cb - ca if w not in NEUTRAL_STEMS]
    # Pair off words that are the same word (synonym, prefix/inflection).
    if only_a and only_b:
        rest_b = list(only_b)
        keep_a = []
        for x in only_a:
            for y in rest_b:
                if _same(x, y):
                    rest_b.remove(y)
                    shared.add(x)
                    break
            else:
                keep_a.append(x)
        only_a, only_b = keep_a, rest_b
    if only_a and only_b:
        if len(only_a) <= 2 and len(only_b) <= 2 and shared:
            # The same frame with a swapped slot: "by value" / "by key".
            return "swap", 0
    if _direction_flip(a, b, shared):
        return "direction", 0
    added = len(only_a) + len(only_b)
    n = min(len(ca), len(cb))
    if n >= LONG_PROMPT_WORDS:
        # Long prompts (documents, code): the embedders see only a head and a
        # tail window, so the rest must be near-identical word for word.
        if added > max(4, n // 20):
            return "content", added
    elif (not only_a or not only_b) and added >= NARROWER_WORDS:
        # One prompt adds a topic or requirement word to the other: a narrower
        # question ("neural networks" / "neural network pruning", "explain X" /
        # "explain X with an example"). Embedders score these 0.95+ when the
        # shared words dominate, so no threshold can tell them apart.
        return "narrower", added
    return None, added
