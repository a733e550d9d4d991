"""Small model (~60M parameters): the same pattern family, trainable on a CPU in minutes."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        vocab_size=264, hidden_size=512, pattern="MEM*EMEM*EM-",
        mamba_num_heads=16, mamba_head_dim=64, mamba_n_groups=4, ssm_state_size=64, conv_kernel=4, chunk_size=128,
        time_step_limit=(0.0, "inf"),
        num_attention_heads=8, num_key_value_heads=2, head_dim=64,
        intermediate_size=1536,
        n_routed_experts=16, num_experts_per_tok=4, moe_intermediate_size=512, moe_shared_expert_intermediate_size=1024,
        routed_scaling_factor=2.5, n_group=1, topk_group=1, norm_topk_prob=True,
        max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        compute_dtype="float32",
    ))
    return config
