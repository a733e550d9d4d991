"""NVIDIA Nemotron 3 Nano 30B-A3B: the real shape (31.58B total, 3.58B active parameters)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        vocab_size=131072, hidden_size=2688,
        pattern="MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
        mamba_num_heads=64, mamba_head_dim=64, mamba_n_groups=8, ssm_state_size=128, conv_kernel=4, chunk_size=128,
        time_step_limit=(0.001, "inf"),
        num_attention_heads=32, num_key_value_heads=2, head_dim=128,
        intermediate_size=1856,  # no dense `-` layers in this pattern
        n_routed_experts=128, num_experts_per_tok=6, moe_intermediate_size=1856,
        moe_shared_expert_intermediate_size=3712, routed_scaling_factor=2.5, n_group=1, topk_group=1,
        norm_topk_prob=True, max_position_embeddings=262144, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        compute_dtype="bfloat16",
    ))
    # At this size every block is recomputed in the backward pass and the repeated layer groups run as scans
    # (14 layer bodies compiled instead of 52); neither changes the values (docs/training.md, docs/plan.md).
    config.train = ml_collections.ConfigDict(dict(remat="block", scan_layers=True))
    return config
