"""The re-scoring statistics against brute-force definitions (numpy only; the model path is in test_cheaters)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ig3_edge.scoring import _position_surprise, _surprises_full_vocab


def _brute(logits, token, temperature, top_p):
    p1 = np.exp(logits.astype(np.float64) - logits.max())
    p1 /= p1.sum()
    order = sorted(range(len(logits)), key=lambda i: -p1[i])
    keep, cum = [], 0.0
    for i in order:  # llama.cpp top-p: smallest prefix reaching top_p (the crossing token is kept)
        keep.append(i)
        cum += p1[i]
        if cum >= top_p:
            break
    if token not in keep:
        return None
    z = np.array([logits[i] for i in keep], dtype=np.float64) / temperature
    q = np.exp(z - z.max())
    q /= q.sum()
    qt = q[keep.index(token)]
    u = q[q > qt].sum() + qt / 2
    return -math.log1p(-min(u, 1 - 1e-12))


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (0.7, 0.9), (1.3, 0.5)])
def test_surprise_matches_the_definition(temperature, top_p):
    rng = np.random.default_rng(1)
    rows = (rng.standard_normal((6, 300)) * 3).astype(np.float32)
    for i, row in enumerate(rows):
        for token in (int(np.argmax(row)), int(np.argsort(row)[150]), int(np.argmin(row))):
            want = _brute(row, token, temperature, top_p)
            got = _position_surprise(row, token, temperature, top_p)
            assert (got is None) == (want is None)
            if want is not None:
                assert got == pytest.approx(
                    want, rel=1e-4
                )  # the extreme tail (u ~ 1 - 1e-11) is summation-order noise
    toks = np.array([int(np.argsort(r)[100]) for r in rows])
    if top_p == 1.0:
        vec = _surprises_full_vocab(rows, toks, temperature)
        loop = [_position_surprise(rows[i], int(toks[i]), temperature, 1.0) for i in range(len(toks))]
        assert np.allclose(vec, loop)


def test_least_likely_token_of_a_large_vocabulary_stays_finite_in_float32_logits():
    rows = (np.random.default_rng(0).standard_normal((3, 49152)) * 8).astype(np.float32)
    toks = np.array([int(np.argmin(r)) for r in rows])
    assert np.isfinite(_surprises_full_vocab(rows, toks, 1.0)).all()


def test_honest_draws_give_uniform_ranks():
    """Sampling from q itself: the mean surprise per position is about 1 (Exp(1)), the test's null."""
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal(200) * 2).astype(np.float32)
    q = np.exp(logits.astype(np.float64) / 0.8)
    q /= q.sum()
    draws = rng.choice(len(q), size=4000, p=q)
    mean = np.mean([_position_surprise(logits, int(t), 0.8, 1.0) for t in draws])
    assert 0.9 < mean < 1.05  # mid-point ranks make it a little conservative (below 1)
