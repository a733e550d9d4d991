"""elastic.router.nested: every budget a slice of the next larger one, in training samples and deployed specs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elastic_jax as ej
from elastic_jax.config import ConfigError
from elastic_jax.elastic.router import Router, RouterConfig
from elastic_jax.elastic.search import nests_in, router_free_specs
from elastic_jax.elastic.spec import Budget
from elastic_jax.experiment import ExperimentConfig, load_experiment
from elastic_jax.train.loop import parse_experiment

CFG = ej.load_config("tiny")
BUDGETS = (1.0, 0.7, 0.4)
SEEDS = range(4)


def _random_state(router: Router, seed: int) -> dict:
    return jax.tree.map(lambda x: x * 100.0, router.init(jax.random.PRNGKey(seed)))  # spread the choices


def _deployed_chain_nests(router: Router, params: dict) -> bool:
    specs = {b: router.spec_for(params, b) for b in (*BUDGETS, 0.55)}
    return all(nests_in(specs[small], specs[large], CFG) for small, large in ((0.7, 1.0), (0.4, 0.7), (0.55, 0.7)))


def _sample_nests(router: Router, params: dict, seed: int, progress: float) -> bool:
    """Whether each budget's Gumbel-sampled hard masks use only units that the next larger budget's noise-free
    choice (the architecture it routes to now) uses."""
    for small in (1, 2):
        sampled = router.sample(params, small, jax.random.PRNGKey(100 + seed), jnp.asarray(progress))[0]
        larger = router.sample(params, small - 1, None, jnp.asarray(progress))[0]  # no noise: its choice now
        for a, b in zip(jax.tree.leaves(sampled), jax.tree.leaves(larger), strict=True):
            if np.any(np.asarray(a) > np.asarray(b) + 1e-5):
                return False
    return True


@pytest.mark.parametrize("heterogeneous", [False, True])
def test_nested_budgets_form_a_chain_and_each_stays_within_tolerance(heterogeneous):
    rc = RouterConfig(budgets=BUDGETS, heterogeneous=heterogeneous, nested=True)
    router = Router(CFG, rc)
    for seed in SEEDS:
        params = _random_state(router, seed)
        assert _deployed_chain_nests(router, params), seed
        for budget in (*BUDGETS, 0.55):
            m = Budget(budget, rc.metric)
            ratio = m.measure(router.spec_for(params, budget).apply_to(CFG)) / m.target(CFG)
            assert abs(ratio - 1) <= rc.tolerance + 1e-9, (seed, budget, ratio)
        assert _sample_nests(router, params, seed, progress=0.0)  # the hottest, noisiest samples


@pytest.mark.parametrize("heterogeneous", [False, True])
def test_free_choices_need_not_nest(heterogeneous):
    router = Router(CFG, RouterConfig(budgets=BUDGETS, heterogeneous=heterogeneous, nested=False))
    states = [(seed, _random_state(router, seed)) for seed in SEEDS]
    assert not all(_deployed_chain_nests(router, p) for _, p in states)
    assert not all(_sample_nests(router, p, seed, progress=0.0) for seed, p in states)


def test_nested_sampling_keeps_finite_router_gradients():
    router = Router(CFG, RouterConfig(budgets=BUDGETS, nested=True))
    params = _random_state(router, 0)
    # the resource loss of the smallest budget, bounded by the two larger ones' choices
    grads = jax.grad(lambda p: router.sample(p, 2, jax.random.PRNGKey(1), jnp.asarray(0.5))[1])(params)
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    assert all(np.all(np.isfinite(g)) for g in leaves) and any(np.any(g != 0) for g in leaves)


def test_nested_must_be_a_bool():
    with pytest.raises(ConfigError, match=r"router\.nested: must be True \(a nested chain of budgets\) or False"):
        RouterConfig(nested="yes")
    with pytest.raises(ConfigError, match=r"elastic\.router\.nested: expected True or False, got 'yes'"):
        ExperimentConfig.from_dict(load_experiment("tiny_elastic", ["elastic.router.nested='yes'"]))


# ---- the router-free budget search (elastic.budget_search), which follows the same chain ----------------------

def _calibration(cfg, count: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, cfg.vocab_size, (2, 33)) for _ in range(count)]


@pytest.mark.parametrize("nested", [True, False])
def test_router_free_specs_meet_every_budget_and_follow_the_chain(nested):
    from tests.elastic.helpers import fast_random_params

    rc = RouterConfig(budgets=BUDGETS, nested=nested)
    specs = router_free_specs(CFG, fast_random_params(CFG), rc, _calibration(CFG), max_candidates=12)
    assert sorted(specs) == sorted(BUDGETS) and specs[1.0].apply_to(CFG) == CFG
    for budget, spec in specs.items():
        m = Budget(budget, rc.metric)
        assert abs(m.measure(spec.apply_to(CFG)) / m.target(CFG) - 1) <= rc.tolerance + 1e-9, budget
    if nested:
        assert nests_in(specs[0.4], specs[0.7], CFG)


def test_budget_search_fixes_every_budget_from_the_first_step(tmp_path):
    """elastic.budget_search: the run trains the search's architectures as its fixed static ones from step 0."""
    from elastic_jax.data.calibration import calibration_batches
    from elastic_jax.model_io import save_model
    from elastic_jax.train.elastify import prepare_elastify
    from tests.conftest import OVERRIDES
    from tests.elastic.helpers import fast_random_params

    cfg = ej.load_config("tiny", OVERRIDES[:2])
    save_model(tmp_path / "parent", cfg, fast_random_params(cfg))
    experiment = load_experiment("tiny_elastic", [*OVERRIDES, "elastic.budget_search=True",
                                                  "elastic.router.nested=True", "elastic.importance_order='random'"])
    run = prepare_elastify(experiment, str(tmp_path / "run"), str(tmp_path / "parent"))
    spec, ec = run.spec, run.ec
    batches = calibration_batches(spec.data, spec.tokenizer, 1, ec.stage1_seq_len, spec.train.global_batch,
                                  max_seq_len=cfg.max_position_embeddings)
    teacher = jax.device_get(run.teacher)
    assert run.specs == router_free_specs(cfg, teacher, ec.router, batches, seed=spec.train.seed)
    assert nests_in(run.specs[0.4], run.specs[0.7], cfg) and run.start == 0
    with pytest.raises(ConfigError, match=r"elastic\.budget_search: expected True or False"):
        ExperimentConfig.from_dict(load_experiment("tiny_elastic", ["elastic.budget_search='yes'"]))


def test_runs_from_before_the_new_knobs_resume_and_a_changed_chain_is_named():
    """Checkpoints written before nested / importance_order / budget_search lack them: at the behaviour those
    runs had the fields are left out of the settings a resume compares; nested=True is compared."""
    from elastic_jax.train.elastify import _run_settings

    def settings(*overrides):
        experiment = load_experiment("tiny_elastic", list(overrides))
        return _run_settings(parse_experiment(experiment), ExperimentConfig.from_dict(experiment).require_elastic())

    old = settings("elastic.router.nested=False")
    assert not {"elastic.router.nested", "elastic.importance_order", "elastic.budget_search"} & set(old)
    assert settings("elastic.router.nested=True")["elastic.router.nested"] is True
    assert settings("elastic.importance_order='random'")["elastic.importance_order"] == "random"
