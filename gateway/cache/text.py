"""Lexical analysis of a prompt: the words that carry its intent.

Embedders, even good ones, score "Convert 100 Fahrenheit to Celsius" and
"Convert 100 Celsius to Fahrenheit" as near-identical, and cheap ones score
"sort a list" closer to "reverse a list" than to a real paraphrase. The
embedder judges meaning; before a semantic hit is served, :func:`veto` looks
for the specific contradictions it misses:

* numbers (``5`` and ``five`` are the same number), operators and comparisons;
* negations (``not``, ``without``, ``n't``, "like" / "dislike" ...);
* identifiers and code (``snake_case``, ``camelCase``, ``a.b``, backticks, quotes);
* languages (programming and natural) and data formats ("JS" is JavaScript);
* direction: two shared words that swap places across "to", "from", "into",
  "than" ... ("Celsius to Fahrenheit"; "A or B" and "B or A" stay equal);
* a swapped slot: one sentence with one or two content words replaced
  ("by value" / "by key", "cats" / "dogs", "high" / "low"), unless the
  words are the same word (synonym, inflection, a one-letter typo);
* long prompts (20+ content words) that differ in more than a few words: the
  embedders see only a head and a tail window.

Added or dropped context words and rewordings are not vetoed: they are the
embedder's to judge. Words that only frame a request ("explain", "tell me",
"briefly") are neutral.

Everything here is pure Python on short strings: a few tens of microseconds.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from difflib import SequenceMatcher
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
# never a swapped slot. Not "short", "quick", "mean": they are content as often
# ("short-lived" / "long-lived", "mean" / "median").
NEUTRAL = frozenset(
    """
    explain describe tell give show help know want need like way please briefly
    simply overview question answer meaning
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
    "to from into onto than before after over under in per".split()
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

# Other names of one language: "JS" and "JavaScript" ask the same.
LANGUAGE_ALIASES = {"js": "javascript", "ts": "typescript", "golang": "go", "cpp": "c++", "csharp": "c#",
                    "postgres": "postgresql", "yml": "yaml", "nodejs": "node", "node.js": "node", "sh": "bash"}

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
_OPS = re.compile(r"(?<=[\s\d(])(?:<=|>=|===|==|!==|!=|->|=>|\*\*|//|[-+*/%]=|[-+*/^<>=%])(?=[\s\d(])")
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
_ARROWS = re.compile(r"\b(\w++)\s++(?:(?:are|is)\s++)?(to|from|into|onto|than|before|after|over|under|in|per)\s++"
                     r"(?=(?:the\s+|a\s+|an\s+)?(\w+))")
# "X in Y", "X per Y": a flip only when the other prompt says "Y in X" ("read a file in Python" and
# "Python code to read a file" are one request).
_CONTAINMENT = frozenset({"in", "per"})


STEM_CHARS = 7


