"""Tiny model: every block type (M * E -), runs in seconds on a CPU. Used by tests and the quickstart."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        vocab_size=264, hidden_size=64, pattern="M*EM-E",
        mamba_num_heads=4, mamba_head_dim=16, mamba_n_groups=2, ssm_state_size=16, conv_kernel=4, chunk_size=32,
        time_step_limit=(0.001, "inf"),
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=128,
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, moe_shared_expert_intermediate_size=64,
        routed_scaling_factor=1.0, n_group=1, topk_group=1, norm_topk_prob=True,
        max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        compute_dtype="float32",
    ))
    # Optimisation, batch shape, logging and evaluation (elastic_jax/experiment.py: TrainConfig).
    config.train = ml_collections.ConfigDict(dict(
        seed=0, seq_len=128, global_batch=16, total_steps=600, schedule_steps=0, lr=3e-3, warmup_steps=50,
        min_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0,
        log_every=10, eval_every=200, eval_batches=4, eval_prompts=128, eval_max_new_tokens=24,
        data_loading="per_process", progress_bar=True,
    ))
    # Built-in data: the synthetic reasoning task ("easy" preset) mixed with the Python standard library's source
    # (elastic_jax/data/config.py: DataConfig). text_paths=() means the stdlib; point it at your own text.
    config.data = ml_collections.ConfigDict(dict(
        reasoning_weight=0.7, text_weight=0.3, text_paths=(), text_extensions=(".py", ".txt", ".md"),
        text_max_files=None, text_eval_fraction=0.02, tokenizer="byte", shuffle_seed=None, num_workers=0,
        reasoning=dict(min_steps=1, max_steps=2, max_operand=9, ops="+-*", modulus=100, eval_fraction=0.1, seed=0),
    ))
    # Device mesh: one -1 axis takes the remaining devices (elastic_jax/distributed.py).
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1))
    # Checkpoints in <workdir>/checkpoints (elastic_jax/checkpoint.py).
    config.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=100, max_to_keep=3, async_save=True, chunk_pieces=16, min_chunk_bytes=4096))
    return config
