"""MiniLM's WordPiece for plain ASCII words, in Python: the static vectors' tokens without the tokenizers library.

The static candidate vectors tokenize every word they have not seen before on the lookup path, and
the library's call costs ~50-70 µs however short the word (numbers, ids: most unique prompts bring
one); this greedy longest-match over the same vocabulary takes a few µs, and a worker need not load
the library (~10 MB) at all. Words it cannot take exactly as BERT's normalizer would (non-ASCII: accents,
CJK; control characters) are left to the library (None).
"""

from __future__ import annotations

ASCII_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
MAX_CHARS = 100  # the model's max_input_chars_per_word: a longer word is [UNK]


class WordPiece:
    def __init__(self, vocab: dict[str, int], unk: str = "[UNK]", prefix: str = "##") -> None:
        self.first = vocab
        self.rest = {k[len(prefix):]: v for k, v in vocab.items() if k.startswith(prefix)}
        self.unk = vocab[unk]

    def word(self, w: str) -> tuple[int, ...] | None:
        """The ids of one lower-cased word (a run of letters and digits, or one punctuation character),
        or None when it needs the full normalizer."""
        if not w.isascii() or w != w.lower():  # the model's normalizer lower-cases first
            return None
        if not w.isalnum():
            i = self.first.get(w) if w in ASCII_PUNCT else None
            return None if i is None else (i,)
        n = len(w)
        if n > MAX_CHARS:
            return (self.unk,)
        out, start, table = [], 0, self.first
        while start < n:
            end = n
            while end > start:
                i = table.get(w[start:end])
                if i is not None:
                    break
                end -= 1
            else:
                return (self.unk,)  # a piece that is in no entry: the whole word is unknown
            out.append(i)
            start, table = end, self.rest
        return tuple(out)