def _stem(word: str) -> str:
    """A light, deterministic stem: Harman's S-stemmer, -ing/-ed, then at most 7 letters.

    Only used to compare words ("databases"/"database", "exercising"/"exercise"),
    never shown; the vetoes also treat a word and its prefix as the same word.
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
    return word[:STEM_CHARS]


for _i, _group in enumerate(_SYNONYMS):
    for _w in _group.split():
        SYNONYM_OF.setdefault(_w, _i)
        SYNONYM_OF.setdefault(_stem(_w), _i)
NEUTRAL_STEMS = frozenset(_stem(w) for w in NEUTRAL)
_NUMBER_WORD_SET = frozenset(_NUMBER_WORDS)
SEQ_WORDS = 40  # prompts of more words keep no word sequence (a swapped slot is a short prompt's contrast)
LONG_PROMPT_WORDS = 10  # from this many content words (in both prompts) only a few may differ
SLOT_WORDS = 2  # the most content words a swapped slot holds on each side ("crocodile and alligator" / "frog and toad")


# The vetoes that only ask "equal or not", in the order they are reported.
LITERAL_RULES = ("numbers", "negation", "language", "operators", "identifiers")


class Analysis(NamedTuple):
    """What the vetoes need to know about one prompt: small, kept per cache entry.

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
    arrows: tuple[tuple[str, str, bool], ...]  # (word before, word after, "in"/"per") each direction word
    seq: tuple[str, ...]  # every word stemmed, in order (prompts of up to SEQ_WORDS words): the frame of a swap


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
    """A key that prompts with the same literals and the same content words share.

    The key is the scope, the literal signature (``sig``) and the set of
    content words mapped to their synonym group or first 4 letters: the
    rewordings that keep every content word ("How do I" / "How can I") find
    each other by an exact dict lookup, however many entries there are (an
    approximate search of hashed vectors at 100,000 entries missed about half
    of them); the vector index finds the rest.
    """
    canon = set()
    for w in a[1]:
        if w in NEUTRAL_STEMS:
            continue
        g = SYNONYM_OF.get(w)
        canon.add(f"#{g}" if g is not None else w[:4])
    return _digest64(f"{scope}\x1f{a[0]:x}\x1f" + " ".join(sorted(canon)))


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
    ops = tuple(sorted(_OPS.findall(text))) + ("()",) * text.count("(")  # grouping changes an expression
    low = text.lower()
    langs = set()
    if "c+" in low or "#" in low or ".net" in low or "node.js" in low or "objective-c" in low:
        langs.update(_SPECIAL_LANGS.findall(low))
        low = _SPECIAL_LANGS.sub(" ", low)
    words = _WORDS.findall(low)
    wset = set(words)
    langs.update(wset & LANGUAGES)
    langs = {LANGUAGE_ALIASES.get(x, x) for x in langs}
    numbers = [n.replace(",", "") for n in _NUMBERS.findall(low)]
    for w in wset & _NUMBER_WORD_SET:
        numbers.extend(_NUMBER_WORDS[w] for _ in range(words.count(w)))
    content = {_stem_cached(w) for w in wset - STOPWORDS - NEGATIONS - _NUMBER_WORD_SET - LANGUAGES}  # languages: in sig
    content.update(numbers)
    arrows: tuple[tuple[str, str, bool], ...] = ()
    if wset & DIRECTION_WORDS:
        arrows = tuple((_stem_cached(x), _stem_cached(y), d in _CONTAINMENT) for x, d, y in _ARROWS.findall(low)
                       if x not in STOPWORDS and y not in STOPWORDS)
    seq = tuple(_stem_cached(w) for w in words) if len(words) <= SEQ_WORDS else ()
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


def _direction_flip(a: tuple, b: tuple) -> bool:
    """"X to Y" in one prompt, Y before X in the other ("Celsius to Fahrenheit", "liters in a gallon").

    Only when both prompts use a direction word: "After a workout, what should I eat?" only
    moves a clause.
    """
    if not a[2] or not b[2] or not a[3] or not b[3]:
        return False
    qa, qb = a[3], b[3]
    for x, y, contained in a[2]:
        if x == y:
            continue
        if contained:
            if any(c and (x2, y2) == (y, x) for x2, y2, c in b[2]):
                return True
        elif x in qb and y in qb and (qa.index(x) < qa.index(y)) != (qb.index(x) < qb.index(y)):
            return True
    return False


def _same_frame(a: tuple, b: tuple, slot_words: int, slack: int) -> bool:
    """Whether the prompts are one sentence with a slot changed: besides the slot's own words at most
    ``slack`` words differ ("crocodile and an alligator" / "frog and a toad": two; "a poem" / "a short
    story": none). A rewording changes framing words too ("Why is exercise good for" / "How does
    exercise benefit"; "generate" / "turn sunlight into").
    """
    if not a[3] or not b[3]:
        return False
    changed = 0
    for op, i1, i2, j1, j2 in SequenceMatcher(None, a[3], b[3], autojunk=False).get_opcodes():
        if op != "equal":
            changed += (i2 - i1) + (j2 - j1)
    return changed <= slot_words + slack


