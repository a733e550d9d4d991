"""A ~1B-parameter dense hybrid (Mamba-2, attention and MLP blocks, Nemotron-H's layout): the GPU MFU benchmark's
model (benchmarks/gpu_suite.py), bf16 compute."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # 35 layers (1.00B parameters) as Nemotron-H interleaves them: Mamba-2 and MLP in turns, one attention per seven.
    config.model = ml_collections.ConfigDict(dict(
        vocab_size=264, hidden_size=2048, pattern="M-M-M*-M-M-M*-M-M-M*-M-M-M*-M-M-M*-",
        mamba_num_heads=64, mamba_head_dim=64, mamba_n_groups=8, ssm_state_size=128, conv_kernel=4, chunk_size=128,
        time_step_limit=(0.001, "inf"),
        num_attention_heads=16, num_key_value_heads=4, head_dim=128,
        intermediate_size=8192,
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=1024, moe_shared_expert_intermediate_size=1024,
        routed_scaling_factor=1.0, n_group=1, topk_group=1, norm_topk_prob=True,
        max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        compute_dtype="bfloat16",
    ))
    config.train = ml_collections.ConfigDict(dict(
        seed=0, seq_len=2048, global_batch=8, total_steps=1000, schedule_steps=0, lr=3e-4, warmup_steps=100,
        min_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0,
        log_every=20, eval_every=500, eval_batches=4, eval_prompts=64, eval_max_new_tokens=48,
        data_loading="per_process", progress_bar=True,
    ))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1))
    return config
