"""Tiny model: every block type (M * E -), runs in seconds on a CPU. Used by tests and the quickstart."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        vocab_size=264, hidden_size=64, pattern="M*EM-E",
        mamba_num_heads=4, mamba_head_dim=16, mamba_n_groups=2, ssm_state_size=16, conv_kernel=4, chunk_size=32,
        time_step_limit=(0.0, "inf"),
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=128,
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, moe_shared_expert_intermediate_size=64,
        routed_scaling_factor=1.0, n_group=1, topk_group=1, norm_topk_prob=True,
        max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        compute_dtype="float32",
    ))
    return config
