"""Token losses: masked cross-entropy for pretraining and forward KL for distillation (fp32 log-softmax).

`cross_entropy` / `kl_forward` take logits. The training steps use `head_losses` instead: it takes each model's
lm_head input and weight (`Head`, from `head_of`) and forms the logits one sequence chunk at a time, for the
teacher and every student together, under a rematerialised scan. So [batch, length, vocab] fp32 logits never
exist for the whole sequence (at the Nano shape one model's are 32 GiB), and with a mesh every chunk's logits
are split by batch rows (vocabulary over the tensor axis) instead of following the lm_head weight's layout.
The per-token values are the same; only the order of the sums over tokens changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from elastic_jax.distributed import logical_sharding
from elastic_jax.model.linear import Linear, matmul

# Per device, the fp32 logits of one model for one chunk stay below this (the automatic chunk length).
LOGITS_CHUNK_BYTES = 512 * 1024**2


def _token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _token_kl(teacher_logits: jax.Array, student_logits: jax.Array, temperature: float) -> jax.Array:
    t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
    s = student_logits.astype(jnp.float32) / temperature
    log_pt = jax.nn.log_softmax(t, axis=-1)
    log_ps = jax.nn.log_softmax(s, axis=-1)
    return jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean loss over masked tokens, number of masked tokens) for logits [b, L, V] and int targets [b, L]."""
    mask = mask.astype(jnp.float32)
    tokens = mask.sum()
    return (_token_nll(logits, targets) * mask).sum() / jnp.maximum(tokens, 1.0), tokens


def kl_forward(teacher_logits: jax.Array, student_logits: jax.Array, mask: jax.Array,
               temperature: float = 1.0) -> jax.Array:
    """Mean over masked tokens of KL(teacher || student) of the temperature-softened distributions.

    Forward KL makes the student cover the teacher's mass; the teacher receives no gradient. The value is
    not rescaled by temperature**2 (do that at the call site if wanted).
    """
    mask = mask.astype(jnp.float32)
    return (_token_kl(teacher_logits, student_logits, temperature) * mask).sum() / jnp.maximum(mask.sum(), 1.0)


@dataclasses.dataclass(frozen=True)
class Head:
    """A model's read-out before it happens: lm_head input x [b, L, H] and kernel [H, V], computed in `dtype`
    (logits = x @ kernel in that dtype, then fp32, as the model's lm_head computes them)."""

    x: jax.Array
    kernel: jax.Array
    dtype: Any
    cpu_backward: bool = False  # the lm_head's target takes the CPU's weight gradient (model/linear.py)


def head_of(model: nn.Module, params: dict, inputs: jax.Array, **kwargs: Any) -> Head:
    """The `Head` of `model.apply({"params": params}, inputs, **kwargs)`: the forward pass up to the lm_head,
    whose input is captured; the logits are not computed (a zero placeholder stands in for them)."""
    captured: list[tuple[jax.Array, Any]] = []

    def grab(next_fun, args, call_kwargs, context):
        module = context.module
        if isinstance(module, Linear) and module.name == "lm_head" and context.method_name == "__call__":
            captured.append((args[0], module.dtype, module.target.cpu_backward))
            return jnp.zeros((*args[0].shape[:-1], module.features), module.dtype)
        return next_fun(*args, **call_kwargs)

    with nn.intercept_methods(grab):
        model.apply({"params": params}, inputs, **kwargs)
    if len(captured) != 1:
        raise AssertionError(f"expected one lm_head call in the forward pass, saw {len(captured)}")
    x, dtype, cpu_backward = captured[0]
    return Head(x, params["lm_head"]["kernel"], dtype, cpu_backward)


def auto_chunk(rows_per_device: int, seq_len: int, vocab: int, limit: int = LOGITS_CHUNK_BYTES) -> int:
    """The longest sequence chunk (a divisor of seq_len) whose fp32 logits per device stay within `limit`."""
    fitting = [c for c in range(1, seq_len + 1) if seq_len % c == 0 and rows_per_device * c * vocab * 4 <= limit]
    return max(fitting, default=1)


def _constrain(x: jax.Array, mesh: Any, axes: tuple[str | None, ...]) -> jax.Array:
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, logical_sharding(mesh, axes, x.shape))


