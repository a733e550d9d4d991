"""One declaration per weight: every parameter of every block type (M, *, E, -, embeddings, norms, head) has one
declaration, and slicing, permutation, sharding and Hugging Face conversion each follow it; a parameter
without a declaration makes each of them raise."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax import distributed
from elastic_jax.convert.hf_weights import from_hf_tensors, to_hf_tensors
from elastic_jax.elastic import ElasticSpec, permute_params, slice_params
from elastic_jax.elastic.permute import permute_array
from elastic_jax.elastic.slicing import kept_sizes, slice_array
from elastic_jax.model.declare import (
    ELASTIC_AXES,
    UndeclaredParamError,
    by_name,
    check_declared,
    declare,
    dim,
    elastic_axes_of,
    elastic_axis_size,
    leaves_by_path,
    linear,
)
from elastic_jax.model.hybrid import block_declarations, model_declarations
from elastic_jax.model.mlp import MLP
from tests.elastic.helpers import fast_random_params, random_ranking
from tests.model.helpers import PARITY_CONFIGS

CFG = PARITY_CONFIGS["grouped_routing"]  # every block type, B/C groups and routing groups > 1
SPEC = ElasticSpec(hidden_size=40, mamba_num_heads=3, num_attention_heads=3, intermediate_size=20,
                   moe_intermediate_size=10, moe_shared_expert_intermediate_size=12, attention_mode="query_heads")
SLICE_CFG = PARITY_CONFIGS["all_blocks"]  # ungrouped routing: experts can be cut
SLICE_SPECS = [ElasticSpec(hidden_size=20, mamba_num_heads=2, num_attention_heads=2, intermediate_size=30,
                           n_routed_experts=4, moe_intermediate_size=10, moe_shared_expert_intermediate_size=12,
                           attention_mode=mode) for mode in ("query_heads", "kv_groups")]
KIND_PARAMS = {  # what each block type must declare (paths below layers_<i>)
    "M": {"norm/weight", "mixer/in_z/kernel", "mixer/in_x/kernel", "mixer/in_B/kernel", "mixer/in_C/kernel",
          "mixer/in_dt/kernel", "mixer/conv_kernel", "mixer/conv_bias", "mixer/dt_bias", "mixer/A_log", "mixer/D",
          "mixer/norm/weight", "mixer/out_proj/kernel"},
    "*": {"norm/weight", "mixer/q_proj/kernel", "mixer/k_proj/kernel", "mixer/v_proj/kernel", "mixer/o_proj/kernel"},
    "E": {"norm/weight", "mixer/gate", "mixer/e_score_correction_bias", "mixer/up_proj", "mixer/down_proj",
          "mixer/shared_experts/up_proj/kernel", "mixer/shared_experts/down_proj/kernel"},
    "-": {"norm/weight", "mixer/up_proj/kernel", "mixer/down_proj/kernel"},
}


@pytest.fixture(scope="module")
def params():
    return ej.init_params(CFG, seed=0)


def test_every_initialised_parameter_has_exactly_its_declaration(params):
    decls = model_declarations(CFG)
    assert len({d.name for d in decls}) == len(decls)
    leaves = check_declared(params, decls, "test")  # same paths, declared shapes
    assert {"embeddings/embedding", "norm_f/weight", "lm_head/kernel"} <= set(leaves)
    for layer, kind in enumerate(CFG.pattern):
        assert {d.name for d in block_declarations(CFG, layer)} == KIND_PARAMS[kind], kind
    heads = {d.name: d for d in decls}["layers_0/mixer/in_x/kernel"]  # heads are named structure, not widths
    assert heads.dims[1].axes == ("mamba_groups", "mamba_group_heads", "mamba_head_dim")
    q = {d.name: d for d in decls}["layers_2/mixer/q_proj/kernel"]
    assert q.dims[1].axes == ("kv_heads", "q_per_kv", "head_dim")


def _prefix_oracle(x: np.ndarray, decl, keep: dict[str, int]) -> np.ndarray:
    """Slicing by boolean masks over the declared structure (an independent reading of the declaration)."""
    for i, d in enumerate(decl.dims):
        parts = []
        for seg in d.segments:
            shape = decl.segment_shape(seg)
            mask = np.ones((), bool)
            for a, n in zip(seg, shape):
                mask = np.multiply.outer(mask, np.arange(n) < keep.get(a, n))
            parts.append(mask.reshape(-1))
        x = np.compress(np.concatenate(parts), x, axis=i)
    return x


@pytest.mark.parametrize("spec", SLICE_SPECS, ids=lambda s: s.attention_mode)
def test_slicing_follows_each_declaration(spec):
    params = fast_random_params(SLICE_CFG, seed=2)
    sub, sub_cfg = slice_params(params, SLICE_CFG, spec)
    got = leaves_by_path(sub)
    assert check_declared(sub, model_declarations(sub_cfg), "sliced")  # the nested model's own declarations
    for decl in model_declarations(SLICE_CFG):
        layer = int(decl.path[0][len("layers_"):]) if decl.path[0].startswith("layers_") else None
        keep = kept_sizes(SLICE_CFG, spec, layer, block_declarations(SLICE_CFG, layer) if layer is not None else ())
        want = _prefix_oracle(np.asarray(leaves_by_path(params)[decl.name]), decl, keep)
        np.testing.assert_array_equal(np.asarray(got[decl.name]), want, err_msg=decl.name)


def _reversed(ea, sizes: tuple[int, ...]) -> np.ndarray:
    """The reversal an axis's structure allows: of everything, within each group, or of groups and within them."""
    order = np.arange(math.prod(sizes))[::-1]
    if len(sizes) == 2 and ea.groups == "fixed":
        order = order.reshape(sizes)[::-1].reshape(-1)
    return order


