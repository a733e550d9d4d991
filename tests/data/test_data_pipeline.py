"""The packed grain pipeline: batch format, mixture, sharding, exact resumption, eval batches, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from elastic_jax.data import (
    ByteTokenizer,
    DataConfig,
    ReasoningTaskConfig,
    build_sources,
    make_eval_batches,
    make_train_iterator,
    split_of,
)

TOK = ByteTokenizer()
Z = ord("z") + ByteTokenizer.NUM_SPECIAL
KEYS = {"inputs": np.int32, "targets": np.int32, "loss_mask": np.float32, "segment_ids": np.int32,
        "positions": np.int32}


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k


def segments(row_tokens, row_segments):
    """The token runs of each non-padding segment of one row."""
    return [row_tokens[row_segments == s] for s in np.unique(row_segments) if s > 0]


def reasoning_prompts(batches):
    """Prompts of the complete reasoning examples in `batches`."""
    out = []
    for batch in batches:
        for tokens, segs in zip(batch["inputs"], batch["segment_ids"], strict=True):
            for seg in segments(tokens, segs):
                text = TOK.decode(seg)
                if text.startswith("<s>") and "<think>" in text:
                    out.append(text[3:text.index("<think>")])
    return out


def test_batch_format_and_alignment(z_corpus):
    cfg = DataConfig(text_paths=(str(z_corpus),))
    batches = take(make_train_iterator(cfg, TOK, seq_len=96, global_batch=6, seed=0, process_index=0,
                                       process_count=1), 4)
    for batch in batches:
        assert set(batch) == set(KEYS)
        for key, dtype in KEYS.items():
            assert batch[key].shape == (6, 96) and batch[key].dtype == dtype, key
        assert np.array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
        assert batch["inputs"].min() >= 0 and batch["inputs"].max() < TOK.vocab_size
        seg = batch["segment_ids"]
        # Loss only on targets of the same (non-padding) segment as their input.
        on = batch["loss_mask"] > 0
        assert np.all(seg[on] > 0)
        assert np.all(seg[:, 1:][on[:, :-1]] == seg[:, :-1][on[:, :-1]])
        assert set(np.unique(batch["loss_mask"])) <= {0.0, 1.0}
        # Positions restart at each segment.
        starts = np.concatenate([np.ones((6, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
        assert np.all(batch["positions"][starts] == 0)


def test_segment_ids_line_up_with_document_boundaries(z_corpus):
    """Segments are numbered 1, 2, ... within a row, padding is 0 and trails; a segment ends exactly where its
    document ends (eos), and every document start (bos) starts a segment. (A text split across rows continues as
    a segment of its own, which may come after other documents.)"""
    cfg = DataConfig(text_paths=(str(z_corpus),))
    seen_starts = 0
    for batch in take(make_train_iterator(cfg, TOK, 96, 4, seed=2, process_index=0, process_count=1), 4):
        seg, inputs = batch["segment_ids"], batch["inputs"]
        for row_seg, row in zip(seg, inputs, strict=True):
            used = int((row_seg > 0).sum())
            assert np.all(row_seg[used:] == 0) and row_seg[0] == 1
            assert np.all(np.diff(row_seg[:used]) >= 0) and np.all(np.diff(row_seg[:used]) <= 1)
            change = np.flatnonzero(np.diff(row_seg[:used])) + 1
            assert np.all(row[change - 1] == TOK.eos_id)
            starts_in_row = np.flatnonzero(row[1:used] == TOK.bos_id) + 1
            assert set(starts_in_row) <= set(change)
            assert np.all(row[sorted(set(change) - set(starts_in_row))] == Z)  # continued texts
            seen_starts += len(starts_in_row)
    assert seen_starts > 10


def test_document_aware_off_leaves_out_segment_ids(z_corpus):
    """data.document_aware=False: the same rows without segment_ids (the model reads a row as one sequence); the
    iterator state is interchangeable, since the stream is the same."""
    cfg = DataConfig(text_paths=(str(z_corpus),))
    on = make_train_iterator(cfg, TOK, 64, 2, 0, 0, 1)
    off = make_train_iterator(cfg.replace(document_aware=False), TOK, 64, 2, 0, 0, 1)
    a, b = take(on, 2), take(off, 2)
    assert_batches_equal([{k: v for k, v in x.items() if k != "segment_ids"} for x in a], b)
    assert "segment_ids" in a[0] and "segment_ids" not in b[0]
    resumed = make_train_iterator(cfg.replace(document_aware=False), TOK, 64, 2, 0, 0, 1)
    resumed.set_state(on.get_state())
    assert_batches_equal([{k: v for k, v in next(on).items() if k != "segment_ids"}], [next(resumed)])


def test_default_config_uses_stdlib():
    batch = next(make_train_iterator(DataConfig(text_max_files=20), None, 128, 2, 0, 0, 1))
    assert batch["inputs"].shape == (2, 128)


def test_reasoning_examples_are_whole_and_masked():
    cfg = DataConfig(reasoning_weight=1.0, text_weight=0.0, reasoning=ReasoningTaskConfig.preset("medium"))
    batches = take(make_train_iterator(cfg, TOK, 128, 4, seed=1, process_index=0, process_count=1), 3)
    seen = 0
    for batch in batches:
        for b in range(4):
            seg = batch["segment_ids"][b]
            # Only trailing padding, and every example is complete: bos ... eos.
            used = int((seg > 0).sum())
            assert np.all(seg[:used] > 0) and np.all(seg[used:] == 0)
            row = np.concatenate([batch["inputs"][b], batch["targets"][b, -1:]])
            last = batch["targets"][b, -1]
            row_seg = np.concatenate([seg, [0 if last == TOK.pad_id else seg[-1]]])
            for piece in segments(row, row_seg):
                text = TOK.decode(piece)
                assert text.startswith("<s>") and text.endswith("</s>"), text
                seen += 1
            # The trained targets of each example are exactly trace, </think>, answer and eos.
            mask = batch["loss_mask"][b] > 0
            trained = TOK.decode(batch["targets"][b][mask])
            expected = "".join(t[t.index("<think>") + 7:] for t in (TOK.decode(p) for p in segments(
                row, row_seg)))
            assert trained == expected
    assert seen > 10


def test_mixture_proportions(z_corpus):
    for weights in ((0.7, 0.3), (0.2, 0.8)):
        cfg = DataConfig(reasoning_weight=weights[0], text_weight=weights[1], text_paths=(str(z_corpus),))
        it = make_train_iterator(cfg, TOK, 128, 8, seed=0, process_index=0, process_count=1)
        batches = take(it, 15)
        tokens = np.concatenate([b["inputs"].ravel() for b in batches])
        real = tokens[tokens != TOK.pad_id]
        text_share = np.mean(real == Z)
        assert abs(text_share - weights[1]) < 0.04, (weights, text_share)
        consumed = it.get_state()["consumed"]
        assert abs(consumed[1] / sum(consumed) - weights[1]) < 0.01
    only_text = next(make_train_iterator(DataConfig(reasoning_weight=0, text_paths=(str(z_corpus),)), TOK,
                                         64, 2, 0, 0, 1))
    assert not np.isin(only_text["inputs"], [TOK.think_id, TOK.end_think_id]).any()
    only_reasoning = next(make_train_iterator(DataConfig(text_weight=0), TOK, 64, 2, 0, 0, 1))
    assert not (only_reasoning["inputs"] == Z).any()


def test_sharding_streams_are_disjoint_and_complete(z_corpus):
    cfg = DataConfig(text_paths=(str(z_corpus),), text_eval_fraction=0.0,
                     reasoning=ReasoningTaskConfig.preset("hard"))

    def elements(process_index, process_count, n):
        out = {}
        for name, ds, _, _ in build_sources(cfg, TOK, 3, "train", process_index, process_count):
            out[name] = [tuple(ds[i][0]) for i in range(n)]
        return out

    full = elements(0, 1, 24)
    shards = [elements(p, 2, 12) for p in range(2)]
    for name in ("reasoning", "text"):
        a, b = shards[0][name], shards[1][name]
        assert a == full[name][0::2] and b == full[name][1::2]
        assert sorted(a + b) == sorted(full[name])
    # One epoch of the 24 text files splits into two disjoint halves covering all of them.
    assert set(shards[0]["text"]).isdisjoint(shards[1]["text"]) and len(set(full["text"])) == 24
    # End to end: per-process batches are global_batch // process_count rows, with disjoint examples.
    its = [make_train_iterator(cfg, TOK, 256, 8, 3, p, 2) for p in range(2)]
    batches = [take(it, 3) for it in its]
    assert batches[0][0]["inputs"].shape == (4, 256)
    prompts = [reasoning_prompts(b) for b in batches]
    assert len(prompts[0]) > 10 and set(prompts[0]).isdisjoint(prompts[1])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_bitwise_exact(z_corpus, num_workers):
    cfg = DataConfig(text_paths=(str(z_corpus),), num_workers=num_workers)
    make = lambda: make_train_iterator(cfg, TOK, 200, 4, seed=5, process_index=0, process_count=1)  # noqa: E731
    it = make()
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 5)
    restored = make()
    restored.set_state(state)
    assert_batches_equal(take(restored, 5), expected)
    assert_batches_equal(take(make(), 8)[3:], expected)  # and equal to an uninterrupted fresh run
    if num_workers:
        it.close()
        restored.close()


def test_resume_rejects_other_pipeline(z_corpus):
    cfg = DataConfig(text_paths=(str(z_corpus),))
    it = make_train_iterator(cfg, TOK, 64, 2, 0, 0, 1)
    next(it)
    state = it.get_state()
    other = make_train_iterator(cfg, TOK, 32, 2, 0, 0, 1)
    with pytest.raises(ValueError, match="seq_len"):
        other.set_state(state)
    with pytest.raises(ValueError, match="sources"):
        make_train_iterator(cfg.replace(text_weight=0), TOK, 64, 2, 0, 0, 1).set_state(state)


def test_seeds():
    cfg = DataConfig(text_max_files=30)
    a = next(make_train_iterator(cfg, TOK, 64, 2, seed=0, process_index=0, process_count=1))
    b = next(make_train_iterator(cfg, TOK, 64, 2, seed=1, process_index=0, process_count=1))
    assert not np.array_equal(a["inputs"], b["inputs"])
    fixed = cfg.replace(shuffle_seed=9)
    c = next(make_train_iterator(fixed, TOK, 64, 2, seed=0, process_index=0, process_count=1))
    d = next(make_train_iterator(fixed, TOK, 64, 2, seed=1, process_index=0, process_count=1))
    assert_batches_equal([c], [d])


def test_eval_batches_are_deterministic_and_held_out():
    cfg = DataConfig(text_max_files=200)
    first = make_eval_batches(cfg, TOK, 128, 4, num_batches=3, process_index=0, process_count=1)
    assert_batches_equal(first, make_eval_batches(cfg.replace(shuffle_seed=4), TOK, 128, 4, 3, 0, 1))
    assert len(first) == 3 and first[0]["inputs"].shape == (4, 128)
    prompts = reasoning_prompts(first)
    assert prompts and all(split_of(p, cfg.reasoning) == "eval" for p in prompts)
    train_prompts = reasoning_prompts(take(make_train_iterator(cfg, TOK, 128, 4, 0, 0, 1), 3))
    assert all(split_of(p, cfg.reasoning) == "train" for p in train_prompts)
    # A corpus too small to hold out any file: eval falls back to reasoning only, or errors without it.
    small = cfg.replace(text_max_files=10)
    assert make_eval_batches(small, TOK, 64, 2, 1, 0, 1)[0]["inputs"].shape == (2, 64)
    with pytest.raises(ValueError, match=r"data\.text_eval_fraction"):
        make_eval_batches(small.replace(reasoning_weight=0), TOK, 64, 2, 1, 0, 1)


def test_default_process_resolution():
    it = make_train_iterator(DataConfig(text_weight=0), TOK, 32, 2, 0)
    assert next(it)["inputs"].shape == (2, 32)
    assert it.get_state()["fingerprint"]["process_count"] == 1


@pytest.mark.parametrize("changes,field", [
    (dict(reasoning_weight=-0.1), "data.reasoning_weight"),
    (dict(text_weight=float("nan")), "data.text_weight"),
    (dict(reasoning_weight=0, text_weight=0), "data.reasoning_weight"),
    (dict(text_paths=("/no/such/dir",)), r"data\.text_paths: /no/such/dir does not exist"),
    (dict(text_extensions=("py",)), "data.text_extensions"),
    (dict(text_max_files=0), "data.text_max_files"),
    (dict(text_eval_fraction=1.5), "data.text_eval_fraction"),
    (dict(tokenizer="/no/tokenizer.json"), "data.tokenizer"),
    (dict(shuffle_seed=-1), "data.shuffle_seed"),
    (dict(num_workers=-1), "data.num_workers"),
    (dict(document_aware="yes"), "data.document_aware"),
])
def test_config_errors_name_the_field(changes, field):
    cfg = DataConfig(**changes)
    with pytest.raises(ValueError, match=field):
        cfg.validate()
    with pytest.raises(ValueError, match=field):
        make_train_iterator(cfg, TOK, 32, 2, 0, 0, 1)


def test_shape_errors_name_the_field(tmp_path):
    cfg = DataConfig(text_weight=0)
    with pytest.raises(ValueError, match=r"train\.global_batch: 6 is not divisible"):
        make_train_iterator(cfg, TOK, 32, 6, 0, process_index=0, process_count=4)
    with pytest.raises(ValueError, match=r"train\.seq_len: 4096 exceeds"):
        make_train_iterator(cfg, TOK, 4096, 2, 0, 0, 1, max_seq_len=2048)
    with pytest.raises(ValueError, match=r"train\.seq_len"):
        make_train_iterator(cfg, TOK, 0, 2, 0, 0, 1)
    with pytest.raises(ValueError, match="process_index"):
        make_train_iterator(cfg, TOK, 32, 2, 0, process_index=2, process_count=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"data\.text_paths: no matching files"):
        make_train_iterator(DataConfig(text_paths=(str(empty),)), TOK, 32, 2, 0, 0, 1)


def test_config_dict_round_trip(tmp_path):
    cfg = DataConfig(text_paths=(str(tmp_path),), reasoning=ReasoningTaskConfig.preset("hard"), shuffle_seed=3)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert DataConfig.from_dict(data) == cfg
    assert DataConfig.from_dict({"reasoning": {"max_steps": 5}}).reasoning.max_steps == 5
    assert DataConfig(text_paths=str(tmp_path)).text_paths == (str(tmp_path),)
    with pytest.raises(ValueError, match=r"data: unknown field"):
        DataConfig.from_dict({"text_path": "x"})
    assert DataConfig().weights == pytest.approx((0.7, 0.3))
