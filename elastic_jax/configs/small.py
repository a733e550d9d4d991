"""Small model (~60M parameters): the same pattern family, trainable on a CPU in minutes."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        vocab_size=264, hidden_size=512, pattern="MEM*EMEM*EM-",
        mamba_num_heads=16, mamba_head_dim=64, mamba_n_groups=4, ssm_state_size=64, conv_kernel=4, chunk_size=128,
        time_step_limit=(0.001, "inf"),
        num_attention_heads=8, num_key_value_heads=2, head_dim=64,
        intermediate_size=1536,
        n_routed_experts=16, num_experts_per_tok=4, moe_intermediate_size=512, moe_shared_expert_intermediate_size=1024,
        routed_scaling_factor=2.5, n_group=1, topk_group=1, norm_topk_prob=True,
        max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        compute_dtype="float32",
    ))
    # Optimisation, batch shape, logging and evaluation (elastic_jax/experiment.py: TrainConfig).
    config.train = ml_collections.ConfigDict(dict(
        seed=0, seq_len=512, global_batch=32, total_steps=5000, schedule_steps=0, lr=1e-3, warmup_steps=200,
        min_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0,
        log_every=20, eval_every=500, eval_batches=8, eval_prompts=256, eval_max_new_tokens=48,
        data_loading="per_process", progress_bar=True,
    ))
    # Built-in data: the synthetic reasoning task ("medium" preset) mixed with the Python standard library's source
    # (elastic_jax/data/config.py: DataConfig). text_paths=() means the stdlib; point it at your own text.
    config.data = ml_collections.ConfigDict(dict(
        reasoning_weight=0.7, text_weight=0.3, text_paths=(), text_extensions=(".py", ".txt", ".md"),
        text_max_files=None, text_eval_fraction=0.02, tokenizer="byte", shuffle_seed=None, num_workers=0,
        reasoning=dict(min_steps=2, max_steps=4, max_operand=20, ops="+-*", modulus=100, eval_fraction=0.1, seed=0),
    ))
    # Device mesh: one -1 axis takes the remaining devices (elastic_jax/distributed.py).
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1))
    # Checkpoints in <workdir>/checkpoints (elastic_jax/checkpoint.py).
    config.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=500, max_to_keep=3, async_save=True, chunk_pieces=16, min_chunk_bytes=65536))
    return config