def test_permutation_moves_exactly_the_declared_dimensions():
    params = fast_random_params(CFG, seed=1)
    before = leaves_by_path(params)
    ranking = random_ranking(CFG, np.random.default_rng(0))
    for layer, kind in enumerate(CFG.pattern):
        decls = block_declarations(CFG, layer)
        for axis_name in elastic_axes_of(decls):
            order = _reversed(ELASTIC_AXES[axis_name], elastic_axis_size(decls, axis_name))
            one = {"layers": [{} for _ in CFG.pattern]}
            one["layers"][layer] = {axis_name: order}
            after = leaves_by_path(permute_params(params, CFG, one))
            holds = {f"layers_{layer}/{d.name}" for d in decls
                     if any(a in ELASTIC_AXES[axis_name].axes for dd in d.dims for a in dd.axes)}
            whole = {f"layers_{layer}/{d.name}" for d in decls  # a dimension holding all of the axis's structure
                     if any(set(ELASTIC_AXES[axis_name].axes) <= set(seg) for dd in d.dims for seg in dd.segments)}
            moved = {k for k in before if not np.array_equal(np.asarray(before[k]), np.asarray(after[k]))}
            assert whole <= moved <= holds, (kind, axis_name, moved, holds)
    after = leaves_by_path(permute_params(params, CFG, {"hidden": ranking["hidden"]}))
    for decl in model_declarations(CFG):
        axis = next((i for i, d in enumerate(decl.dims) if "embed" in d.axes), None)
        want = before[decl.name] if axis is None else np.take(before[decl.name], ranking["hidden"], axis=axis)
        np.testing.assert_array_equal(np.asarray(after[decl.name]), want, err_msg=decl.name)


def test_sharding_names_are_the_declared_ones():
    for decl in model_declarations(CFG):
        assert distributed.logical_axes(decl.name, len(decl.dims)) == tuple(d.shard for d in decl.dims), decl.name


class _Getter(dict):
    """The tensor getter from_hf_tensors reads (a checkpoint directory's reader, here in memory)."""

    def __call__(self, name):
        return self[name]

    def has(self, name):
        return name in self


def test_hf_conversion_follows_the_declarations(params):
    for layout, prefix in (("nvidia", "backbone"), ("transformers", "model")):
        tensors = dict(to_hf_tensors(CFG, params, layout))
        named = {d.hf.name if d.hf.root else f"{prefix}.{d.hf.name}" for d in model_declarations(CFG)}
        if layout == "transformers":
            assert set(tensors) == named
        assert sum(t.size for t in tensors.values()) == sum(math.prod(d.shape) for d in model_declarations(CFG))

        back = leaves_by_path(from_hf_tensors(CFG, _Getter(tensors), prefix))
        for name, leaf in leaves_by_path(params).items():
            np.testing.assert_array_equal(back[name], np.asarray(leaf), err_msg=name)


def test_a_new_declared_weight_gets_slicing_permutation_and_sharding_from_its_declaration():
    """One edit: a declaration of a per-neuron scale [mlp] gives its slice, permutation and sharding name."""
    decl = declare("scale", (dim("mlp", "mlp"),), {"mlp": 6}, hf=model_declarations(CFG)[1].hf)
    x = np.arange(6.0)
    np.testing.assert_array_equal(slice_array(x, decl, {"mlp": 4}), x[:4])
    order = np.array([5, 0, 4, 1, 3, 2])
    np.testing.assert_array_equal(permute_array(x, decl, ELASTIC_AXES["ffn"], order), x[order])
    assert tuple(d.shard for d in decl.dims) == ("mlp",)


class _BiasedMLP(MLP):
    """An MLP that makes a parameter it does not declare."""

    @nn.compact
    def __call__(self, x, cache=None, pos=None, masks=None):
        bias = self.param("bias", nn.initializers.zeros, (self.hidden_size,), jnp.float32)
        decl, init = by_name(self.declarations()), nn.initializers.normal(0.02)
        up = linear(decl["up_proj/kernel"], jnp.float32, init, self.target)
        return linear(decl["down_proj/kernel"], jnp.float32, init, self.target)(up(x)) + bias, None


def test_an_undeclared_parameter_fails_every_derived_function(params):
    module = _BiasedMLP(hidden_size=8, intermediate_size=4)
    extra = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 8)))["params"]
    with pytest.raises(UndeclaredParamError, match="'bias' has no declaration"):
        check_declared(extra, module.declarations(), "init")

    tree = jax.tree_util.tree_map(np.asarray, params)
    tree["layers_5"]["mixer"]["bias"] = np.zeros((CFG.hidden_size,), np.float32)  # the `-` layer
    match = "layers_5/mixer/bias"
    with pytest.raises(UndeclaredParamError, match=match):
        slice_params(tree, CFG, SPEC)
    with pytest.raises(UndeclaredParamError, match=match):
        permute_params(tree, CFG, {"hidden": np.arange(CFG.hidden_size)})
    with pytest.raises(UndeclaredParamError, match=match):
        list(to_hf_tensors(CFG, tree))
    mesh = distributed.make_mesh({"data": 1}, jax.devices()[:1])
    with pytest.raises(UndeclaredParamError, match=match):
        distributed.param_shardings(tree, mesh)
