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
from functools import lru_cache
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
    "foot feet",
    "tooth teeth",
    "mouse mice",
    "child children",
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
    "zero": "0", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "first": "1", "second": "2", "third": "3", "fourth": "4", "fifth": "5",
    "half": "0.5", "double": "x2", "twice": "x2", "triple": "x3",
}

_WORDS = re.compile(r"[a-z0-9]+")
# "one" is left out of _NUMBER_WORDS: far more often a pronoun ("one of their keys") than a count; so is
# "last": a position ("the last commit" = "the most recent"; "last longer" a verb), opposed to "first" by
# the veto's opposites, not a number.
_ROMAN_VALUES = {"II": "2", "III": "3", "IV": "4", "VI": "6", "VII": "7", "VIII": "8", "IX": "9", "XI": "11", "XII": "12"}
_ROMAN = re.compile(r"\b(" + "|".join(sorted(_ROMAN_VALUES, key=len, reverse=True)) + r")\b")
# One name per language: "JS" and "JavaScript" ask for the same code.
_LANG_ALIASES = {"golang": "go", "js": "javascript", "ts": "typescript", "cpp": "c++", "csharp": "c#",
                 "node.js": "nodejs", "node": "nodejs", "postgres": "postgresql", "yml": "yaml", "sh": "bash",
                 "shell": "bash"}
# Language names that are also everyday words ("go about", "rust off my tools", "swift reply"): a language
# only when written as a name (capitalised after the first word), after "in"/"using"/"with", or in a prompt
# about code.
_AMBIGUOUS_LANGS = frozenset("go rust swift ruby dart julia r".split())
_LANG_CUES = frozenset("in using with into".split())
_CODE_WORDS = frozenset("""
    code coding coder program programs programming function functions script scripts loop loops compile compiler
    library libraries package packages array arrays string strings variable variables class classes struct syntax
    snippet error errors exception exceptions module modules type types developer app apps api
    """.split())
_NUMBERS = re.compile(r"\d+(?:[.,]\d+)*%?")
_OPS = re.compile(r"(?<=[\s\d(])(?:===|!==|<=|>=|==|!=|->|=>|\*\*|//|[-+*/^<>=])(?=[\s\d(]|[.,;:?!)]?$)"
                  r"|(?<=\w)(?:\+\+|--|[-+*/%]=)(?=[\s\d;)]|$)|(?<=\s)(?:[-+*/%]=)(?=\s)")
# Brackets only count where there is arithmetic: "6 + 6 / 2" and "(6 + 6) / 2" differ.
_PARENS = re.compile(r"[()]")
# Identifiers and code: dotted names, snake_case, camelCase, calls, `code`, 'quoted', "quoted" (++: see _ARROWS).
_IDENTS = re.compile(
    r"`[^`]{1,80}`|'[^'\s][^']{0,60}'|\"[^\"]{1,60}\""
    r"|\b\w++(?:(?:[._]\w++)+|\(\))|\b[a-z]++[A-Z]\w*+|\b[A-Z]{2,}+[a-z]\w*+"
)
# Necessary for an _OPS match (each of its alternatives has one of these): most prompts have none, and
# this search costs a tenth of _OPS's.
_OP_CHARS = re.compile(r"[-+*/^<>=%!]")
# Necessary for an _IDENTS match: a quote, a call's "(", a "." or "_" before a word character; or an
# upper-case letter after a letter (camelCase, "HTTPs"), which needs one after the first character.
_IDENT_MARKS = re.compile(r"[`'\"(]|[._]\w")
_IDENT_CASE = re.compile(r"[a-zA-Z][A-Z]")


def _may_have_idents(text: str) -> bool:
    if _IDENT_MARKS.search(text) is not None:
        return True
    rest = text[1:]
    return rest != rest.lower() and _IDENT_CASE.search(text) is not None


