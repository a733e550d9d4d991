"""Compile-only plans for a target cluster: will the elastic joint step (or the pretraining step) fit, and how?

`elastic-jax plan --config C --target T --mode static|mask` lowers and compiles the step with abstract arrays
(ShapeDtypeStructs and the shardings of elastic_jax/distributed.py), on no hardware:

- TPU targets (`v5p-128`, `v5e-8`, `v6e-16`, or a topology `v5p:2x2x1`) compile for the real topology through
  libtpu's compile-only support (`jax.experimental.topologies`; the `tpu-plan` extra installs libtpu), with the
  Pallas TPU SSD kernel in the program. Every figure is XLA's, for that topology.
- GPU targets (`8xH100`, `16xH100`, `8xA100-80`) compile the same sharded program in a subprocess: on a GPU
  host with XLA's GPU compiler for the target as a mocked multi-host topology (`jax_mock_gpu_topology`), elsewhere
  on as many fake CPU devices (--xla_force_host_platform_device_count): parameter, optimizer and teacher bytes
  follow exactly from the shardings; temporaries and FLOPs are then the CPU compiler's, an estimate of the GPU's.

The global batch is compiled at the nearest size the mesh takes (a multiple of its batch shards times the
micro-batches) and the plan says so; a plan that does not fit names the smallest change that would
(plan_targets.smallest_change).

`check_fits_locally` (train/capacity.py) is the cheap accounting check that pretrain / elastify run before
compiling anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from elastic_jax import distributed, plan_targets
from elastic_jax.config import ConfigError
from elastic_jax.distributed import MeshError, check_mesh_config, mesh_shape
from elastic_jax.elastic.accounting import count_params
from elastic_jax.elastic.router import Router
from elastic_jax.experiment import ExperimentConfig, load_experiment
from elastic_jax.kernels.target import CompileTarget
from elastic_jax.model.functional import build
from elastic_jax.plan_format import format_plan
from elastic_jax.plan_targets import GiB, PlanError, Target, batch_shards, parse_target, tpu_devices  # noqa: F401 (API)
from elastic_jax.schema import plain
from elastic_jax.train.capacity import BYTES_PER_PARAM, check_fits_locally  # noqa: F401 (API)
from elastic_jax.train.elastic_step import JointLossConfig, StepShardings, make_elastic_optimizer, make_elastic_step
from elastic_jax.train.loop import global_batch_sharding, state_layout
from elastic_jax.train.optim import make_optimizer
from elastic_jax.train.step import make_train_step

DEFAULT_BUDGETS = (1.0, 0.7, 0.4)


# ---- one compiled program ----------------------------------------------------------------------------------
def _shard_bytes(tree: Any, shardings: Any) -> int:
    """Bytes per device of a tree of ShapeDtypeStructs laid out by `shardings` (the largest shard)."""
    total = 0
    for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        total += int(np.prod(sh.shard_shape(tuple(leaf.shape)))) * np.dtype(leaf.dtype).itemsize
    return total


def _experiment(config: str, overrides: Sequence[str], budgets: Sequence[float] | None):
    """(ExperimentConfig, ElasticConfig) with the budgets given (an elastic section is added when missing)."""
    raw = dict(plain(load_experiment(config, overrides)))
    elastic = dict(raw.get("elastic") or {})
    if budgets is not None or not elastic:
        router = dict(elastic.get("router") or {})
        router["budgets"] = tuple(budgets or router.get("budgets") or DEFAULT_BUDGETS)
        elastic["router"] = router
        if len(elastic.get("stage2_weights") or router["budgets"]) != len(router["budgets"]):
            elastic.pop("stage2_weights")  # the config's stage-2 weights were for other budgets
        raw["elastic"] = elastic
        raw.setdefault("train", {}).pop("total_steps", None)
    exp = ExperimentConfig.from_dict(raw)
    return exp, exp.require_elastic("plan")


def _mesh_name(sizes: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sizes.items() if v != 1) or "data=1"


def compile_program(exp: Any, ec: Any, program: str, mode: str, mesh_cfg: dict[str, int], devices: list[Any],
                    platform: str) -> dict[str, Any]:
    """Lower and compile one step for `devices` on the mesh `mesh_cfg`; per-device bytes by kind, FLOPs, time."""
    cfg, train = exp.model, exp.train
    compiled_on = devices[0].platform  # "cpu" for the fake devices standing in for GPUs
    target = CompileTarget(platform, host_devices=compiled_on != platform)
    mesh = distributed.make_mesh(mesh_cfg, devices)
    sizes = dict(mesh.shape)
    seq_len = ec.stage2_seq_len if program == "elastic" else train.seq_len
    abstract = jax.eval_shape(build(cfg).init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 1), jnp.int32))
    model_params = abstract["params"]
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sh = global_batch_sharding(train, mesh)
    rows = (train.global_batch, seq_len)
    batch = {"inputs": jax.ShapeDtypeStruct(rows, jnp.int32), "targets": jax.ShapeDtypeStruct(rows, jnp.int32),
             "loss_mask": jax.ShapeDtypeStruct(rows, jnp.float32)}
    if program == "elastic":
        router = Router(cfg, ec.router)
        router_init = router.init(jax.random.PRNGKey(0))  # small; concrete so static mode can read its choices
        fixed = tuple(router.spec_for(router_init, b) if mode == "static" else None for b in ec.budgets)
        lc = JointLossConfig(weights=tuple([1.0] * len(ec.budgets)), fixed_specs=fixed,
                             router_weight=ec.router.loss_weight, ce_weight=ec.ce_weight,
                             kd_temperature=ec.kd_temperature, execution=train.execution,
                             micro_batches=train.micro_batches, target=target)
        optimizer, schedule = make_elastic_optimizer(train, ec.router.lr_multiplier)
        params = {"model": model_params, "router": jax.eval_shape(lambda: router_init)}
        params_sh = {"model": distributed.param_shardings(model_params, mesh),
                     "router": jax.tree.map(lambda _: replicated, params["router"])}
        state, state_sh = state_layout(mesh, params, params_sh, optimizer)
        step, _ = make_elastic_step(cfg, router, lc, optimizer, schedule, ec.total_steps,
                                    StepShardings(state_sh, batch_sh))
        args = (state, model_params, batch, jax.ShapeDtypeStruct((2,), jnp.uint32))
        teacher = _shard_bytes(model_params, params_sh["model"])
    else:
        optimizer, schedule = make_optimizer(train, model_params)
        params_sh = distributed.param_shardings(model_params, mesh)
        state, state_sh = state_layout(mesh, model_params, params_sh, optimizer)
        step, _ = make_train_step(cfg, optimizer, schedule, state_sharding=state_sh, batch_sharding=batch_sh,
                                  execution=train.execution, micro_batches=train.micro_batches, target=target)
        args, teacher = (state, batch), 0
    params_b = _shard_bytes(state.params, state_sh.params)
    opt_b = _shard_bytes(state.opt_state, state_sh.opt_state)
    batch_b = _shard_bytes(batch, jax.tree.map(lambda _: batch_sh, batch))
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = step.lower(*args)
        text = lowered.as_text()
        kernels = text.count("ssd_chunk_scan_tpu")  # Pallas TPU SSD calls in the program
        # expert-parallel rows out and back: ragged on GPU / TPU, padded on CPU stand-ins (model/expert_parallel.py)
        exchanges = {"ragged": text.count("@ragged_all_to_all("), "padded": text.count('"stablehlo.all_to_all"(')}
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as err:  # the TPU compiler refuses a program that cannot fit
            compiled, refusal = None, str(err).splitlines()[0]
            if "RESOURCE_EXHAUSTED" not in refusal:
                raise
    seconds = time.perf_counter() - t0
    result = {"mesh": sizes, "mesh_name": _mesh_name(sizes), "seq_len": seq_len, "global_batch": train.global_batch,
              "compile_seconds": round(seconds, 2), "pallas_tpu_ssd_calls": kernels,
              "all_to_all_calls": exchanges, "compiled_on": compiled_on}
    if compiled is None:  # temporaries as XLA's refusal states them (GiB); the inputs from the shardings
        found = re.search(r"temporaries \(([\d.]+)G\)", refusal)
        temp_b = int(float(found.group(1)) * GiB) if found else 0
        return {**result, "compiler_refusal": refusal, "flops_per_step": 0.0,
                "bytes": {"parameters": params_b, "optimizer_state": opt_b, "teacher": teacher,
                          "batch_and_other_inputs": batch_b, "activations_and_temporaries": temp_b,
                          "outputs_not_aliased": 0},
                "total_bytes": params_b + opt_b + teacher + batch_b + temp_b}
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    args_b = int(mem.argument_size_in_bytes)
    out_extra = max(int(mem.output_size_in_bytes) - int(mem.alias_size_in_bytes), 0)
    temp_b = int(mem.temp_size_in_bytes)
    return {**result,
            "bytes": {"parameters": params_b, "optimizer_state": opt_b, "teacher": teacher,
                      "batch_and_other_inputs": max(args_b - params_b - opt_b - teacher, 0),
                      "activations_and_temporaries": temp_b, "outputs_not_aliased": out_extra},
            "total_bytes": args_b + temp_b + out_extra, "generated_code_bytes": int(mem.generated_code_size_in_bytes),
            "flops_per_step": float((cost or {}).get("flops", 0.0))}


# ---- meshes, fitting and the whole plan --------------------------------------------------------------------
def candidate_meshes(configured: dict[str, int], num_devices: int) -> list[dict[str, int]]:
    """The experiment's mesh, then FSDP over every device, then FSDP x tensor 2 / 4 and FSDP x expert 4 / 8 / 16
    (expert parallelism: each device holds 1 / expert of the experts, model/expert_parallel.py)."""
    out: list[dict[str, int]] = []
    wanted = [configured, {"data": 1, "fsdp": -1}, {"data": 1, "fsdp": -1, "tensor": 2},
              {"data": 1, "fsdp": -1, "tensor": 4}, *({"data": 1, "fsdp": -1, "expert": e} for e in (4, 8, 16))]
    for cand in wanted:
        try:
            sizes = mesh_shape(cand, num_devices)
        except MeshError:
            continue
        if sizes not in out:
            out.append(sizes)
    return out


def _compile_candidates(config: str, overrides: Sequence[str], target: Target, mode: str,
                        budgets: Sequence[float] | None, meshes: Sequence[dict[str, int]] | None,
                        programs: Sequence[str], devices: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Every mesh of every program. When none fits: the best mesh again with train.remat=block and
    train.scan_layers=true (each block's activations recomputed in the backward pass, the repeated layers scanned:
    without the scan the CPU compiler standing in for GPUs schedules every recomputation at once and saves
    nothing), then, if that does not fit either, with the micro-batch count plan_targets.micro_batches_to_fit
    estimates."""
    exp, ec = _experiment(config, overrides, budgets)
    meshes = list(meshes) if meshes else candidate_meshes(exp.mesh.to_dict(), target.num_devices)
    out: dict[str, list[dict[str, Any]]] = {}
    for program in programs:
        results = [_compile_or_error(exp, ec, program, mode, sizes, devices, target) for sizes in meshes]
        retries = [] if exp.train.remat != "none" else [["train.remat=block", "train.scan_layers=true"]]
        for retry in [*retries, "micro_batches"]:
            ok = [r for r in results if "error" not in r]
            if not ok or any(r["total_bytes"] <= target.hbm_bytes for r in ok):
                break
            best = min(ok, key=lambda r: r["total_bytes"])
            if retry == "micro_batches":  # check the estimate by compiling it
                fixed = best["total_bytes"] - best["bytes"]["activations_and_temporaries"]
                fits_k = plan_targets.micro_batches_to_fit
                k = None if fixed > target.hbm_bytes else fits_k(best, target.hbm_bytes)
                if k is None:
                    break
                retry = [f"train.micro_batches={k}"]
            current = [f"train.remat={best['remat']}", f"train.scan_layers={best['scan_layers']}",
                       f"train.global_batch={best['global_batch']}"]  # the batch the mesh took
            again, _ = _experiment(config, [*overrides, *current, *retry], budgets)
            results.append(_compile_or_error(again, ec, program, mode, best["mesh"], devices, target))
            if "configured_global_batch" in best:  # the batch the user configured, not the retry's
                results[-1]["configured_global_batch"] = best["configured_global_batch"]
        out[program] = results
    return out


