"""Random tiny configs and parameters shared by model and conversion tests."""

from __future__ import annotations

import jax
import numpy as np

from elastic_jax import ModelConfig, init_params

# Three tiny configs covering all four block types, B/C groups > 1, group-limited routing and chunking.
PARITY_CONFIGS = {
    "all_blocks": ModelConfig(vocab_size=96, hidden_size=32, pattern="M*E-", mamba_num_heads=4, mamba_head_dim=8,
                              mamba_n_groups=2, ssm_state_size=8, chunk_size=8, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=8, intermediate_size=48, n_routed_experts=8,
                              num_experts_per_tok=2, moe_intermediate_size=16, moe_shared_expert_intermediate_size=24,
                              routed_scaling_factor=2.5),
    "grouped_routing": ModelConfig(vocab_size=80, hidden_size=48, pattern="ME*EM-", mamba_num_heads=6, mamba_head_dim=8,
                                   mamba_n_groups=3, ssm_state_size=4, chunk_size=4, num_attention_heads=6,
                                   num_key_value_heads=3, head_dim=8, intermediate_size=32, n_routed_experts=8,
                                   num_experts_per_tok=3, n_group=4, topk_group=2, moe_intermediate_size=16,
                                   moe_shared_expert_intermediate_size=16, norm_topk_prob=False),
    "deep_mqa": ModelConfig(vocab_size=64, hidden_size=24, pattern="MM*-E*M", mamba_num_heads=2, mamba_head_dim=12,
                            mamba_n_groups=1, ssm_state_size=6, chunk_size=16, conv_kernel=3, num_attention_heads=3,
                            num_key_value_heads=1, head_dim=8, intermediate_size=40, n_routed_experts=6,
                            num_experts_per_tok=2, n_group=2, topk_group=1, moe_intermediate_size=12,
                            moe_shared_expert_intermediate_size=20, routed_scaling_factor=1.5),
}


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """init_params, then every array perturbed so routing biases, A_log, D and norms are all non-trivial."""
    params = init_params(cfg, seed)
    rng = np.random.default_rng(seed + 1)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    scaled = []
    for leaf in leaves:
        leaf = np.asarray(leaf)
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        scaled.append(leaf + noise * max(0.05, float(np.std(leaf)) * 0.5))
    params = jax.tree_util.tree_unflatten(treedef, scaled)
    # larger embeddings and readout give logits of order 1
    params["embeddings"]["embedding"] = params["embeddings"]["embedding"] * 20
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 10
    return params


def random_tokens(cfg: ModelConfig, batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, length)).astype(np.int32)
