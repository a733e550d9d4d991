"""Programs are built for an explicit CompileTarget: a GPU program traced on this CPU host holds none of the CPU's
forms (the decode kernels' FFI calls, the Linear's CPU weight gradient), a CPU decode program on the kernels holds
them, and model/ itself names no backend and no CPU kernel."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import elastic_jax
from elastic_jax.elastic.spec import ElasticSpec
from elastic_jax.experiment import TrainConfig
from elastic_jax.inference.programs import decode_target, make_decode
from elastic_jax.kernels import cpu_gemv
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.cache import init_cache
from elastic_jax.model.functional import param_shapes
from elastic_jax.train.optim import make_optimizer
from elastic_jax.train.state import TrainState
from elastic_jax.train.step import make_train_step
from tests.model.helpers import PARITY_CONFIGS

CFG = PARITY_CONFIGS["all_blocks"]
FFI = re.compile(r"elastic_jax_(products|experts|attention|ssm_step)")
CPU_BACKWARD = "optimization_barrier"  # model/linear.py's CPU weight gradient keeps its transpose behind one


def _train_step_text(target: CompileTarget) -> str:
    params = param_shapes(CFG)
    optimizer, schedule = make_optimizer(TrainConfig(), params)
    state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                       opt_state=jax.eval_shape(optimizer.init, params))
    rows = jax.ShapeDtypeStruct((2, 16), jnp.int32)
    batch = {"inputs": rows, "targets": rows, "loss_mask": jax.ShapeDtypeStruct((2, 16), jnp.float32)}
    step, _ = make_train_step(CFG, optimizer, schedule, target=target)
    return step.lower(state, batch).as_text()


def _decode_text(target: CompileTarget) -> str:
    fn = make_decode(CFG, ElasticSpec(), 16, 0.0, 0, 1.0, (), CFG.pad_token_id, target)
    caches = jax.tree.map(lambda x: x[None], init_cache(CFG, 1, 16))
    logits = jnp.zeros((1, CFG.vocab_size))
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    return fn.lower(param_shapes(CFG), caches, logits, keys, jnp.zeros(1, jnp.int32), jnp.zeros(1, bool),
                    jnp.int32(4)).as_text()


def test_a_gpu_training_step_traced_on_cpu_devices_has_no_cpu_forms():
    assert jax.default_backend() == "cpu"
    gpu = _train_step_text(CompileTarget("gpu", host_devices=True))
    assert not FFI.search(gpu) and CPU_BACKWARD not in gpu
    assert CPU_BACKWARD in _train_step_text(CompileTarget("cpu"))  # the check can fail: the CPU step has them


def test_the_cpu_kernel_decode_program_calls_the_kernels_and_a_gpu_one_does_not():
    assert cpu_gemv.available()
    target = decode_target(1, 4)
    assert target.decode == "kernels" and target.kernels is cpu_gemv.KERNELS
    found = set(FFI.findall(_decode_text(target)))
    assert found == {"products", "experts", "attention", "ssm_step"}, found
    assert not FFI.search(_decode_text(CompileTarget("gpu")))


def test_decode_targets_are_chosen_in_one_place():
    assert decode_target(3, 4) == CompileTarget("cpu", sequences=3)  # several rows: vmap, XLA's products
    assert decode_target(1, 64).decode == "kernels"


def test_bad_targets_name_the_field():
    with pytest.raises(ValueError, match="CompileTarget.platform: 'cuda'; allowed"):
        CompileTarget("cuda")
    with pytest.raises(ValueError, match="CompileTarget.kernels"):
        CompileTarget("cpu", decode="kernels")
    with pytest.raises(ValueError, match="CompileTarget.sequences"):
        CompileTarget("cpu", sequences=-1)


def test_the_model_names_no_backend_and_no_cpu_kernel():
    model = Path(elastic_jax.__file__).parent / "model"
    for path in model.glob("*.py"):
        text = path.read_text()
        assert "cpu_gemv" not in text and "default_backend" not in text, path.name
        assert "kernels.ssd._" not in text, path.name  # private kernel modules stay private
