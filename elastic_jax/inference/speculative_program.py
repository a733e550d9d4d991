"""The compiled program of nested self-speculative decoding (speculative.py is its API): a draft budget proposes k
tokens, the target budget checks them in one pass over k+1 positions, every round inside one `lax.while_loop`.

Between rounds each row's two caches hold its text except the last token (`last`, not yet fed). A round:
1. the draft feeds `last` and its own proposals one at a time, k steps, drafting d_1..d_k from q_1..q_k and keeping
   its Mamba states after each step (a draft that had every token accepted last round first feeds that round's
   d_k, the one token it had not fed: `catch_up`);
2. the target feeds [last, d_1..d_k] in one pass (products over the k+1 tokens together, the Mamba recurrence step
   by step keeping every position's conv window and SSM state: CompileTarget.step_states) and gets p_1..p_{k+1};
3. d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)) (greedy: when it is the target's argmax) until the
   first rejection j+1, where a token is drawn from norm(max(0, p - q)) (greedy: the target's argmax); when all k
   are accepted a bonus token comes from p_{k+1} (Leviathan et al. 2023: the output follows the target's
   distribution, and greedy output is the target's own greedy text);
4. both caches return to the state after d_j: Mamba layers take their kept state of that position, attention K/V
   roll back by length (the position; what lies beyond is overwritten before any query can see it).
The parent's weights are the only ones passed in; both budgets are cut from them inside the program.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from elastic_jax.config import ModelConfig
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.inference.programs import _cut, _hold, _rows, _single_step, decode_target
from elastic_jax.inference.slot_programs import filter_row
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.cache import BY_POSITION
from elastic_jax.model.functional import build


def _states(cache: dict) -> list:
    """The leaves of a cache that are not indexed by position (Mamba conv windows and SSM states)."""
    return [None if layer is None else {key: v for key, v in layer.items() if key not in BY_POSITION}
            for layer in cache["layers"]]


def _with_states(cache: dict, states: list, pos: jax.Array) -> dict:
    """`cache` with its Mamba leaves replaced by `states` and its position set to `pos`."""
    layers = [None if layer is None else {**layer, **state} for layer, state in zip(cache["layers"], states)]
    return {"pos": pos, "layers": layers}


def _pick(tree, index: jax.Array, axis: int):
    return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, index, axis, keepdims=False), tree)


def row_probs(logits: jax.Array, settings: tuple) -> jax.Array:
    """The distributions [n, V] one row samples from, logits [n, V] under its traced (temperature, top_k, top_p):
    one-hot on the argmax where the temperature is 0 (greedy), so that the accept / resample rule below gives
    greedy decoding's tokens exactly."""
    temperature, top_k, top_p = settings
    filtered = jax.vmap(filter_row, in_axes=(0, None, None, None))(logits, temperature, top_k, top_p)
    greedy = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    return jnp.where(temperature > 0, jax.nn.softmax(filtered, axis=-1), greedy)