def batch_for_mesh(global_batch: int, sizes: dict[str, int], micro_batches: int = 1) -> tuple[int, int]:
    """(the batch sizes the mesh takes: multiples of this, the nearest of them to `global_batch`): rows split over
    data x fsdp x expert shards (the batch's mesh axes, distributed.py), each shard's rows into `micro_batches`
    equal parts."""
    multiple = batch_shards(sizes) * micro_batches
    return multiple, max(multiple, (global_batch + multiple // 2) // multiple * multiple)


def _compile_or_error(exp: Any, ec: Any, program: str, mode: str, sizes: dict[str, int], devices: list[Any],
                      target: Target) -> dict[str, Any]:
    """One mesh's compiled figures (or why it cannot be), at the nearest global batch the mesh takes."""
    try:
        multiple, nearest = batch_for_mesh(exp.train.global_batch, mesh_shape(sizes, len(devices)),
                                           exp.train.micro_batches)
    except MeshError as err:
        return {"mesh": sizes, "mesh_name": _mesh_name(sizes), "error": str(err)}
    execution = {"remat": exp.train.remat, "scan_layers": exp.train.scan_layers,
                 "micro_batches": exp.train.micro_batches, "global_batch_multiple": multiple}
    if nearest != exp.train.global_batch:
        execution["configured_global_batch"] = exp.train.global_batch
        exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, global_batch=nearest))
    try:
        return {**compile_program(exp, ec, program, mode, sizes, devices, target.platform), **execution}
    except ConfigError as err:  # e.g. the batch does not split over this mesh
        return {"mesh": sizes, "mesh_name": _mesh_name(sizes), "error": str(err), **execution}


