"""Nested self-speculative decoding on the shared tiny elastic checkpoint: greedy output is the target budget's own,
the Mamba states return to the last accepted token, sampled tokens follow the target's distribution, bad settings
fail clearly. The tiny checkpoint's budgets disagree often, so drafts are rejected in most rounds."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.scipy.stats import chi2

from elastic_jax.elastic.spec import ElasticError
from elastic_jax.inference import speculative
from elastic_jax.inference.sampling import filter_logits
from elastic_jax.inference.speculative import speculative_generate
from elastic_jax.model.cache import BY_POSITION
from elastic_jax.model.functional import InputError

PROMPTS = [[1, 40, 41, 42, 43, 44], [1, 50], [1, 7, 9, 60, 61]]
NEW = 24


@pytest.mark.parametrize("target", [1.0, 0.7])
def test_greedy_is_the_target_budgets_own_text(engine, target):
    """Every larger budget drafted by 0.4, one row at a time with k=1 (every accepted draft is a whole round: the
    draft catches up on the next one): plain greedy decoding's text."""
    plain = engine.generate(PROMPTS, target, NEW)
    accepted = rejected = 0
    for prompt, want in zip(PROMPTS, plain):
        got, stats = speculative_generate(engine, [prompt], target, 0.4, k=1, max_new_tokens=NEW)
        assert got == [want]
        assert sum(stats.new_tokens) == len(want) and stats.drafted == sum(stats.rounds)
        accepted, rejected = accepted + stats.accepted[0], rejected + stats.drafted - stats.accepted[0]
    assert rejected > 0, "the prompts must force rejections"
    if target < 1.0:
        assert accepted > 0, "and some drafts must be accepted"


def _states(cache) -> list[np.ndarray]:
    return [np.asarray(v) for layer in cache["layers"] if layer for key, v in layer.items() if key not in BY_POSITION]


def test_rejected_drafts_leave_the_states_of_the_accepted_text(engine):
    """A batch of ragged prompts, k=3: after a call whose drafts were partly rejected, each row's Mamba conv windows
    and SSM states, in both budgets, are those of its text (but the last token) fed afresh, and decoding on from
    there gives plain greedy decoding's text."""
    target, k, first = 0.7, 3, 7
    plain = engine.generate(PROMPTS, target, NEW)
    batch = speculative.start(engine, PROMPTS, target, 0.4, k, capacity=64)
    made, stats = speculative.decode(engine, batch, first, stop_ids=(engine.cfg.eos_token_id,))
    assert made == [row[:first] for row in plain]
    assert 0 < sum(stats.accepted) < stats.drafted
    for r, text in enumerate(batch.tokens):
        for budget, cached in ((target, batch.target), (0.4, batch.draft)):
            fresh = engine.start(budget, [text[:-1]], 64)
            assert int(cached.caches["pos"][r]) == len(text) - 1
            row = jax.tree.map(lambda x, r=r: x[r:r + 1], cached.caches)
            for got, want in zip(_states(row), _states(fresh.caches), strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    rest, _ = speculative.decode(engine, batch, NEW - first, stop_ids=(engine.cfg.eos_token_id,))
    assert [a + b for a, b in zip(made, rest)] == plain
    again, _ = speculative_generate(engine, PROMPTS, target, 0.4, k=k, max_new_tokens=NEW)  # one call: the same
    assert again == plain


def _chi_square_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson's test of counts against probs, the categories expected fewer than 5 times pooled into one."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    stat = float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep]))
    return float(chi2.sf(stat, int(keep.sum()) - 1))


def test_sampled_first_tokens_follow_the_target_distribution(engine):
    """1000 rows (independent keys) sample one token at temperature 0.1, where the draft's distribution is far from
    the target's (total variation about 0.4): the tokens fit the target's distribution and not the draft's."""
    prompt, rows, temperature = PROMPTS[1], 1000, 0.1
    got, stats = speculative_generate(engine, [prompt] * rows, 1.0, 0.4, k=2, max_new_tokens=1,
                                      temperature=temperature, seed=3)
    counts = np.bincount([row[0] for row in got], minlength=engine.cfg.vocab_size)

    def dist(budget):
        logits = engine.start(budget, [prompt], 64).logits
        return np.asarray(jax.nn.softmax(filter_logits(logits, temperature, 0, 1.0))[0], np.float64)

    p, q = dist(1.0), dist(0.4)
    assert 0.5 * np.abs(p - q).sum() > 0.3
    assert 0.05 < stats.acceptance_rate < 0.95  # both the accepted draft and the resampled token are exercised
    assert _chi_square_pvalue(counts, p / p.sum()) > 1e-4  # a false failure: less than 1 in 10,000
    assert _chi_square_pvalue(counts, q / q.sum()) < 1e-12  # the test has the power to tell them apart


@pytest.mark.parametrize("target, draft, k, field", [
    (0.7, 0.7, 2, "draft_budget"), (0.7, 1.0, 2, "draft_budget"), (1.0, 0.4, 0, "k "), (1.0, 0.4, True, "k "),
    (1.0, 0.05, 2, "draft_budget"), (1.5, 0.4, 2, "target_budget")])
def test_bad_settings_fail_naming_the_field(engine, target, draft, k, field):
    compiled = engine.compilations
    with pytest.raises((InputError, ElasticError), match=field):
        speculative_generate(engine, [[1, 2, 3]], target, draft, k=k, max_new_tokens=4)
    assert engine.compilations == compiled


def test_the_draft_tokens_must_fit_the_context(engine):
    limit = engine.cfg.max_position_embeddings
    with pytest.raises(InputError, match=r"\+ k \(4 drafted"):
        speculative_generate(engine, [[1] * 8], 1.0, 0.4, k=4, max_new_tokens=limit - 10)


def test_the_verification_pass_on_the_decode_kernels_equals_xla(engine):
    """k+1 = 3 tokens through the CPU decode kernels of a few rows (each weight read once for the 3 rows, the
    routed experts grouped by expert, the queries' attention in place) keep the logits and every position's Mamba
    state of XLA's verification pass, to float tolerance."""
    from elastic_jax.inference.programs import _cut, decode_target
    from elastic_jax.kernels.target import CompileTarget
    from elastic_jax.model.functional import build

    target = decode_target(1, 0, tokens=3)
    assert (target.decode, target.decode_rows, target.step_states) == ("kernels", 3, True)
    spec = engine.arch(1.0).spec
    params = _cut(engine.cfg, spec)(engine.params)
    cache = jax.tree.map(lambda x: x[0], engine.start(1.0, [PROMPTS[0]], 16).caches)
    tokens = jax.numpy.asarray([[7, 8, 9]], jax.numpy.int32)
    outs = [jax.jit(build(spec.apply_to(engine.cfg), target=t).apply)({"params": params}, tokens, cache)
            for t in (target, CompileTarget("cpu", step_states=True))]
    lowered = jax.jit(build(spec.apply_to(engine.cfg), target=target).apply).lower(
        {"params": params}, tokens, cache).as_text()
    assert all(f"elastic_jax_{name}" in lowered for name in ("products", "experts", "attention"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5), *outs)
