"""Seeded random tiny configs: every block kind, B/C and KV groups, grouped routing, per-layer widths."""

from __future__ import annotations

import random

from elastic_jax import ModelConfig


def random_config(seed: int, max_layers: int = 6) -> ModelConfig:
    """A valid tiny config drawn from `seed` (a third of its width fields per layer)."""
    rng = random.Random(seed)
    layers = rng.randint(2, max_layers)
    pattern = "".join(rng.choice("ME*-") for _ in range(layers))
    groups, kv, routing = rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 2])
    experts = routing * rng.randint(2, 4)
    top_k = rng.randint(1, min(experts, 3))
    topk_group = 1 if routing == 1 else 2

    def width(base: int):
        if rng.random() < 0.3:
            return tuple(base * rng.randint(1, 3) for _ in range(layers))
        return base * rng.randint(1, 3)

    return ModelConfig(vocab_size=rng.randint(260, 300), hidden_size=rng.randint(4, 24), pattern=pattern,
                       mamba_num_heads=width(groups), mamba_head_dim=rng.randint(2, 6), mamba_n_groups=groups,
                       ssm_state_size=rng.randint(2, 6), conv_kernel=rng.randint(2, 4), chunk_size=4,
                       num_attention_heads=kv * rng.randint(1, 3), num_key_value_heads=kv, head_dim=rng.randint(2, 6),
                       intermediate_size=width(5), n_routed_experts=experts, num_experts_per_tok=top_k,
                       n_group=routing, topk_group=topk_group, moe_intermediate_size=width(3),
                       moe_shared_expert_intermediate_size=width(4))