def make_round(cfg: ModelConfig, target_spec: ElasticSpec, draft_spec: ElasticSpec, k: int,
               draft_target: CompileTarget, verify_target: CompileTarget) -> tuple[Callable, Callable]:
    """(variables(parent) -> (draft variables, target variables), round(variables, carry, key, room, stops,
    settings) -> (carry, emitted [k+1], kept n, accepted j)) for ONE row (caches of batch 1); carry = (draft cache,
    target cache, last, prev, catch_up); stops [S] (-1: none); settings = the row's (temperature, top_k, top_p),
    traced. The draft steps are built for `draft_target`, the verification pass for `verify_target`
    (inference/programs.py `decode_target`: k+1 tokens keeping every position's Mamba state)."""
    draft_vars, draft_step = _single_step(cfg, draft_spec, draft_target)
    verifier, target_cut = build(target_spec.apply_to(cfg), target=verify_target), _cut(cfg, target_spec)

    def variables(parent):
        return draft_vars(parent), {"params": target_cut(parent)}

    def draft(dvars, cache, last, keys, settings):
        def body(carry, key):
            tok, cache = carry
            logits, cache = draft_step(dvars, tok, cache)
            q = row_probs(logits[None], settings)[0]
            new = jax.random.categorical(key, jnp.log(q)).astype(jnp.int32)
            return (new, cache), (new, q, _states(cache))
        (_, cache), (drafts, qs, states) = jax.lax.scan(body, (last, cache), keys)
        return cache, drafts, qs, states

    def accept(logits, drafts, qs, key, settings):
        """(accepted count j, the token after them) from the target's logits [k+1, V]: d_i is accepted while
        u < p(d_i) / q(d_i); at the first rejection a token comes from norm(max(0, p - q)), after k acceptances
        the bonus from p_{k+1}."""
        u_key, r_key = jax.random.split(key)
        p = row_probs(logits, settings)
        at = jnp.arange(k)
        ok = jax.random.uniform(u_key, (k,)) * qs[at, drafts] < p[at, drafts]  # u < p / q
        j = jnp.sum(jnp.cumprod(ok.astype(jnp.int32)))
        q_next = jnp.concatenate([qs, jnp.zeros_like(qs[:1])])[j]  # after k acceptances: p itself (the bonus)
        resid = jnp.maximum(p[j] - q_next, 0.0)
        resid = jnp.where(jnp.sum(resid) > 0, resid, p[j])  # p == q up to rounding: rejection had no mass
        return j, jax.random.categorical(r_key, jnp.log(resid)).astype(jnp.int32)

    def round_(variables, carry, key, room, stops, settings):
        """One round; at most `room` (>= 1) tokens are kept, ending at the first of `stops`: (carry, emitted [k+1],
        kept count n, accepted drafts j). The caches return to the text up to the kept tokens but the last."""
        dvars, tvars = variables
        dcache, tcache, last, prev, catch_up = carry
        dcache = jax.lax.cond(catch_up, lambda c: draft_step(dvars, prev, c)[1], lambda c: c, dcache)
        keys = jax.random.split(key, k + 1)
        dcache, drafts, qs, dstates = draft(dvars, dcache, last, keys[:k], settings)
        tokens = jnp.concatenate([last[None], drafts])
        logits, verified = verifier.apply(tvars, tokens[None], tcache)
        j, nxt = accept(logits[0], drafts, qs, keys[k], settings)
        at = jnp.arange(k + 1)
        emitted = jnp.where(at < j, jnp.concatenate([drafts, drafts[-1:]]), nxt)
        stop = (at <= j) & jnp.isin(emitted, stops)
        n = jnp.where(jnp.any(stop), jnp.argmax(stop) + 1, j + 1)
        n = jnp.minimum(n, room)
        kept = n - 1  # drafts behind the kept text's last token: the caches take the state after d_kept
        tcache = _with_states(verified, _pick(_states(verified), kept, 1), tcache["pos"] + kept + 1)
        fed = jnp.minimum(kept, k - 1)  # the draft fed last, d_1..d_{k-1}: its state after d_kept, or d_{k-1}
        dcache = _with_states(dcache, _pick(dstates, fed, 0), dcache["pos"] - k + fed + 1)
        carry = (dcache, tcache, emitted[kept], drafts[-1], kept == k)
        return carry, emitted, n, j

    return variables, round_


