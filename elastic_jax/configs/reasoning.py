"""Reasoning parent: a ~1M-parameter model of the tiny family (M * E -) trained only on the "chain" preset
(4-8 additions/subtractions mod 10), where the answer needs the thinking trace. The elastic budget-control
experiment's parent (configs/reasoning_elastic.py elastifies it; docs/inference.md has the commands)."""

import ml_collections

from elastic_jax.data.reasoning import PRESETS


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        vocab_size=264, hidden_size=128, pattern="M*EM-E",
        mamba_num_heads=8, mamba_head_dim=16, mamba_n_groups=2, ssm_state_size=16, conv_kernel=4, chunk_size=32,
        time_step_limit=(0.001, "inf"),
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        intermediate_size=256,
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=128, moe_shared_expert_intermediate_size=128,
        routed_scaling_factor=1.0, n_group=1, topk_group=1, norm_topk_prob=True,
        max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        compute_dtype="float32",
    ))
    # A full trace is 23-47 tokens (6 per step), so evaluation generates up to 64. The warmup + cosine schedule is
    # laid out over 1200 steps and the run stops at 900 (96% held-out accuracy there; about 35 minutes on the shared
    # 2-core VM, 1.5 minutes on one H100): 1200 steps reach 100%.
    config.train = ml_collections.ConfigDict(dict(
        seed=0, seq_len=256, global_batch=16, total_steps=900, schedule_steps=1200, lr=3e-3, warmup_steps=50,
        min_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0,
        log_every=20, eval_every=300, eval_batches=4, eval_prompts=128, eval_max_new_tokens=64,
        data_loading="per_process", progress_bar=True,
    ))
    # Only the reasoning task: no text mixed in.
    config.data = ml_collections.ConfigDict(dict(
        reasoning_weight=1.0, text_weight=0.0, text_paths=(), text_extensions=(".py", ".txt", ".md"),
        text_max_files=None, text_eval_fraction=0.02, tokenizer="byte", shuffle_seed=None, num_workers=0,
        reasoning=dict(**PRESETS["chain"], eval_fraction=0.1, seed=0),
    ))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1))
    config.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=300, max_to_keep=2, async_save=True, chunk_pieces=16, min_chunk_bytes=4096))
    return config