# Language names the word regex would cut up (c++ -> c).
_SPECIAL_LANGS = re.compile(r"(?<![\w.])(c\+\+|c#|f#|\.net|node\.js|objective-c)(?![\w])")
_SPECIAL_LANGS_ANY_CASE = re.compile(_SPECIAL_LANGS.pattern, re.IGNORECASE)
# A dash between two words is punctuation ("Quick question - how do I ..."), not a minus.
_DASH = re.compile(r"(?<=[A-Za-z][A-Za-z]) -+ (?=[A-Za-z][A-Za-z])")
# For the veto: ASCII symbols (quotes, apostrophes, backticks and underscores aside); a run is one token.
_SYM_RUN = re.compile(r"[!#$%&()*+,\-./:;<=>?@\[\\\]^{|}~]+")
_SENTENCE_MARKS = ".,;:?!"
# Command-line flags ("-a", "--force") and snake_case / dunder names ("my_function", "__init__").
_FLAGS_SNAKE = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*|\b_*[A-Za-z0-9]+(?:_+[A-Za-z0-9]+)+_*")
# A request turned around ("make my site show up" / "stop my site from showing up", "what to include" /
# "what to avoid"): 2; a verb of ending that a rewording keeps in some form ("stop smoking" / "quit
# smoking" / "get rid of hiccups"): 1; neither: 0. Only 2 against 0 is a contrast.
_TURNED = frozenset("prevent prevents preventing avoid avoids avoiding".split())
_TURNED_FROM = re.compile(r"\b(?:stop|keep|prevent)(?:s|ping|ing)? \w+(?: \w+)? from\b")
_ENDING = frozenset("stop stops stopping quit quits quitting rid cease ceases end ends".split())
# The word before a number that says what is done with it: "7 percent of 350" / "7 percent more than 350".
_NUM_RELATIONS = frozenset("of than by per times plus minus divided multiplied".split())
# A unit's generic word: "100 degrees Fahrenheit" is "100 Fahrenheit".
_GENERIC_UNITS = frozenset("degree degrees".split())
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
# Under this many content words a prompt is judged by the contrast veto and the verifier (everyday
# questions and requests: the labelled pairs have 1-8). Longer ones are mostly a question inside
# context (the spec mix's 12-100): rewordings there are rare, templates with another topic common,
# and the veto cannot tell "another topic and another context sentence" from a rewording.
VETO_WORDS = 12


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
    # For the contrast veto, short prompts only (under VETO_WORDS content words; empty otherwise):
    toks: tuple[str, ...]  # content and relation words in order ("~to")
    names: tuple[str, ...]  # capitalised words after the first (stems)
    kind: int  # K_* bits: who / when / where / why, an instruction to make something, "what is", "how do I"
    parts: tuple[str, ...]  # the particles on/off, up/down, in/out, and "+q"/"-q" per quantity word, with repeats
    last: int  # toks[last:] is the last sentence
    # Literals only the veto compares (not in ``sig``, so content keys stay as they were):
    lits: tuple  # (symbol tokens, flags and snake_case names, a verb that turns the request around)
    nums: tuple[tuple[str, str, str], ...]  # (number, word before, word after): what is counted, how it is used


def _digest64(text: str) -> int:
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little")


# Most of a signature's values are the same few ("()", "False"): their digests are remembered (a
# signature cost 5 blake2b calls, ~17 µs, a third of a lookup's analysis). Bounded: unique numbers
# would otherwise fill it.
_VALUE_DIGESTS: dict[str, int] = {}


def _signature(*values) -> int:
    # blake2b, not hash(): string hashes differ between processes, and the signature is part of the
    # content key that workers share through Redis. Values are sorted tuples, so their repr is stable.
    sig = 0
    memo = _VALUE_DIGESTS
    for i, v in enumerate(values):
        r = repr(v)
        d = memo.get(r)
        if d is None:
            d = _digest64(r)
            if len(memo) < 4096:
                memo[r] = d
        sig |= d << (64 * i)
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


def is_short(a: tuple) -> bool:
    """Whether the contrast veto judges the prompt (with the static vectors to find it), not the guard."""
    return len(a[1]) < VETO_WORDS


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
    key, ctx = _key_part(text)
    return key + _veto_part(len(key[1]), *ctx)


def key_analysis(text: str) -> tuple:
    """The first two fields of the prompt's :class:`Analysis` (``sig``, ``content``): all a lookup needs
    before it has a candidate with the same literals (the content key, which index to search), and what
    an entry keeps until it is one. About half of :func:`analyse`'s time; :func:`completed` adds the rest."""
    return _key_part(text)[0]


def completed(a: tuple, text: str) -> tuple:
    """``a`` (of ``text``) as a whole :class:`Analysis`: itself when it already is one."""
    return a if len(a) > 2 else analyse(text)


