"""wordpiece.py against the tokenizers library: the same ids for every word it takes, and None for the rest."""

from __future__ import annotations

import random
from pathlib import Path

from gateway.cache.embed import _PIECE, StaticEmbedder, load_tokenizer, load_vocab
from gateway.cache.wordpiece import ASCII_PUNCT, WordPiece

DATA = Path(__file__).parent / "data"


def words() -> set[str]:
    out: set[str] = set()
    for p in [*DATA.glob("*.jsonl"), DATA.parent.parent / "benchmarks" / "prompt_mix.json"]:
        out |= set(_PIECE.findall(p.read_text(errors="replace").lower()))
    out |= {k[2:] if k.startswith("##") else k for k in load_vocab()}  # every entry, whole and as a tail
    rng = random.Random(16)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    out |= {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(5000)}
    out |= {str(n) for n in range(0, 100_000, 37)} | {"a" * 100, "a" * 101, "Paris", "café", "日本", "\x01"}
    out |= set(map(chr, range(128)))
    return out


def test_the_same_ids_as_the_library_for_every_word_it_takes():
    tok, wp = load_tokenizer(), WordPiece(load_vocab())
    taken = left = 0
    for w in words():
        got = wp.word(w)
        if got is None:
            left += 1
            # Only what BERT's normalizer changes first: non-ASCII, capitals, control characters.
            assert not w.isascii() or w != w.lower() or not (w.isalnum() or w in ASCII_PUNCT), repr(w)
            continue
        taken += 1
        assert got == tuple(tok.encode(w, add_special_tokens=False).ids), repr(w)
    assert taken > 30_000 and left > 0
    assert wp.word("a" * 101) == (wp.unk,)  # past max_input_chars_per_word


def test_static_vectors_load_the_library_only_for_words_it_leaves():
    from gateway.cache import embed

    s = StaticEmbedder()
    loaded = embed._LazyTokenizer._tok is not None
    s._word_ids.clear()
    ids = s._ids("what is the population of canada in 2024?", 256)
    assert ids == load_tokenizer().encode("what is the population of canada in 2024?", add_special_tokens=False).ids
    assert (embed._LazyTokenizer._tok is not None) == loaded  # ASCII only: no call into the library
    assert s._ids("où est le café ?", 256) == load_tokenizer().encode("où est le café ?", add_special_tokens=False).ids