def _logits(x: jax.Array, kernel: jax.Array, head: Head, mesh: Any) -> jax.Array:
    x = _constrain(x, mesh, ("batch", None, None))
    logits = matmul(x.astype(head.dtype), kernel, "input", cpu_backward=head.cpu_backward)
    return _constrain(logits.astype(jnp.float32), mesh, ("batch", None, "vocab"))


def head_losses(teacher: Head | jax.Array | None, students: Sequence[Head], targets: jax.Array, mask: jax.Array,
                *, temperature: float = 1.0, with_ce: bool = True, chunk: int | None = None, mesh: Any = None
                ) -> tuple[list[jax.Array], list[jax.Array], jax.Array]:
    """(per-student KL(teacher || student), per-student cross-entropy, masked token count), each loss the mean
    over masked tokens, as `kl_forward` / `cross_entropy` of the full logits would give.

    `teacher`: a Head, precomputed logits [b, L, V], or None (no distillation: the KL list is empty). The
    logits are formed `chunk` positions of the sequence at a time (a divisor of L; None: all at once); with
    more than one chunk the scan body is rematerialised, so the backward pass re-forms one chunk at a time.
    """
    b, length = mask.shape
    chunk = length if chunk is None else chunk
    if chunk < 1 or length % chunk:
        raise ValueError(f"loss chunk {chunk} must be a positive divisor of the sequence length {length}")
    n = length // chunk
    t_head = teacher if isinstance(teacher, Head) else None
    kernels = ([t_head.kernel.astype(t_head.dtype)] if t_head else []) + [s.kernel.astype(s.dtype) for s in students]
    if mesh is not None:  # FSDP: gather each read-out weight once (rows whole), not per chunk
        kernels = [_constrain(k, mesh, (None, "vocab")) for k in kernels]
    t_seq = None if teacher is None else (t_head.x if t_head else teacher)
    seqs = {"t": t_seq, "s": [s.x for s in students], "targets": targets, "mask": mask.astype(jnp.float32)}
    split = jax.tree.map(lambda a: a.reshape(b, n, chunk, *a.shape[2:]).swapaxes(0, 1), seqs)

    def body(kernels: list[jax.Array], xs: dict) -> jax.Array:
        """[2, students]: masked sums of the KL and the NLL over one chunk."""
        ks = list(kernels)
        t_logits = None
        if xs["t"] is not None:
            t_logits = _logits(xs["t"], ks.pop(0), t_head, mesh) if t_head else xs["t"]
            t_logits = jax.lax.stop_gradient(t_logits)
        kd, ce = [], []
        for x, k, s in zip(xs["s"], ks, students, strict=True):
            logits = _logits(x, k, s, mesh)
            zero = jnp.zeros((), jnp.float32)
            kd.append(zero if t_logits is None else (_token_kl(t_logits, logits, temperature) * xs["mask"]).sum())
            ce.append((_token_nll(logits, xs["targets"]) * xs["mask"]).sum() if with_ce else zero)
        return jnp.stack([jnp.stack(kd), jnp.stack(ce)])

    if n == 1:
        sums = body(kernels, jax.tree.map(lambda a: a[0], split))
    else:
        step = jax.checkpoint(body)
        sums = jax.lax.scan(lambda acc, xs: (acc + step(kernels, xs), None),
                            jnp.zeros((2, len(students)), jnp.float32), split)[0]
    tokens = seqs["mask"].sum()
    means = sums / jnp.maximum(tokens, 1.0)
    kd = [] if teacher is None else [means[0, i] for i in range(len(students))]
    ce = [means[1, i] for i in range(len(students))] if with_ce else []
    return kd, ce, tokens


def loss_chunk(shape: tuple[int, int], vocab: int, mesh: Any = None, chunk: int = 0) -> int:
    """`chunk` if set, else the automatic chunk length for a [batch, length] batch split by rows over `mesh`."""
    if chunk:
        return chunk
    rows = shape[0]
    if mesh is not None:
        rows = int(logical_sharding(mesh, ("batch", None), shape).shard_shape(tuple(shape))[0])
    return auto_chunk(rows, shape[1], vocab)
