"""Replay-family strategies: the gradient algebra of A-GEM / GEM, DER's logit memory,
iCaRL's exemplars and nearest-mean classifier, LwF's distillation, and a real-Trainer
run of every strategy whose state loads into a fresh one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from cl_bench.config import ConfigError, build_plan, load_config
from cl_bench.data import iterate_eval
from cl_bench.layout import grad_of as flat_grad
from cl_bench.layout import grad_vector
from cl_bench.module import Step
from cl_bench.runner import build_module, load_scenario, run_one
from cl_bench.strategies.replay import DER, GEM, agem_project, distillation, gem_project

STRATEGIES = ["er", "agem", "gem", "der", "derpp", "icarl", "gdumb", "lwf"]


def tiny_plan(strategy: str, setting: str = "class_il", *extra: str):
    """Split-Digits (sklearn's bundled digits), 3 tasks, 150 training images per task."""
    return build_plan(load_config([
        "scenario=split_digits", "scenario.n_tasks=3", "scenario.train_subsample=150", f"strategy={strategy}",
        f"settings=[{setting}]", "trainer.epochs=4", "trainer.batch_size=16", "trainer.train_loss_probe=50",
        "optimizer.lr=0.1", "checks.enabled=false",
        *([f"strategies.{strategy}.buffer_size=30"] if strategy not in ("lwf", "naive") else []), *extra,
    ]))


def run_tiny(strategy: str, setting: str, *extra: str):
    """A real run (runner + Lightning Trainer); returns (spec, result) and the module after each task."""
    spec = tiny_plan(strategy, setting, *extra).runs[0]
    modules = []
    result = run_one(spec, load_scenario(spec), on_task_end=lambda s, t, m: modules.append(m))
    return (spec, result), modules


# --------------------------------------------------------------------- A-GEM
def test_agem_projection_closed_form_and_constraint():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        grad, ref = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
        out = agem_project(grad, ref)
        dot = float(grad @ ref)
        expected = grad - dot / float(ref @ ref) * ref if dot < 0 else grad
        assert torch.allclose(out, expected, rtol=0, atol=1e-12)
        assert float(out @ ref) >= -1e-12
    grad = torch.tensor([1.0, -2.0], dtype=torch.float64)
    assert torch.equal(agem_project(grad, torch.tensor([1.0, 0.0], dtype=torch.float64)), grad)  # no conflict
    assert torch.allclose(agem_project(grad, torch.tensor([0.0, 1.0], dtype=torch.float64)),
                          torch.tensor([1.0, 0.0], dtype=torch.float64))


# ----------------------------------------------------------------------- GEM
def active_set_projection(g: np.ndarray, G: np.ndarray) -> np.ndarray:
    """The minimiser argmin ||z - g|| s.t. G z >= 0 by enumeration: the optimum is the projection of g
    onto {z : G_S z = 0} for its active set S, so the best feasible such projection wins."""
    best, best_d = None, np.inf
    for r in range(G.shape[0] + 1):
        for S in itertools.combinations(range(G.shape[0]), r):
            A = G[list(S)]
            z = g - A.T @ np.linalg.solve(A @ A.T, A @ g) if S else g
            if (G @ z >= -1e-9).all() and np.linalg.norm(z - g) < best_d:
                best, best_d = z, np.linalg.norm(z - g)
    return best


def test_gem_solution_satisfies_constraints_and_matches_brute_force_qp():
    rng = np.random.default_rng(0)
    for _ in range(10):
        G = rng.normal(size=(4, 6))
        g = -G.sum(0) + 0.3 * rng.normal(size=6)  # conflicts with most past tasks
        assert (G @ g < 0).any()
        z = gem_project(torch.from_numpy(g), torch.from_numpy(G)).numpy()
        assert (G @ z >= -1e-9).all()
        assert np.allclose(z, active_set_projection(g, G), atol=1e-7)
        res = minimize(lambda v: 0.5 * np.sum((v - g) ** 2), g, jac=lambda v: v - g,
                       constraints=[{"type": "ineq", "fun": lambda v: G @ v, "jac": lambda v: G}], method="SLSQP",
                       options={"ftol": 1e-12})
        assert np.allclose(z, res.x, atol=1e-5)
        for gamma in (0.5, 1.0):  # the margin biases the dual variables; constraints still hold
            zg = gem_project(torch.from_numpy(g), torch.from_numpy(G), gamma=gamma).numpy()
            assert (G @ zg >= -1e-9).all()
    g = rng.normal(size=6)
    G = np.stack([g + 0.1 * rng.normal(size=6) for _ in range(3)])  # no conflict: g is returned
    if (G @ g >= 0).all():
        assert np.allclose(gem_project(torch.from_numpy(g), torch.from_numpy(G)).numpy(), g)


@pytest.mark.parametrize("strategy", ["agem", "gem"])
def test_surgery_hook_leaves_a_gradient_that_respects_the_memory(strategy):
    torch.manual_seed(0)
    spec = tiny_plan(strategy, "class_il", f"strategies.{strategy}.minibatch_size=30")
    spec = spec.runs[0]
    scenario = load_scenario(spec)
    module = build_module(spec, scenario)
    first, second = scenario.tasks[:2]
    module.before_task(first)
    module.after_task(first)  # memory of task 0 (its quota of examples)
    assert module.buffer.size == 30 // 3
    module.before_task(second)
    x = module.to_input(second.x_train[:16])
    y = second.y_train[:16]
    loss = module.training_step((x, y, torch.full_like(y, 1)), 0)
    module.zero_grad()
    loss.backward()
    module.on_before_optimizer_step(None)
    mem = module.buffer.data()  # all of task 0's memory (the A-GEM draw is the whole memory here)
    ref = flat_grad(F.cross_entropy(module(mem.x, mem.t), mem.y), module.network())
    g_plain = flat_grad(F.cross_entropy(module(x, torch.full_like(y, 1)), y), module.network())
    assert float(g_plain @ ref) < 0  # the case where surgery matters
    assert float(grad_vector(module.network()) @ ref) >= -1e-6 * float(ref.norm() * g_plain.norm())


# ----------------------------------------------------------------------- DER
def test_der_stores_the_logits_it_saw_and_replays_them():
    torch.manual_seed(0)
    spec = tiny_plan("der", "class_il", "strategies.der.buffer_size=500", "strategies.der.alpha=0.7").runs[0]
    scenario = load_scenario(spec)
    module = build_module(spec, scenario)
    task = scenario.tasks[0]
    module.before_task(task)
    seen_x, seen_logits = [], []
    opt = torch.optim.SGD(module.network(), lr=0.1)
    for step, sl in enumerate(torch.arange(task.n_train).split(16)):
        x, y = module.to_input(task.x_train[sl]), task.y_train[sl]
        t = torch.zeros_like(y)
        seen_x.append(x)
        seen_logits.append(module(x, t).detach())  # what the network outputs at this step
        loss = module.training_step((x, y, t), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    n = task.n_train
    assert module.buffer.size == n  # capacity > stream: every example kept, in order
    assert torch.equal(module.buffer.x[:n], torch.cat(seen_x))
    assert torch.allclose(module.buffer.logits[:n], torch.cat(seen_logits), atol=1e-6)
    torch.manual_seed(7)
    term = module.replay_loss(Step(x, y, t))
    torch.manual_seed(7)
    b = module.buffer.sample(module.params.minibatch_size)
    assert torch.allclose(term, 0.7 * ((module(b.x, b.t) - b.logits) ** 2).mean())
    assert float(term.detach()) > 0  # the network moved since those logits were stored
    fresh = build_module(spec, scenario)
    x, y = module.to_input(task.x_train[:16]), task.y_train[:16]
    fresh.training_step((x, y, torch.zeros_like(y)), 0)  # stores its own logits, no update
    # its stored logits are its outputs: 0 up to the summation order of a different batch shape
    assert float(fresh.replay_loss(Step(x, y, torch.zeros_like(y))).detach()) < 1e-12


# --------------------------------------------------------------------- iCaRL
def test_icarl_exemplars_and_nearest_mean_classifier():
    torch.manual_seed(0)
    (spec, _), modules = run_tiny("icarl", "class_il")
    module = modules[-1]
    mem = module.buffer.data()
    counts = torch.bincount(mem.y, minlength=10)
    assert counts[:6].tolist() == [30 // 6] * 6 and int(counts[6:].sum()) == 0  # m = K // seen classes
    with torch.no_grad():
        f = F.normalize(module.backbone.features(mem.x), dim=1)
        for c in range(6):
            mu = F.normalize(f[mem.y == c].mean(0), dim=0)
            assert torch.allclose(module.class_means[c], mu, atol=1e-5)
        task = load_scenario(spec).tasks[2]
        x = module.to_input(task.x_test)
        phi = F.normalize(module.backbone.features(x), dim=1)
        dist = ((phi[:, None, :] - module.class_means[None, :6, :]) ** 2).sum(-1)
        scores = module.eval_logits(x, torch.full((x.shape[0],), 2))
        assert torch.allclose(scores[:, :6], -dist, atol=1e-5)
        assert torch.equal(scores[:, 6:], torch.full_like(scores[:, 6:], -4.0))


def test_icarl_refuses_domain_il():
    spec = build_plan(load_config(["scenario=split_digits", "strategy=icarl", "settings=[domain_il]"])).runs[0]
    with pytest.raises(ValueError, match="domain_il"):
        build_module(spec, load_scenario(spec))


# ----------------------------------------------------------------------- LwF
def test_lwf_distillation_is_kl_at_temperature():
    g = torch.Generator().manual_seed(0)
    new, old = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    p, q = F.softmax(old / 2.0, 1), F.softmax(new / 2.0, 1)
    assert torch.allclose(distillation(new, old, 2.0), (p * (p.log() - q.log())).sum(1).mean(), atol=1e-6)
    assert float(distillation(old, old, 2.0)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("head", ["single", "multi"])
def test_lwf_distils_nothing_right_after_the_snapshot_and_runs_multi_head(head):
    (spec, result), modules = run_tiny("lwf", "task_il", f"model.head={head}")
    assert result.status == "ok" and result.metrics["acc"] > 0.8
    module = modules[-1]
    module.current_task = 2  # after the snapshot of task 2: old == new on every head
    scenario = load_scenario(spec)
    x, _ = next(iterate_eval(scenario.tasks[2].x_train, scenario.tasks[2].y_train, 32, mean=scenario.mean,
                             std=scenario.std))
    z = module.backbone.features(x)
    ids = torch.full((32,), 2)
    logits = module.backbone.head(z, ids) if head == "multi" else module.backbone.head(z)
    assert float(module.distill(x, z, logits).detach()) == pytest.approx(0.0, abs=1e-6)
    module.backbone.body[1].weight.data += 0.05
    z = module.backbone.features(x)
    logits = module.backbone.head(z, ids) if head == "multi" else module.backbone.head(z)
    assert float(module.distill(x, z, logits).detach()) > 1e-6


def test_lwf_alpha_schedule_is_per_task_and_repeats_its_last_entry():
    (_, result), modules = run_tiny("lwf", "class_il", "strategies.lwf.alpha_per_task=[0.0,0.5]")
    assert result.status == "ok"
    module = modules[-1]
    weights = []
    for t in range(3):
        module.current_task = t
        weights.append(module.alpha())
    assert weights == [0.0, 0.5, 0.5]
    with pytest.raises(ConfigError, match="alpha_per_task must be >= 0"):
        tiny_plan("lwf", "class_il", "strategies.lwf.alpha_per_task=[1.0,-2.0]")


# -------------------------------------------------------- real Trainer runs
@pytest.fixture(scope="module")
def naive_class_il_acc() -> float:
    spec = tiny_plan("naive", "class_il").runs[0]
    return run_one(spec, load_scenario(spec)).metrics["acc"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_real_trainer_run_and_checkpoint_into_a_fresh_strategy(strategy, naive_class_il_acc):
    (spec, result), modules = run_tiny(strategy, "class_il")
    module = modules[-1]
    assert result.status == "ok", result.error
    assert len(result.acc) == 3 and all(len(row) == 3 for row in result.acc)
    assert result.family == "global"
    assert result.metrics["learning_acc"] > 0.6
    if strategy != "lwf":  # in class-IL the buffer must beat fine-tuning (LwF does not: the known result)
        assert result.metrics["acc"] > naive_class_il_acc + 0.08
    assert result.strategy_memory_bytes[-1] == module.state_bytes()
    if strategy != "lwf":
        assert module.buffer.size > 0 and module.state_bytes() >= module.buffer.nbytes
    scenario = load_scenario(spec)
    fresh = build_module(spec, scenario)
    fresh.load_state_dict(module.state_dict())
    if strategy != "lwf":
        assert (fresh.buffer.size, fresh.buffer.n_seen) == (module.buffer.size, module.buffer.n_seen)
        assert torch.equal(fresh.buffer.x, module.buffer.x)
    task = scenario.tasks[0]
    x, _ = next(iterate_eval(task.x_test, task.y_test, task.n_test, mean=scenario.mean, std=scenario.std))
    t = torch.zeros(task.n_test, dtype=torch.long)
    module.eval()
    fresh.eval()
    assert torch.equal(fresh.eval_logits(x, t), module.eval_logits(x, t))


def test_gdumb_memory_is_class_balanced_and_the_net_is_retrained():
    (_, result), modules = run_tiny("gdumb", "class_il", "strategies.gdumb.buffer_size=25")
    counts = torch.bincount(modules[-1].buffer.data().y, minlength=10)[:6]
    assert int(counts.sum()) == 25 and int(counts.max() - counts.min()) <= 1
    assert result.acc[0][0] > 0.5  # trained on the memory after the first task


def test_der_checks_its_hyper_parameters():
    with pytest.raises(ValueError, match="alpha"):
        DER.Params(alpha=-1.0)
    with pytest.raises(ValueError, match="policy"):
        DER.Params(policy="lifo")
    spec = tiny_plan("gem", "class_il", "strategies.gem.buffer_size=2").runs[0]
    with pytest.raises(ValueError, match="buffer_size"):
        build_module(spec, load_scenario(spec))
    assert GEM.family == "global"