def _typo(a: str, b: str) -> bool:
    """One edit apart (an insertion, deletion, substitution or swap of neighbours): a misspelling."""
    if abs(len(a) - len(b)) > 1 or min(len(a), len(b)) < 4 or not (a.isalpha() and b.isalpha()):
        return False
    short, long = (a, b) if len(a) < len(b) else (b, a)
    k = 0
    while k < len(short) and short[k] == long[k]:
        k += 1
    if len(a) == len(b) == STEM_CHARS and (a[k + 1:] == b[k:-1] or b[k + 1:] == a[k:-1]):
        return True  # both cut by the stemmer: a letter dropped or added before the cut
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    return short[k:] == long[k + 1:]


_NEGATING_PREFIXES = ("dis", "un", "non", "in", "im", "ir", "il")


def _negated(words: list[str], other: tuple[str, ...]) -> bool:
    """A word of one prompt that is a word of the other with a negating prefix ("like"/"dislike")."""
    for w in words:
        for p in _NEGATING_PREFIXES:
            if w.startswith(p) and len(w) - len(p) >= 4:
                rest = w[len(p):]
                if any(x.startswith(rest) or rest.startswith(x) for x in other if len(x) >= 4):
                    return True
    return False


def _unpaired(a: tuple, b: tuple) -> tuple[list[str], list[str], set[str]]:
    """The content words of each prompt that pair with none of the other's (same stem, synonym,
    inflection, a one-letter typo; framing words left out), and the shared ones."""
    ca, cb = set(a[1]), set(b[1])
    shared = ca & cb
    only_a = [w for w in ca - cb if w not in NEUTRAL_STEMS]
    only_b = [w for w in cb - ca if w not in NEUTRAL_STEMS]
    if only_a and only_b:
        rest_b = list(only_b)
        keep_a = []
        for x in only_a:
            for y in rest_b:
                if _same(x, y) or _typo(x, y):
                    rest_b.remove(y)
                    shared = shared | {x}
                    break
            else:
                keep_a.append(x)
        only_a, only_b = keep_a, rest_b
    return only_a, only_b, shared


def added_words(a: tuple, b: tuple) -> int:
    """Content words one prompt adds when the other adds none: a narrower question, or context."""
    only_a, only_b, _ = _unpaired(a, b)
    return 0 if only_a and only_b else len(only_a) + len(only_b)


def veto(a: tuple, b: tuple) -> str | None:
    """The contradiction between two prompts that an embedder misses, if any (None: let it judge).

    Not a demand that every word pair off: added or dropped context words,
    synonyms and rewordings are the embedder's to judge. Vetoed: different
    literals (numbers, negation, languages, operators, identifiers), a
    direction flip, and one slot swapped in an otherwise equal frame (a sibling
    or an antonym: "cats"/"dogs", "high"/"low", "install"/"uninstall") unless
    the two words are the same word (synonym, inflection).
    """
    if a[0] != b[0]:
        # The lowest differing 64-bit field is the first rule that differs (a
        # hash collision, 2**-64 a rule, would let a pair through to the rest).
        x = a[0] ^ b[0]
        return LITERAL_RULES[((x & -x).bit_length() - 1) // 64]
    only_a, only_b, shared = _unpaired(a, b)
    if _negated(only_a, b[1]) or _negated(only_b, a[1]):
        return "negation"
    if shared and 1 <= len(only_a) <= SLOT_WORDS and 1 <= len(only_b) <= SLOT_WORDS \
            and _same_frame(a, b, len(only_a) + len(only_b), 2 if len(only_a) == len(only_b) else 0):
        return "swap"
    if _direction_flip(a, b) or _direction_flip(b, a):
        return "direction"
    n = min(len(a[1]), len(b[1]))
    if n >= LONG_PROMPT_WORDS and len(only_a) + len(only_b) > max(4, n // 20):
        # Longer prompts (documents, code, a context paragraph around one question): the embedders see
        # a head and a tail window, where shared boilerplate dominates, so the rest must be
        # near-identical word for word.
        return "content"
    return None
