"""Invariants of the mixing packer on synthetic sources, for arbitrary example lengths and resume points."""

from __future__ import annotations

import json

import grain
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_jax.data import PackedMixtureIterDataset

PAD = 0
TEXT_BASE = 1_000_000  # token value = base + stream position, so every token names its example


def synthetic(lengths, base):
    """Example i has lengths[i % len(lengths)] tokens, all equal to base + i."""
    def make(i):
        n = lengths[i % len(lengths)]
        return np.full(n, base + i, dtype=np.int32), (np.arange(n) % 2).astype(np.int32)

    return grain.MapDataset.range(10**6).map(make)


def length_of(value, atomic_lengths, text_lengths):
    if value >= TEXT_BASE:
        return text_lengths[(value - TEXT_BASE) % len(text_lengths)]
    return atomic_lengths[(value - 1) % len(atomic_lengths)]


@settings(max_examples=40, deadline=None)
@given(atomic_lengths=st.lists(st.integers(1, 40), min_size=1, max_size=12),
       text_lengths=st.lists(st.integers(1, 90), min_size=1, max_size=6),
       seq_len=st.integers(4, 48), weight=st.floats(0.05, 0.95), with_text=st.booleans(),
       resume_at=st.integers(0, 6))
def test_packer_invariants(atomic_lengths, text_lengths, seq_len, weight, with_text, resume_at):
    sources, weights, atomic = [synthetic(atomic_lengths, 1)], [weight], [True]
    if with_text:
        sources.append(synthetic(text_lengths, TEXT_BASE))
        weights.append(1 - weight)
        atomic.append(False)
    ds = PackedMixtureIterDataset(sources, weights, seq_len, PAD, atomic=atomic)
    it = iter(ds)
    rows = [next(it) for _ in range(10)]
    capacity = seq_len + 1
    seen: list[int] = []
    for row in rows:
        assert row["inputs"].shape == (seq_len,)
        tokens = np.concatenate([row["inputs"], row["targets"][-1:]])
        real = tokens[tokens != PAD]
        assert np.all(tokens[len(real):] == PAD)  # padding only at the end of a row
        seg = row["segment_ids"]
        for s in np.unique(seg[seg > 0]):
            assert len(set(row["inputs"][seg == s].tolist())) == 1  # one segment = one example
        for value in np.unique(real):
            n = length_of(int(value), atomic_lengths, text_lengths)
            in_row = int((real == value).sum())
            if value < TEXT_BASE and n <= capacity:
                assert in_row == n  # atomic examples that fit in a row are never cut
        seen.extend(real.tolist())
    # Per source, tokens appear in stream order with nothing skipped or repeated.
    for base, lengths, is_text in ((1, atomic_lengths, False), (TEXT_BASE, text_lengths, True)):
        got = [v for v in seen if (v >= TEXT_BASE) == is_text]
        expected = np.repeat(base + np.arange(len(got) + 1), [lengths[i % len(lengths)] for i in range(len(got) + 1)])
        assert got == expected[:len(got)].tolist()
    # Resuming from a saved state reproduces the following rows exactly.
    it2 = iter(ds)
    for _ in range(resume_at):
        next(it2)
    state = json.loads(json.dumps(it2.get_state()))
    it3 = iter(ds)
    it3.set_state(state)
    for row in rows[resume_at:resume_at + 4]:
        again = next(it3)
        for k in row:
            assert np.array_equal(row[k], again[k])