def literals_differ(a: tuple, b: tuple) -> str | None:
    """The first literal rule two prompts differ in (both :func:`guard` and :func:`veto` reject on it
    first), or None; needs only :func:`key_analysis`."""
    if a[0] == b[0]:
        return None
    # The lowest differing 64-bit field is the first rule that differs (a hash collision, 2**-64 a
    # rule, would let a pair through to the rest).
    x = a[0] ^ b[0]
    return LITERAL_RULES[((x & -x).bit_length() - 1) // 64]


def _key_part(text: str) -> tuple[tuple, tuple]:
    """(sig, content), and what the veto's part goes on from: (text, optext, low, words, wset)."""
    if not text.isascii():
        text = normalise(text)
    if "'" in text:
        text = _APOS.sub(r"\1\2", text)  # "don't" -> "dont", "what's" -> "whats"
    idents = set()
    for m in _IDENTS.findall(text) if _may_have_idents(text) else ():
        if m[0] in "`'\"":
            m = m[1:-1]
        m = m.strip().lower()
        if m not in LANGUAGES:
            idents.add(m)
    optext = text
    if "+" in text or "#" in text:
        optext = _SPECIAL_LANGS_ANY_CASE.sub("lang", optext)  # "C++ code" has no "++" operator
    if " -" in optext:
        optext = _DASH.sub(" , ", optext)
    ops = _OPS.findall(optext) if _OP_CHARS.search(optext) else []
    if ops and "(" in text:
        ops += _PARENS.findall(text)
    ops = tuple(sorted(ops))
    low = text.lower()
    if "regular expression" in low:
        low = low.replace("regular expressions", "regex").replace("regular expression", "regex")
    langs = set()
    if "c+" in low or "#" in low or ".net" in low or "node.js" in low or "objective-c" in low:
        langs.update(_SPECIAL_LANGS.findall(low))
        low = _SPECIAL_LANGS.sub(" ", low)
    words = _WORDS.findall(low)
    wset = set(words)
    langs.update(wset & LANGUAGES)
    for w in langs & _AMBIGUOUS_LANGS:
        if not _language_use(w, text, words, wset):
            langs.discard(w)
    for alias in langs & _LANG_ALIASES.keys():
        langs.discard(alias)
        langs.add(_LANG_ALIASES[alias])
    numbers = [n.replace(",", "") for n in _NUMBERS.findall(low)]
    for w in wset & _NUMBER_WORD_SET:
        numbers.extend(_NUMBER_WORDS[w] for _ in range(words.count(w)))
    for r in _ROMAN.findall(text):  # "World War II": uppercase numerals of two letters or more
        numbers.append(_ROMAN_VALUES[r])
    content = {_stem_cached(w) for w in wset - STOPWORDS - NEGATIONS - _NUMBER_WORD_SET}
    content.update(numbers)
    sig = _signature(tuple(sorted(numbers)), bool(wset & NEGATIONS), tuple(sorted(langs)), ops, tuple(sorted(idents)))
    return (sig, tuple(sorted(content))), (text, optext, low, words, wset)


def _veto_part(n_content: int, text: str, optext: str, low: str, words: list[str], wset: set[str]) -> tuple:
    """The Analysis fields after ``content``."""
    arrows: tuple[tuple[str, str], ...] = ()
    seq: tuple[str, ...] = ()
    if wset & DIRECTION_WORDS:
        arrows = tuple((_stem_cached(x), _stem_cached(y)) for x, y in _ARROWS.findall(low)
                       if x not in STOPWORDS and y not in STOPWORDS)
        seq = tuple(dict.fromkeys([_stem_cached(w) for w in words if w not in STOPWORDS]))
    toks: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    lits: tuple = ()
    nums: tuple = ()
    kind = last = 0
    if n_content < VETO_WORDS:
        # For the contrast veto (short prompts): the content words in order (synonyms as their group,
        # relation words as "~to" ...), the capitalised names, the kind of request.
        toks = tuple(_tok(w) for w in words if w not in _SKIP or w in RELATION_WORDS)
        # Where the last sentence starts (the question after a context sentence: "I am confused. List ...").
        cut = max(low.rfind(". "), low.rfind("? "), low.rfind("! "), low.rfind(": "))
        if cut > 0:
            head = _WORDS.findall(low[:cut])
            last = sum(1 for w in head if w not in _SKIP or w in RELATION_WORDS)
        names = tuple(sorted({_stem_cached(m) for m in map(str.lower, _NAMES.findall(text))
                              if m not in _NOT_NAMES and m not in LANGUAGES and m not in _NUMBER_WORD_SET
                              and m.upper() not in _ROMAN_VALUES}))
        kind = _kind(words)
        parts = tuple(sorted([w for w in words if w in _PARTICLES] + ["+q" for w in words if w in _MORE_WORDS]
                             + ["-q" for w in words if w in _LESS_WORDS]))
        lits = (_symbols(optext), tuple(sorted(m.lower() for m in _FLAGS_SNAKE.findall(text))),
                2 if wset & _TURNED or ("from" in wset and _TURNED_FROM.search(low)) else int(bool(wset & _ENDING)))
        nums = _number_contexts(words)
    return (arrows, seq, toks, names, kind, parts, last, lits, nums)


def _language_use(w: str, text: str, words: list[str], wset: set[str]) -> bool:
    """Whether an ambiguous language name ("go", "rust") names the language here."""
    if wset & _CODE_WORDS or re.search(r"(?<=[a-z0-9,;:] )" + re.escape(w.capitalize()) + r"\b", text):
        return True
    return any(x == w and i and words[i - 1] in _LANG_CUES for i, x in enumerate(words))


def _symbols(text: str) -> tuple[str, ...]:
    """The prompt's symbol tokens, sorted ("??", "?.", "|", "&", "+="): sentence marks, joiners inside a
    word ("e-ink", "Node.js") and dashes between words left out."""
    out = []
    n = len(text)
    for m in _SYM_RUN.finditer(text):
        s, e = m.span()
        run = m.group()
        before = text[s - 1] if s else " "
        after = text[e] if e < n else " "
        if before.isalnum() and after.isalnum() and run in (".", "-"):
            continue  # a joiner: "thank-you", "os.path"
        if not before.isspace() and (after.isspace() or e == n):
            run = run.rstrip(_SENTENCE_MARKS)  # "works." "Hi!" "(x + 3)." -> ")"
        elif before.isspace() and (after.isspace() or e == n) and all(c in ",;:!-" for c in run):
            continue  # a mark or a dash standing alone
        if run:
            out.append(run)
    return tuple(sorted(out))


def _number_contexts(words: list[str]) -> tuple[tuple[str, str, str], ...]:
    """(number, word before, word after) for each number of the prompt: its unit and what is done with it."""
    out = []
    for i, w in enumerate(words):
        if w[0].isdigit():
            num = w.rstrip("abcdefghijklmnopqrstuvwxyz")  # "10th", "3x"
        elif w in _NUMBER_WORDS:
            num = _NUMBER_WORDS[w]
        else:
            continue
        j = i + 1
        while j < len(words) and words[j] in _GENERIC_UNITS:
            j += 1
        out.append((num, words[i - 1] if i else "", words[j] if j < len(words) else ""))
    return tuple(out)


def _same(a: str, b: str) -> bool:
    """Synonyms, or one word a prefix of the other ("paint"/"painter", "safe"/"safely")."""
    if a == b:
        return True
    ga = SYNONYM_OF.get(a)
    if ga is not None and ga == SYNONYM_OF.get(b):
        return True
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 4 and long.startswith(short) and len(long) - len(short) <= 3


def _pair_words(only_a: list[str], only_b: list[str], shared: set[str], same) -> tuple[list[str], list[str]]:
    """The words of each side that pair with none of the other's under ``same`` (paired ones join ``shared``)."""
    if not (only_a and only_b):
        return only_a, only_b
    rest, keep = list(only_b), []
    for x in only_a:
        for y in rest:
            if same(x, y):
                rest.remove(y)
                shared.add(x)
                break
        else:
            keep.append(x)
    return keep, rest


def _direction_flip(a: tuple, b: tuple, shared: set[str]) -> bool:
    """"X to Y" in one prompt, Y before X in the other ("Celsius to Fahrenheit")."""
    for p, q in ((a, b), (b, a)):
        arrows, p_seq, q_seq = p[2], p[3], q[3]
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
    why = literals_differ(a, b)
    if why is not None:
        return why, 0
    ca, cb = set(a[1]), set(b[1])
    shared = set(ca & cb)
    only_a = [w for w in ca - cb if w not in NEUTRAL_STEMS]
    only_b = [w for w in cb - ca if w not in NEUTRAL_STEMS]
    # Pair off words that are the same word (synonym, prefix/inflection).
    only_a, only_b = _pair_words(only_a, only_b, shared, _same)
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


# ----------------------------------------------------------------------------- the contrast veto

# Words that relate two others ("X to Y", "X in a Y", "X than Y"): two words that swap sides of one
# of these ask the opposite question ("Celsius to Fahrenheit", "liters in a gallon").
_RELATION_GROUP = {"to": 0, "into": 0, "onto": 0, "from": 1, "in": 2, "per": 2, "than": 3, "over": 4,
                   "under": 4, "before": 5, "after": 5, "vs": 6, "versus": 6}
RELATION_WORDS = frozenset(_RELATION_GROUP)
# Left out of the word sequence: function words, negations (a literal), numbers (a literal) and the
# words that only frame a request ("explain", "tell me"; not "quick" or "mean": "quick sort", "the mean").
_FRAMING = frozenset("explain describe tell give show help know want need please briefly simply question answer".split())
_SKIP = STOPWORDS | NEGATIONS | _FRAMING | _NUMBER_WORD_SET - {"first", "second", "third", "last"}
# Capitalised words after the first: names (countries, products, people). Sentence starts, "I" and
# acronyms of one letter are not.
_NAMES = re.compile(r"(?<=[a-z0-9,;:] )[A-Z][a-z][A-Za-z]*")  # not acronyms (HTTP, GET, US)
_NOT_NAMES = frozenset("i im ive id please thanks hi hey one".split())
# Opposites an embedder scores as near-identical: a prefix that negates the word ("install" /
# "uninstall", "like" / "dislike", "safe" / "unsafe") and a few pairs that share no prefix.
_NEGATING_PREFIXES = ("un", "dis", "in", "im", "ir", "il", "non", "de", "anti")
_OPPOSITES = [
    "advanta disadva", "benefit drawbac", "pro con", "increas decreas", "add remov", "upload downloa",
    "import export", "push pull", "open close", "start stop", "enabl disabl", "allow block", "allow deny",
    "accept reject", "buy sell", "win lose", "max min", "maximum minimum", "larg small", "largest smallest",
    "big small", "high low", "fast slow", "hot cold", "old new", "befor after", "over under", "cause effect",
    "encrypt decrypt", "compres decompr", "serializ deseria", "encod decod", "read writ", "input output",
    "send receiv", "find remov", "show hide", "freez thaw", "lock unlock", "mount unmount", "zip unzip", "best worst",
    "more less", "overeat underea", "overwei underwe", "boil freez", "melt freez", "first last",
    "awake asleep", "wake sleep", "gain lose", "win los", "formal informa",
]
# Particles that flip a phrasal verb: "turn on" / "turn off", "log in" / "log out".
_PARTICLES = frozenset("on off up down in out".split())
_PARTICLE_PAIRS = (("on", "off"), ("up", "down"), ("in", "out"))
# The two ends of a quantity or degree ("too much salt" / "too little salt", "the most moons" / "the fewest
# moons", "more than two eggs" / "fewer than two"): an embedder scores the pair 0.94-0.98, and "much" and
# "many" are stopwords, so no content word differs. Kept in ``parts`` as one mark per word ("+q" / "-q"), and
# like a particle it is a contrast only when one prompt has more of one end and the other more of the other
# ("a little more detail" / "a bit more detail" is not).
_MORE_WORDS = frozenset("much many more most lot lots plenty excess excessive".split())
_LESS_WORDS = frozenset("little few fewer fewest less least lack insufficient".split())
_QUANTITY = ("+q", "-q")
_OPPOSITE_PAIRS = tuple(tuple(p.split()) for p in _OPPOSITES)  # word beginnings (stems)
# The kind of request, from its words: an answer to "who" is not one to "why".
K_WHO, K_WHEN, K_WHERE, K_WHY, K_MAKE, K_FACT, K_HOWTO, K_ASK = 1, 2, 4, 8, 16, 32, 64, 128
_ASK_WORDS = frozenset("what whats which how who when where why is are was were do does did can could should "
                       "would will whom whose".split())
_MAKE_VERBS = frozenset("write create generate compose draft implement code build make design draw".split())
_HOWTO = re.compile(r"\bhow (?:do|can|should|would|could) (?:i|we|you|one)\b|\b(?:way|ways|steps|method) (?:to|for)\b")
_WHEN = re.compile(r"\bwhen (?:did|was|were|is|are|does|do|will|should|can|could)\b")
_WHERE = re.compile(r"\bwhere (?:did|was|were|is|are|does|do|will|should|can|could)\b")
# Words that, added to a request, ask for another answer on the same topic: an audience, a form, an aspect.
_MODIFIERS = frozenset(_stem(w) for w in """
    example examples beginner beginners student students child children kid kids expert experts advanced
    simple detailed history historical context criticism criticisms analogy diagram tutorial
    """.split())
# Aspects of a topic: added to a request ("what is X" / "what are the risks of X"), another question.
_ASPECTS = frozenset(_stem(w) for w in """
    pros cons risk risks advantages disadvantages benefits drawbacks limitations alternatives ethical economic
    matters
    """.split())
SLOT_WORDS = 2  # a slot: one run of at most this many words, as many on each side
LEAD_FRAME = 4  # shared words a swap needs around it when one prompt has a request word in front


def _tok(w: str) -> str:
    # The word itself (a typo stays one letter off; synonyms are for _alike), a relation as "~to".
    if w in RELATION_WORDS:
        return "~" + w
    return _LANG_ALIASES.get(w) or sys.intern(w)


def _group(w: str) -> int | None:
    g = SYNONYM_OF.get(w)
    return g if g is not None else SYNONYM_OF.get(_stem_cached(w))


# Adverbs that fill a question without changing it ("When exactly did ...", "What actually is ..."): left
# out before the kind is read from the first words, so that "when exactly did" is still a question of time.
_FILLERS = frozenset("exactly actually basically really just ever even".split())


def _kind(words: list[str]) -> int:
    if not _FILLERS.isdisjoint(words[:4]):
        words = [w for w in words if w not in _FILLERS]
    k = 0
    head = words[:4]
    if "who" in head or "whom" in head or "whose" in head:
        k |= K_WHO
    # "When did ...", "what year": a date; "when I run X, how do I ..." is not a question about time.
    if _WHEN.search(" ".join(head)) or ("year" in head and ("what" in head or "which" in head)):
        k |= K_WHEN
    if _WHERE.search(" ".join(head)):
        k |= K_WHERE
    if "why" in head:
        k |= K_WHY
    first = next((w for w in words if w not in ("please", "can", "could", "you", "would", "kindly", "now")), "")
    if first in _MAKE_VERBS:
        k |= K_MAKE
    if first in _ASK_WORDS:
        k |= K_ASK
    if words[:2] in (["what", "is"], ["what", "are"], ["whats"], ["what", "was"], ["what", "were"]) \
            and not {"way", "ways", "best", "method"} & set(words[:6]):
        k |= K_FACT
    if _HOWTO.search(" ".join(words[:10])):
        k |= K_HOWTO
    return k


def _typo(a: str, b: str) -> bool:
    """One letter added or dropped (words of 4+ letters), changed, or two neighbours swapped (5+)."""
    if abs(len(a) - len(b)) > 1 or min(len(a), len(b)) < 4:
        return False
    if len(a) == len(b):
        if len(a) < 5:
            return False
        d = [i for i in range(len(a)) if a[i] != b[i]]
        return len(d) == 1 or (len(d) == 2 and d[1] == d[0] + 1 and a[d[0]] == b[d[1]] and a[d[1]] == b[d[0]])
    s, t = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(s) and s[i] == t[i]:
        i += 1
    return s[i:] == t[i + 1:]


@lru_cache(maxsize=1 << 16)
def _alike(a: str, b: str) -> bool:
    """The same word: equal, synonyms, an inflection (same stem, or a prefix), a typo."""
    if a == b:
        return True
    if a[0] == "~" or b[0] == "~":
        return False
    ga = _group(a)
    if ga is not None and ga == _group(b):
        return True
    return _same(a, b) or _same(_stem_cached(a), _stem_cached(b)) or _typo(a, b)


@lru_cache(maxsize=1 << 14)
def _opposite(x: str, y: str) -> bool:
    for p, q in _OPPOSITE_PAIRS:
        if (x.startswith(p) and y.startswith(q)) or (x.startswith(q) and y.startswith(p)):
            return True
    for p in _NEGATING_PREFIXES:  # stems are cut at 7 letters: "disadva" / "advanta"
        for u, v in ((x, y), (y, x)):
            rest = v[len(p):]
            if v.startswith(p) and len(rest) >= 4 and (u.startswith(rest) or rest.startswith(u)):
                return True
    return False


def _unpaired(a: tuple, b: tuple) -> tuple[list[str], list[str], set[str]]:
    ca, cb = set(a[1]), set(b[1])
    shared = ca & cb
    # Sorted: the pairing is greedy, and a set's order changes with the process' hash seed.
    only_a = sorted(w for w in ca - cb if w not in NEUTRAL_STEMS)
    only_b = sorted(w for w in cb - ca if w not in NEUTRAL_STEMS)
    only_a, only_b = _pair_words(only_a, only_b, shared, _alike)
    return only_a, only_b, shared


def _slot(ta: tuple, tb: tuple) -> tuple[tuple, tuple, int] | None:
    """The one differing run of two word sequences that are otherwise equal: (run of a, run of b, frame length)."""
    n, m = len(ta), len(tb)
    i = 0
    while i < n and i < m and _alike(ta[i], tb[i]):
        i += 1
    j = 0
    while j < n - i and j < m - i and _alike(ta[n - 1 - j], tb[m - 1 - j]):
        j += 1
    return ta[i:n - j], tb[i:m - j], i + j


def _qualifier(ta: tuple, tb: tuple) -> bool:
    """``tb`` is ``ta`` with a relation and new words added in one place ("... in Python" -> "... in Python 3
    on Windows", "GDP of X" -> "GDP per capita of X")."""
    if len(tb) <= len(ta) or not ta or not tb or not _alike(ta[0], tb[0]):
        return False  # added in front: a greeting, "thanks in advance", framing
    ra, rb, _ = _slot(ta, tb)
    return not ra and len(rb) >= 2 and rb[0][0] == "~" and any(w[0] != "~" for w in rb)


def _swapped(ca: tuple, cb: tuple) -> bool:
    """One slot of at most SLOT_WORDS words swapped in an otherwise equal frame (3 words when the frame has 2+),
    also once the words one prompt puts in front that the other lacks are set aside ("List 10 facts about
    dark matter" / "10 facts about dark energy": "Tell me" is framing, "List" a word of its own)."""
    if _one_slot(ca, cb):
        return True
    if len(ca) > 1 and len(cb) > 1 and not _alike(ca[0], cb[0]):
        # A request word of its own in front of one ("List ..."), the other's framing skipped ("Tell me ..."):
        # with a longer shared frame, so that a rewording's first word is not taken for it.
        if not any(_alike(ca[0], y) for y in cb) and _one_slot(ca[1:], cb, LEAD_FRAME):
            return True
        if not any(_alike(cb[0], x) for x in ca) and _one_slot(ca, cb[1:], LEAD_FRAME):
            return True
    return False


def _one_slot(ca: tuple, cb: tuple, min_frame: int = 1) -> bool:
    ra, rb, frame = _slot(ca, cb)
    if not (ra and rb) or frame < min_frame or _pair_off(ra, rb):
        return False
    n = SLOT_WORDS + (frame >= 2)
    return len(ra) <= n and len(rb) <= n


def _pair_off(ra: tuple, rb: tuple) -> bool:
    """Every word of the shorter run is a word of the other (the same words reordered, or a few added)."""
    if len(ra) > len(rb):
        ra, rb = rb, ra
    rest = list(rb)
    for x in ra:
        for y in rest:
            if _alike(x, y):
                rest.remove(y)
                break
        else:
            return False
    return True


def _reversed_relation(ta: tuple, tb: tuple) -> bool:
    """The same relations in the same order, and two words that swap sides of one ("km to miles" / "miles to km")."""
    def sides(t: tuple) -> list:
        # Per relation word: its group, the content words before it, those after it.
        out = []
        for k in [k for k, w in enumerate(t) if w[0] == "~"]:
            left = [w for w in t[:k] if w[0] != "~"]
            right = [w for w in t[k + 1:] if w[0] != "~"]
            if left and right:
                out.append((_RELATION_GROUP[t[k][1:]], left, right))
        return out
    if "~" not in {w[0] for w in ta} or "~" not in {w[0] for w in tb}:
        return False
    sa, sb = sides(ta), sides(tb)
    if [x[0] for x in sa] != [x[0] for x in sb]:
        return False  # other relations, or a clause moved ("in bash, how do I ..." / "how do I ... in bash")
    def moved(xs: list, to: list, frm: list) -> bool:  # a word of xs on the other side only
        return any(any(_alike(x, w) for w in to) and not any(_alike(x, w) for w in frm) for x in xs)
    return any(moved(la, rb, lb) and moved(ra, lb, rb) for (_, la, ra), (_, lb, rb) in zip(sa, sb))


def _number_changed(na: tuple, nb: tuple, ca: tuple, cb: tuple) -> bool:
    """The same numbers, but one counts another thing ("1 nautical mile" / "1 mile") or is used
    otherwise ("7 percent of 350" / "7 percent more than 350")."""
    for num, pa, xa in na:
        # A number written twice ("question 7: what is 7 squared?") is changed only when no use of it in
        # the other prompt is the same.
        used = [(pb, xb) for num2, pb, xb in nb if num2 == num]
        if used and not any(_same_use(pa, xa, pb, xb, ca, cb) for pb, xb in used):
            return True
    return False


def _same_use(pa: str, xa: str, pb: str, xb: str, ca: tuple, cb: tuple) -> bool:
    if pa != pb and pa in _NUM_RELATIONS and pb in _NUM_RELATIONS:
        return False
    # Otherwise only a word put between the number and what it counts is a change.
    return not (xa and xb and not _alike(xa, xb) and (_stem_cached(xb) in ca or _stem_cached(xa) in cb))


def veto(a: tuple, b: tuple) -> str | None:
    """The contrast between two short prompts that an embedder misses, if any (None: let it judge).

    Not a demand that every word pair off: added or dropped context words,
    synonyms and rewordings are the embedder's to judge. Vetoed: other
    literals (numbers, negation, languages, operators, identifiers); a word
    and its opposite; two words that swap sides of a relation ("X to Y");
    other names; one slot swapped in an otherwise equal frame (a sibling:
    "Canada" / "Brazil", "merge sort" / "quick sort"); another kind of request
    (who / why / when / where, "what is X" / "write X", "what is X" / "how do I X").
    """
    why = literals_differ(a, b)
    if why is not None:
        return why
    la, lb = a[9], b[9]
    if la != lb:
        if la[0] != lb[0]:
            return "operators"  # "??" / "?.", "|" / "&"
        if la[1] != lb[1]:
            return "identifiers"  # "ls -a" / "ls -l", "my_function" / "my_other_function"
        if {la[2], lb[2]} == {0, 2}:
            return "negation"  # "show up in Google" / "stop it from showing up in Google"
    pa, pb = a[7], b[7]
    if pa != pb:
        for p, q in _PARTICLE_PAIRS + (_QUANTITY,):  # one has a "p" more, the other a "q" more
            dp, dq = pa.count(p) - pb.count(p), pa.count(q) - pb.count(q)
            if dp * dq < 0:
                return "quantity" if p == "+q" else "opposite"
    ca, cb = set(a[1]), set(b[1])
    for x in ca - cb:
        for y in cb - ca:
            if _opposite(x, y):
                return "opposite"
    ta, tb = a[4], b[4]
    if _reversed_relation(ta, tb):
        return "direction"
    if a[10] and _number_changed(a[10], b[10], a[1], b[1]):
        return "units"
    na, nb = set(a[5]), set(b[5])
    xa = xb = ()
    if na != nb:
        xa = [x for x in na - nb if not any(_alike(x, y) for y in b[1])]
        xb = [y for y in nb - na if not any(_alike(y, x) for x in a[1])]
        if xa and xb:
            return "names"
    ka, kb = a[6], b[6]
    diff = ka ^ kb
    if diff & (K_WHO | K_WHEN | K_WHERE):
        return "kind"
    if (ka & K_MAKE and kb & (K_FACT | K_WHY)) or (kb & K_MAKE and ka & (K_FACT | K_WHY)):
        return "kind"
    if (ka & K_FACT and kb & K_HOWTO) or (kb & K_FACT and ka & K_HOWTO):
        return "kind"
    if diff & K_WHY and not (ka & K_ASK and kb & K_ASK):
        return "kind"  # "why ...?" and an instruction ("tell me a joke about X" / "why does X tell jokes")
    only_a, only_b, _ = _unpaired(a, b)
    ma, mb = set(only_a) & _MODIFIERS, set(only_b) & _MODIFIERS
    if ma != mb:
        return "narrower"  # "explain X" / "explain X with an example", "... for a beginner", "... in history"
    if bool(only_a) != bool(only_b):
        if xa or xb:
            return "names"  # a name one prompt adds: "install Python" / "install Python on a Raspberry Pi"
        if any(w in _ASPECTS for w in only_a + only_b):
            return "narrower"  # "what is X" / "what are the risks of X"
        if _qualifier(ta, tb) or _qualifier(tb, ta):
            return "narrower"  # "the GDP of X" / "the GDP per capita of X"
    ca = tuple(t for t in ta if t[0] != "~")
    cb = tuple(t for t in tb if t[0] != "~")
    if _swapped(ca, cb):
        return "swap"
    if a[8] or b[8]:  # the same for the last sentences (other context before the question)
        if _swapped(tuple(t for t in ta[a[8]:] if t[0] != "~"), tuple(t for t in tb[b[8]:] if t[0] != "~")):
            return "swap"
    return None


def added_words(a: tuple, b: tuple) -> int:
    """Content words one prompt has that the other lacks, when the other adds none (a narrower question);
    -1 when every content word of each pairs with one of the other (synonyms, inflections, typos)."""
    only_a, only_b, _ = _unpaired(a, b)
    if not only_a and not only_b:
        return -1
    return len(only_a) + len(only_b) if not only_a or not only_b else 0
