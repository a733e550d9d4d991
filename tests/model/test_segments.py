"""Packed rows (bar 3): each document's logits and gradients equal those of the document run alone."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.model.functional import InputError
from tests.model.helpers import PARITY_CONFIGS, random_params, random_tokens

# Documents of 5, 11 and 7 tokens, then 2 of padding: starts fall inside and on chunk boundaries (chunk 8 / 16).
LENGTHS = (5, 11, 7)
PAD = 2


def packed_row(cfg, seed: int) -> tuple[np.ndarray, np.ndarray, list[slice]]:
    """A [1, L] row of 3 documents + padding, its segment ids (1, 2, 3, then 0) and each document's slice."""
    tokens = random_tokens(cfg, 1, sum(LENGTHS) + PAD, seed)
    segments = np.zeros_like(tokens)
    slices, start = [], 0
    for i, n in enumerate(LENGTHS):
        segments[0, start:start + n] = i + 1
        slices.append(slice(start, start + n))
        start += n
    return tokens, segments, slices


@functools.cache
def _params(name: str) -> dict:
    return random_params(PARITY_CONFIGS[name], seed=3)


@pytest.fixture(params=["all_blocks", "deep_mqa"])
def model(request):
    """(cfg, params): all_blocks is M*E- (Mamba, attention, MoE, MLP); deep_mqa has conv width 3, chunk 16."""
    return PARITY_CONFIGS[request.param], _params(request.param)


def test_each_document_logits_equal_the_document_alone(model):
    """Row 0 packs three documents and padding; row 1 is one document (a row packs independently of its batch)."""
    cfg, params = model
    tokens, segments, slices = packed_row(cfg, seed=5)
    tokens = np.concatenate([tokens, random_tokens(cfg, 1, tokens.shape[1], seed=6)])
    segments = np.concatenate([segments, np.ones_like(segments)])
    packed = np.asarray(ej.apply(cfg, params, tokens, segment_ids=segments))
    unpacked = np.asarray(ej.apply(cfg, params, tokens))
    for piece in slices:
        alone = np.asarray(ej.apply(cfg, params, tokens[:1, piece]))
        np.testing.assert_allclose(packed[:1, piece], alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[1], unpacked[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[0, slices[0]], unpacked[0, slices[0]], rtol=1e-5, atol=1e-5)
    # without segment ids the later documents do see their neighbours (so the test above tests something)
    assert np.max(np.abs(unpacked[0, slices[1]] - packed[0, slices[1]])) > 1e-2


def _doc_loss(cfg, params, tokens, segments, piece, weights):
    """A random projection of the logits of one document (the loss sees no other position)."""
    logits = ej.apply(cfg, params, tokens, segment_ids=segments)
    return jnp.sum(logits[:, piece] * weights)


def test_gradients_of_one_document_equal_the_document_alone():
    """The middle document (after one, before another and padding; it spans a chunk boundary), all block types."""
    cfg = PARITY_CONFIGS["all_blocks"]
    params, doc = _params("all_blocks"), 1
    tokens, segments, slices = packed_row(cfg, seed=8)
    piece = slices[doc]
    weights = jnp.asarray(np.random.default_rng(9).standard_normal((1, LENGTHS[doc], cfg.vocab_size)), jnp.float32)
    packed = jax.grad(_doc_loss, argnums=1)(cfg, params, tokens, segments, piece, weights)
    alone = jax.grad(_doc_loss, argnums=1)(cfg, params, tokens[:, piece], None, slice(None), weights)
    flat_packed, flat_alone = jax.tree_util.tree_leaves_with_path(packed), jax.tree.leaves(alone)
    for (path, got), want in zip(flat_packed, flat_alone, strict=True):
        want = np.asarray(want)
        scale = max(float(np.max(np.abs(want))), 1e-3)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))


def test_bad_segment_ids_raise_before_compiling():
    cfg = PARITY_CONFIGS["all_blocks"]
    params = _params("all_blocks")
    tokens = random_tokens(cfg, 1, 8)
    with pytest.raises(InputError, match="segment_ids: expected the shape"):
        ej.apply(cfg, params, tokens, segment_ids=np.ones((1, 7), np.int32))
    with pytest.raises(InputError, match="segment_ids: expected integer"):
        ej.apply(cfg, params, tokens, segment_ids=np.ones((1, 8), np.float32))


def test_training_and_eval_steps_pass_segment_ids():
    """The eval step (the train step's loss) reads segment_ids from the batch and hands them to the model."""
    from elastic_jax.train.losses import cross_entropy
    from elastic_jax.train.step import make_eval_step

    cfg, params = PARITY_CONFIGS["all_blocks"], _params("all_blocks")
    tokens, segments, _ = packed_row(cfg, seed=10)
    targets = np.roll(tokens, -1, axis=1)
    mask = ((segments > 0) & (np.roll(segments, -1, axis=1) == segments)).astype(np.float32)
    batch = {"inputs": tokens, "targets": targets, "loss_mask": mask, "segment_ids": segments,
             "positions": np.zeros_like(tokens)}
    eval_fn = make_eval_step(cfg)[0]
    got = float(eval_fn(params, batch)["loss"])
    want = float(cross_entropy(ej.apply(cfg, params, tokens, segment_ids=segments), targets, mask)[0])
    plain = float(cross_entropy(ej.apply(cfg, params, tokens), targets, mask)[0])
    assert got == pytest.approx(want, rel=1e-5) and abs(plain - want) > 1e-3
