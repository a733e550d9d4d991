"""A small parent trained in-process on structured synthetic data (session scope, shared by the elastic tests).

The data mixes a sparse first-order Markov chain (solvable from the last token) with sequences that repeat a
random motif (solvable only by looking back), so heads, channels, experts and layers acquire unequal roles
and importance has something to find. The training loop is a plain optax AdamW loop, independent of
elastic_jax.train.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from elastic_jax import ModelConfig, init_params
from elastic_jax.model.functional import build
from tests.compile_flags import compile_optimised

PARENT = ModelConfig(vocab_size=64, hidden_size=64, pattern="M*E-ME", mamba_num_heads=8, mamba_head_dim=8,
                     mamba_n_groups=2, ssm_state_size=16, chunk_size=16, num_attention_heads=8, num_key_value_heads=4,
                     head_dim=8, intermediate_size=96, n_routed_experts=8, num_experts_per_tok=2,
                     moe_intermediate_size=32, moe_shared_expert_intermediate_size=32, max_position_embeddings=256)
LENGTH, BATCH, STEPS, LR = 64, 32, 300, 1e-2


def _markov_table(rng: np.random.Generator, vocab: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Each token has three successors with probabilities 0.6 / 0.3 / 0.1."""
    succ = rng.integers(first, vocab, (vocab, 3))
    return succ, np.array([0.6, 0.3, 0.1])


def make_batches(seed: int, count: int, batch: int = BATCH, length: int = LENGTH, vocab: int = PARENT.vocab_size):
    """`count` deterministic [batch, length + 1] token arrays (inputs = [:, :-1], targets = [:, 1:])."""
    table, probs = _markov_table(np.random.default_rng(1234), vocab, first=4)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        seqs = np.empty((batch, length + 1), np.int32)
        half = batch // 2
        tok = rng.integers(4, vocab, half)
        picks = rng.choice(3, size=(half, length + 1), p=probs)
        for t in range(length + 1):  # Markov rows
            seqs[:half, t] = tok
            tok = table[tok, picks[:, t]]
        for b in range(half, batch):  # motif rows
            seqs[b] = np.resize(rng.integers(4, vocab, int(rng.integers(3, 9))), length + 1)
        out.append(seqs[rng.permutation(batch)])
    return out


def next_token_loss(logits: jax.Array, seqs: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, seqs[:, 1:, None], axis=-1))


@dataclasses.dataclass
class TrainedParent:
    cfg: ModelConfig
    params: dict
    calibration: list[np.ndarray]  # [batch, length] inputs for importance
    evaluation: list[np.ndarray]  # [batch, length + 1] held-out sequences
    final_loss: float
    seconds: float


def train_parent(cfg: ModelConfig = PARENT, steps: int = STEPS, seed: int = 0) -> TrainedParent:
    start = time.time()
    model = build(cfg)
    params = init_params(cfg, seed)
    schedule = optax.warmup_cosine_decay_schedule(0.0, LR, 20, steps, LR / 10)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    state = opt.init(params)

    @jax.jit
    def step(params, state, seqs):
        loss, grads = jax.value_and_grad(lambda p: next_token_loss(model.apply({"params": p}, seqs[:, :-1])[0],
                                                                   seqs))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    batches = make_batches(seed + 1, steps)  # fresh data every step: the copy task must be learned, not memorised
    step = compile_optimised(step, params, state, jnp.asarray(batches[0]))  # it runs 300 times
    loss = jnp.inf
    for seqs in batches:
        params, state, loss = step(params, state, jnp.asarray(seqs))
    calibration = [b[:, :-1] for b in make_batches(seed + 2, 4, batch=16)]
    evaluation = make_batches(seed + 3, 2)
    return TrainedParent(cfg, jax.device_get(params), calibration, evaluation, float(loss), time.time() - start)


def _save_trained_parent(path: Path) -> None:
    parent = train_parent()
    fields = {f.name: getattr(parent, f.name) for f in dataclasses.fields(parent) if f.name != "cfg"}
    (path / "parent.pkl").write_bytes(pickle.dumps(fields))


@pytest.fixture(scope="session")
def trained_parent(build_once) -> TrainedParent:
    """Trained once per test run (the first xdist worker to ask; the other loads its arrays)."""
    fields = pickle.loads((build_once("trained_parent", _save_trained_parent) / "parent.pkl").read_bytes())
    return TrainedParent(PARENT, **fields)


@dataclasses.dataclass
class RankedParent:
    parent: TrainedParent
    scores: dict
    ranking: dict
    permuted: dict  # parent params in importance order


@pytest.fixture(scope="session")
def ranked_parent(trained_parent: TrainedParent) -> RankedParent:
    from elastic_jax.elastic import permute_params, run_importance

    scores, ranking = run_importance(trained_parent.cfg, trained_parent.params, trained_parent.calibration)
    return RankedParent(trained_parent, scores, ranking,
                        permute_params(trained_parent.params, trained_parent.cfg, ranking))