def _gpu_candidates(config: str, overrides: Sequence[str], target: Target, mode: str,
                    budgets: Sequence[float] | None, meshes: Sequence[dict[str, int]] | None,
                    programs: Sequence[str], host_gpus: int) -> dict[str, list[dict[str, Any]]]:
    """Compile in a subprocess (its device count is fixed when jax starts) for `target.num_devices` GPUs: a mocked
    GPU topology on a GPU host (`host_gpus` > 0), fake CPU devices elsewhere (plan_targets.gpu_compile_env)."""
    job = {"config": config, "overrides": list(overrides), "target": target.name, "mode": mode,
           "budgets": list(budgets) if budgets else None, "meshes": list(meshes) if meshes else None,
           "programs": list(programs)}
    env = plan_targets.gpu_compile_env(target, os.environ, host_gpus)
    proc = subprocess.run([sys.executable, "-m", "elastic_jax.plan", json.dumps(job)], env=env, capture_output=True,
                          text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    where = env.get("JAX_MOCK_GPU_TOPOLOGY") or "fake CPU devices"
    if proc.returncode or not lines:
        raise RuntimeError(f"plan for {target.name} on {where} failed:\n{proc.stderr[-4000:]}")
    reply = json.loads(lines[-1])
    if "error" in reply:
        raise ConfigError(reply["error"])
    for tried in reply.values():
        for r in tried:
            r["mock_gpu_topology"] = env.get("JAX_MOCK_GPU_TOPOLOGY")
    return reply


def plan(config: str, target: str, mode: str = "static", budgets: Sequence[float] | None = None,
         overrides: Sequence[str] = (), meshes: Sequence[dict[str, int]] | None = None,
         programs: Sequence[str] = ("elastic", "pretrain")) -> dict[str, Any]:
    """The plan of `config` on `target`: per program, every mesh tried and the best (fits, then least memory)."""
    if mode not in ("static", "mask"):
        raise ConfigError(f"--mode: {mode!r}; allowed: 'static' (fixed architectures, sliced students) or 'mask' "
                          "(router masks over the parent's shapes)", section="mode")
    bad = [p for p in programs if p not in ("elastic", "pretrain")]
    if bad:
        raise ConfigError(f"programs: {bad}; allowed: elastic, pretrain", section="programs")
    tgt = parse_target(target)
    exp, ec = _experiment(config, overrides, budgets)  # user errors before any compilation
    host_gpus = 0 if tgt.platform == "tpu" else plan_targets.local_gpus()
    if tgt.platform == "gpu" and (host_gpus or jax.device_count() < tgt.num_devices):
        results = _gpu_candidates(config, overrides, tgt, mode, budgets, meshes, programs, host_gpus)
    else:  # libtpu's devices, or the CPU stand-ins this process already has
        devices = tpu_devices(tgt) if tgt.platform == "tpu" else jax.devices()[:tgt.num_devices]
        results = _compile_candidates(config, overrides, tgt, mode, budgets, meshes, programs, devices)
    return _assemble(exp, ec, tgt, mode, results)


def _figures(tgt: Target, results: dict[str, list[dict[str, Any]]]) -> str:
    """Where the figures come from: XLA for the TPU topology or the mocked GPU topology, or CPU stand-ins."""
    done = [r for tried in results.values() for r in tried if "compiled_on" in r]
    if tgt.platform == "tpu":
        return "every figure compiled by XLA for the TPU topology"
    if done and done[0]["compiled_on"] == "gpu":
        return (f"every figure compiled by XLA's GPU compiler for the mocked topology {done[0]['mock_gpu_topology']} "
                "(slices x hosts x GPUs per host, mocked NCCL) on this GPU host")
    return ("estimate (CPU stand-in devices): parameters / optimizer state / teacher exact from the shardings; "
            "activations, temporaries and FLOPs compiled for CPU devices standing in for the GPUs (MoE layers as the "
            "CPU expert loop, which holds the routed rows as a grouped GEMM does; FLOPs count a loop body once); "
            "on a GPU host `plan` compiles with XLA's GPU compiler")


def _assemble(exp: Any, ec: Any, tgt: Target, mode: str, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    total, active = count_params(exp.model)
    out: dict[str, Any] = {
        "target": tgt.name, "platform": tgt.platform, "topology": tgt.topology, "device_count": tgt.num_devices,
        "hbm_bytes_per_device": tgt.hbm_bytes, "mode": mode, "budgets": list(ec.budgets),
        "model": {"total_params": total, "active_params": active}, "figures": _figures(tgt, results),
        "rematerialisation": f"train.remat={exp.train.remat}, train.scan_layers={exp.train.scan_layers} as "
                             "configured; when no mesh fits, the best mesh is compiled again with "
                             "train.remat=block and train.scan_layers=true, then with the estimated "
                             "train.micro_batches",
        "programs": {}}
    for program, tried in results.items():
        ok = [r for r in tried if "error" not in r]
        for r in ok:
            r["fits"] = r["total_bytes"] <= tgt.hbm_bytes
            r["advice"] = plan_targets.fit_advice(r, tgt.hbm_bytes)
        best = min(ok, key=lambda r: (not r["fits"], r["total_bytes"])) if ok else None
        out["programs"][program] = {"best": best, "tried": tried,
                                    "accounting_estimate_bytes_per_device": BYTES_PER_PARAM[program] * total
                                    // tgt.num_devices}
        if best and not best["fits"]:
            out["programs"][program]["smallest_change"] = plan_targets.smallest_change(best, tgt)
    out["fits"] = all(p["best"] is not None and p["best"]["fits"] for p in out["programs"].values())
    out["host_memory_per_process"] = plan_targets.host_memory(exp.model, tgt, out["programs"])
    return out


def parse_mesh(text: str) -> dict[str, int]:
    """'data=1,fsdp=-1' -> {'data': 1, 'fsdp': -1} (checked like the experiment's mesh section)."""
    sizes = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        try:
            sizes[name.strip()] = int(value)
        except ValueError:
            raise ConfigError(f"--mesh: {item!r} is not axis=size (e.g. data=1,fsdp=-1)", section="mesh") from None
    return check_mesh_config(sizes)


def run_plan_verb(args: Any) -> int:
    """`elastic-jax plan`: print the plan (table or JSON); exit status 0 whether or not it fits."""
    meshes = [parse_mesh(text) for text in args.mesh] if args.mesh else None
    result = plan(args.config, args.target, args.mode, args.budgets, args.overrides, meshes,
                  tuple(p.strip() for p in args.programs.split(",") if p.strip()))
    print(json.dumps(result, indent=1) if args.json else format_plan(result))
    return 0


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    target = parse_target(job["target"])
    devices = jax.devices()
    if len(devices) != target.num_devices:
        return {"error": f"expected {target.num_devices} fake devices, got {len(devices)}"}
    try:
        return _compile_candidates(job["config"], job["overrides"], target, job["mode"], job["budgets"],
                                   job["meshes"], job["programs"], devices)
    except ConfigError as err:
        return {"error": str(err)}


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
