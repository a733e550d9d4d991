"""What a program is compiled for: its platform, and how a cached one-token step reads its weights.

The model is built for one `CompileTarget` (`model.functional.build(cfg, target=...)`) and its modules read only
that object, never the default backend or a context variable, so a GPU plan traced on CPU stand-in devices is the
GPU program. The platform picks the forms that are fastest there: on the CPU the Linear's weight gradient with the
transpose XLA:CPU handles well (model/linear.py), the expert block loop (model/experts_looped.py), the padded
all-to-all of expert parallelism, the short SSD chunk; on GPU and TPU plain autodiff, `lax.ragged_dot`,
`lax.ragged_all_to_all`, the Pallas kernels. `decode` says how a cached step of one token reads its weights:
- "xla": plain XLA products (any platform, any batch);
- "views": decode views (model/decode_views.py: per-expert arrays, the fused Mamba input projection) that the
  program builds once per call and passes as the variable collection `decode_views`;
- "kernels": the products of a single float32 row (or of up to `decode_rows` rows: a verification pass), the
  routed experts read in place, the queries' attention over the cache and the Mamba state update as
  `DecodeKernels` (the CPU's are kernels/cpu_gemv).
`step_states` asks a cached pass of several tokens to keep every position's Mamba conv window and SSM state (the
recurrence run token by token, the products over all the tokens at once), so that a caller can return to the
state after any of them (speculative decoding's verification, inference/speculative.py).
The decode programs choose the target (inference/programs.py: `decode_target`); training and plans use a
platform's plain target.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

PLATFORMS = ("cpu", "gpu", "tpu")
DECODES = ("xla", "views", "kernels")


@dataclasses.dataclass(frozen=True)
class DecodeKernels:
    """Batch-1 float32 decode kernels (signatures of kernels/cpu_gemv/api.py):
    products(x [..., K] a few rows, [w_i [K, N_i]]) -> (x @ w_i, ...);
    experts(x [T, K] or [T, J, K], w [E, K, N], ids [T, J]) -> [T, J, N] (token t's J experts; x [T, K]: a
    token's row for each of its experts, x [T, J, K]: one row per pick);
    attention(q [L, kv, g, d], k, v [L, kv, d], key_cache, value_cache [1, S, kv, d], pos, scale) -> (out, keys,
    values) for L queries at positions pos..pos+L-1;
    ssm_step(state, x [h, p], dt, a, d [h], b, c [g, n]) -> (y [h, p], new state)."""

    products: Callable
    experts: Callable
    attention: Callable
    ssm_step: Callable


@dataclasses.dataclass(frozen=True)
class CompileTarget:
    """platform: 'cpu', 'gpu' or 'tpu'; host_devices: compiled on CPU devices standing in for `platform` (a
    plan); decode: one of DECODES; kernels: the DecodeKernels when decode is "kernels"; sequences: > 0 when the
    program runs the model under `vmap`, one sequence at a time, over that many sequences (the engine's
    programs): what a MoE layer sees is one sequence, the strategy is chosen for all of them; step_states: a cached
    pass returns each Mamba layer's conv window and SSM state after every one of its tokens (CONV [batch, length,
    K-1, channels], SSM [batch, length, heads, head_dim, state]) instead of the last ones; decode_rows: the most
    rows (tokens of one sequence) a call computes on the decode kernels (1: a decode step; k+1: the verification
    of k drafted tokens)."""

    platform: str = "cpu"
    host_devices: bool = False
    decode: str = "xla"
    kernels: DecodeKernels | None = None
    sequences: int = 0
    step_states: bool = False
    decode_rows: int = 1

    def __post_init__(self):
        if self.platform not in PLATFORMS:
            raise ValueError(f"CompileTarget.platform: {self.platform!r}; allowed: {list(PLATFORMS)}")
        if self.decode not in DECODES:
            raise ValueError(f"CompileTarget.decode: {self.decode!r}; allowed: {list(DECODES)}")
        if (self.decode == "kernels") != (self.kernels is not None):
            raise ValueError("CompileTarget.kernels: give DecodeKernels exactly when decode is 'kernels'")
        if isinstance(self.sequences, bool) or not isinstance(self.sequences, int) or self.sequences < 0:
            raise ValueError(f"CompileTarget.sequences: an integer >= 0, got {self.sequences!r}")
        if not isinstance(self.step_states, bool):
            raise ValueError(f"CompileTarget.step_states: True or False, got {self.step_states!r}")
        if isinstance(self.decode_rows, bool) or not isinstance(self.decode_rows, int) or self.decode_rows < 1:
            raise ValueError(f"CompileTarget.decode_rows: an integer >= 1, got {self.decode_rows!r}")

    @property
    def cpu_backward(self) -> bool:
        """The Linear's weight gradient in the layout XLA:CPU transposes cheaply (only for CPU programs)."""
        return self.platform == "cpu"

    @property
    def expert_loop(self) -> bool:
        """Grouped experts as the block loop: XLA:CPU lowers `ragged_dot` to a dense product over every expert, on
        CPU stand-in devices the loop's rows size the memory as a GPU's grouped GEMM holds them, and under vmap
        the loop batches where `ragged_dot` has no rule."""
        return self.platform == "cpu" or self.host_devices or self.sequences > 0

    @property
    def ragged_exchange(self) -> bool:
        """Expert-parallel rows travel with `lax.ragged_all_to_all` (GPU / TPU); XLA:CPU, and so CPU stand-in
        devices, have none, and get `lax.all_to_all` with dropless padded slots (model/expert_parallel.py)."""
        return self.platform != "cpu" and not self.host_devices

    @property
    def views(self) -> bool:
        return self.decode == "views"

    def row_kernels(self, x: jax.Array, dtype=jnp.float32) -> DecodeKernels | None:
        """The decode kernels when they apply to `x` [..., K]: at most `decode_rows` float32 rows computed in
        float32."""
        if self.kernels is None or x.dtype != jnp.float32 or jnp.dtype(dtype) != jnp.float32:
            return None
        return self.kernels if math.prod(x.shape[:-1]) <= self.decode_rows else None


def local_target() -> CompileTarget:
    """The plain target of this process's default devices (what a program built without a target runs on)."""
    return CompileTarget(platform=jax.default_backend())


__all__ = ["DECODES", "PLATFORMS", "CompileTarget", "DecodeKernels", "local_target"]