def make_rounds_loop(round_: Callable, rows: int, width: int, pad_id: int) -> Callable:
    """loop(variables, draft caches, target caches, last [B], keys [B], round0 [B], done [B], max_new [B],
    settings ([B] x 3), stops [B, S]) -> (tokens [B, width], counts [B], rounds [B], accepted [B], draft caches,
    target caches, last [B]): rounds until each row has `max_new` tokens (<= width - k - 1) or ended at one of its
    stops; rows done at the start take no part. Row r's round i samples with fold_in(keys[r], round0[r] + i)."""
    if rows > 1:
        step = jax.vmap(round_, in_axes=(None, 0, 0, 0, 0, 0))
    else:  # one row without vmap: the caches' row axis taken off and put back
        def step(variables, carry, key, room, stops, settings):
            one = jax.tree.map(lambda x: x[0], (carry, key, room, stops, settings))
            return jax.tree.map(lambda x: x[None], round_(variables, *one))

    def loop(variables, dcaches, tcaches, last, keys, round0, done, max_new, settings, stops):
        def body(state):
            carry, done, out, count, rounds, accepted = state
            round_keys = jax.vmap(jax.random.fold_in)(keys, round0 + rounds)
            room = jnp.maximum(max_new - count, 1)
            new, emitted, n, j = step(variables, carry, round_keys, room, stops, settings)
            carry = (*(_hold(done, a, b) for a, b in zip(new[:2], carry[:2])),
                     *(_rows(done, b, a) for a, b in zip(new[2:], carry[2:])))
            n = jnp.where(done, 0, n)
            out = jax.vmap(lambda o, e, c: jax.lax.dynamic_update_slice(o, e, (c,)))(out, emitted, count)
            last_kept = jnp.take_along_axis(emitted, jnp.maximum(n - 1, 0)[:, None], axis=1)
            ended = jnp.any(last_kept == stops, axis=1)
            live = (~done).astype(jnp.int32)
            done = done | (ended & (n > 0)) | (count + n >= max_new)
            return carry, done, out, count + n, rounds + live, accepted + live * j

        zeros = jnp.zeros((rows,), jnp.int32)
        carry = (dcaches, tcaches, last, last, jnp.zeros((rows,), bool))
        state = (carry, done | (max_new <= 0), jnp.full((rows, width), pad_id, jnp.int32), zeros, zeros, zeros)
        carry, _, out, count, rounds, accepted = jax.lax.while_loop(lambda s: ~jnp.all(s[1]), body, state)
        return out, count, rounds, accepted, carry[0], carry[1], carry[2]

    return loop


def make_speculative(cfg: ModelConfig, target_spec: ElasticSpec, draft_spec: ElasticSpec, rows: int, width: int,
                     k: int, pad_id: int, draft_target: CompileTarget, verify_target: CompileTarget) -> Callable:
    """jit(parent, draft caches, target caches, last [B], keys [B], round0 [B], max_new, temperature, top_k, top_p,
    stops [S]) -> (tokens [B, width], counts [B], rounds [B], accepted [B], draft caches, target caches, last [B]):
    up to `max_new` (traced, <= width - k - 1) tokens per row, a row ending at any of `stops` (-1: none); the
    sampling settings are traced, so one program serves every setting. The caches hold each row's text but its last
    token (module docstring) before and after. `rounds`, `accepted`: each row's rounds and accepted drafts (k
    drafted per round)."""
    variables_of, round_ = make_round(cfg, target_spec, draft_spec, k, draft_target, verify_target)
    loop = make_rounds_loop(round_, rows, width, pad_id)

    def run(parent, dcaches, tcaches, last, keys, round0, max_new, temperature, top_k, top_p, stops):
        per_row = [jnp.broadcast_to(v, (rows,)) for v in (max_new, temperature, top_k, top_p)]
        return loop(variables_of(parent), dcaches, tcaches, last, keys, round0, jnp.zeros((rows,), bool),
                    per_row[0], tuple(per_row[1:]), jnp.broadcast_to(stops, (rows, stops.shape[0])))

    return jax.jit(run, donate_argnums=(1, 2))


def make_speculative_rows(cfg: ModelConfig, target_spec: ElasticSpec, draft_spec: ElasticSpec, rows: int, k: int,
                          steps: int, pad_id: int) -> Callable:
    """A slot batch's rounds (inference/slots.py, a server's rows) over weights sliced once: jit(target weights,
    draft weights, target caches, draft caches, last [B], keys [B], round0 [B], done [B], max_new [B] (<= steps),
    temperature [B], top_k [B], top_p [B], stops [B, S]) -> (tokens [B, steps + k + 1], counts, rounds, accepted,
    draft caches, target caches, last), every setting a per-row array."""
    targets = (decode_target(rows, 0), decode_target(rows, 0, tokens=k + 1))
    _, round_ = make_round(cfg, target_spec, draft_spec, k, *targets)
    loop = make_rounds_loop(round_, rows, steps + k + 1, pad_id)

    def run(target_weights, draft_weights, tcaches, dcaches, last, keys, round0, done, max_new, temperature, top_k,
            top_p, stops):
        variables = ({"params": draft_weights}, {"params": target_weights})
        return loop(variables, dcaches, tcaches, last, keys, round0, done, max_new, (temperature, top_k, top_p), stops)

    return jax.jit(run, donate_argnums=(2, 3))


__all__ = ["make_round", "make_rounds_loop", "make_speculative", "make_speculative_rows", "row_probs"]
