"""The minilm-text workload from pydoc_data.topics."""

from __future__ import annotations

import numpy as np

from models import textdata


def test_deterministic_and_seeded():
    a = textdata.load_texts(seed=0)
    assert a == textdata.load_texts(seed=0)
    b = textdata.load_texts(seed=1)
    assert a != b and sorted(a) == sorted(b)
    assert len(a) > 1000 and len(set(a)) == len(a)
    assert textdata.load_texts(seed=0, n=10) == a[:10]
    assert all(isinstance(t, str) and t == " ".join(t.split()) and t for t in a)


def test_paragraphs_are_prose():
    paras = textdata.paragraphs()
    assert not any(">>>" in p or "::=" in p or "*****" in p for p in paras)
    sents = textdata.sentences(paras[:20])
    assert len(sents) > 20 and all(len(s.split()) >= 3 for s in sents)


def test_lengths_and_histogram():
    w = textdata.load_workload(seed=0)
    assert len(w.texts) == len(w.token_lengths)
    assert w.token_lengths.dtype == np.int32
    assert w.token_lengths.min() >= 3 and w.token_lengths.max() == 256  # truncated as served
    h = w.histogram()
    assert list(h) == [16, 32, 64, 128, 256] and sum(h.values()) == len(w.texts)
    assert all(c > 0 for c in h.values())  # every length bucket is populated
    untrunc = textdata.token_lengths(w.texts[:200], max_length=None)
    assert (untrunc >= w.token_lengths[:200]).all()
    assert textdata.length_histogram([1, 16, 17, 300], (16, 32)) == {16: 2, 32: 2}
