"""The quadratic-penalty family: each strategy's curvature and penalty against brute force, SI's path
integral step by step under a real Lightning Trainer, checkpoints, and the strategies in the runner."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from cl_bench.config import ConfigError, build_plan, load_config
from cl_bench.data import Scenario, Task, TaskBatches
from cl_bench.data.batching import _norm_stats, to_float
from cl_bench.layout import grad_vector
from cl_bench.models import build_model
from cl_bench.module import OptimizerConfig
from cl_bench.runner import execute, prepare
from cl_bench.strategies.local import (
    EWC,
    KFACEWC,
    L2,
    MAS,
    SI,
    EWCParams,
    KFACParams,
    L2Params,
    MASParams,
    OnlineEWC,
    OnlineEWCParams,
    QuadraticExact,
    QuadraticExactParams,
    SIParams,
)

CLASSES = [[0, 2], [1, 3]]  # not contiguous: labels must be mapped to output positions


def scenario(setting: str = "task_il", n: int = 24, seed: int = 0) -> Scenario:
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for t, cls in enumerate(CLASSES):
        def draw(m: int) -> tuple[Tensor, Tensor]:
            y = torch.tensor(cls)[torch.randint(0, 2, (m,), generator=g)]
            x = torch.randint(0, 256, (m, 1, 2, 3), generator=g, dtype=torch.uint8)
            x[:, 0, 0, 0] = (y * 60).to(torch.uint8)  # learnable signal
            return x, y
        tasks.append(Task(t, cls, *draw(n), *draw(n)))
    return Scenario("toy", setting, tasks, 4, (1, 2, 3), (0.4,), (0.3,))


def build(cls, params=None, head: str = "single", mask: bool = False, double: bool = True, lr: float = 0.1):
    torch.manual_seed(0)
    sc = scenario()
    backbone = build_model({"name": "mlp", "widths": [5], "activation": "tanh", "head": head}, (1, 2, 3), 4,
                           sc.task_classes())
    module = cls(backbone, sc, params, OptimizerConfig(lr=lr), mask_train_logits=mask)
    return (module.double() if double else module), sc


def inputs(module, task: Task) -> Tensor:
    return to_float(task.x_train, _norm_stats(module.data_mean, module.data_std, "cpu")).to(module.anchors.dtype)


def flat_grad_of(scalar: Tensor, module) -> Tensor:
    ps = module.network()
    gs = torch.autograd.grad(scalar, ps, allow_unused=True, retain_graph=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, ps)])


def brute_exact_fisher(module, task: Task) -> Tensor:
    """1/N sum_i sum_{c in task} p(c|x_i) g_ic^2 on the training loss's own (masked) logits, one sample at a time."""
    x, total = inputs(module, task), 0
    for i in range(len(x)):
        logp = module.train_logits(x[i:i + 1], torch.tensor([task.id])).log_softmax(-1)[0]
        classes = task.classes if torch.isinf(logp).any() or logp.min() < -1e8 else range(len(logp))
        for c in classes:
            total = total + logp[c].exp().detach() * flat_grad_of(logp[c], module).square()
    return total / len(x)


@torch.no_grad()
def jump(module, scale: float = 0.3, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in module.network():
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def finish(module, task: Task) -> None:
    module.before_task(task)
    module.after_task(task)


# --------------------------------------------------------------- diagonal family
@pytest.mark.parametrize(("head", "mask"), [("single", False), ("single", True), ("multi", False)])
def test_ewc_keeps_one_exact_fisher_and_anchor_per_task(head: str, mask: bool) -> None:
    module, sc = build(EWC, EWCParams(lam=3.0, samples=None, probe_batch_size=7), head, mask)
    fishers, anchors = [], []
    for task in sc.tasks:
        fishers.append(brute_exact_fisher(module, task))
        anchors.append(module.theta().detach().clone())
        finish(module, task)
        jump(module, seed=task.id)
    torch.testing.assert_close(module.curv_diag, torch.stack(fishers), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(module.anchors, torch.stack(anchors))
    theta = module.theta().detach()
    want = 1.5 * sum((f * (theta - a).square()).sum() for f, a in zip(fishers, anchors))
    torch.testing.assert_close(module.penalty(), want)


def test_online_ewc_decays_one_running_fisher_with_one_anchor() -> None:
    module, sc = build(OnlineEWC, OnlineEWCParams(lam=2.0, gamma=0.7, samples=None))
    f0 = brute_exact_fisher(module, sc.tasks[0])
    finish(module, sc.tasks[0])
    jump(module)
    f1, anchor = brute_exact_fisher(module, sc.tasks[1]), module.theta().detach().clone()
    finish(module, sc.tasks[1])
    jump(module, seed=1)
    assert module.anchors.shape == (1, module.n_params) and module.curv_diag.shape == (1, module.n_params)
    torch.testing.assert_close(module.curv_diag[0], 0.7 * f0 + f1, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(module.anchors[0], anchor)
    theta = module.theta().detach()
    torch.testing.assert_close(module.penalty(), ((0.7 * f0 + f1) * (theta - anchor).square()).sum())


def anchors_then_jump(module, sc) -> list[Tensor]:
    """Consolidate every task, moving theta randomly after each; the anchors theta_o* in order."""
    anchors = []
    for task in sc.tasks:
        anchors.append(module.theta().detach().clone())
        finish(module, task)
        jump(module, seed=task.id)
    return anchors


def test_l2_is_the_identity_curvature() -> None:
    module, sc = build(L2, L2Params(lam=4.0))
    anchors = anchors_then_jump(module, sc)
    theta = module.theta().detach()
    torch.testing.assert_close(module.penalty(), 2.0 * sum((theta - a).square().sum() for a in anchors))


def test_mas_accumulates_output_norm_sensitivity() -> None:
    module, sc = build(MAS, MASParams(lam=1.0, samples=None), head="multi")
    omegas = []
    for task in sc.tasks:
        x, t = inputs(module, task), torch.tensor([task.id])
        logits = [module(x[i:i + 1], t)[0, task.classes] for i in range(len(x))]
        omegas.append(sum(flat_grad_of(z.square().sum(), module).abs() for z in logits) / len(x))
        finish(module, task)
        jump(module, seed=task.id)
    torch.testing.assert_close(module.curv_diag[0], omegas[0] + omegas[1], rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ structured
def kfac_dense(module, o: int) -> Tensor:
    """The block-diagonal A (x) G of task o, laid out in the flat parameter order."""
    dense = torch.zeros(module.n_params, module.n_params, dtype=torch.float64)
    for i, b in enumerate(module.blocks):
        w = torch.arange(b.weight.start, b.weight.stop).view(b.out_features, b.in_features)
        cols = torch.cat([w, torch.arange(b.bias.start, b.bias.stop)[:, None]], 1)
        idx = cols.T.reshape(-1)  # vec([W, b]) stacks columns
        k = torch.kron(getattr(module, f"curv_A{i}")[o], getattr(module, f"curv_G{i}")[o])
        dense[idx[:, None], idx[None, :]] = k
    return dense


@pytest.mark.parametrize("head", ["single", "multi"])
def test_kfac_penalty_equals_the_dense_kronecker_quadratic(head: str) -> None:
    module, sc = build(KFACEWC, KFACParams(lam=3.0, samples=None), head)
    anchors = anchors_then_jump(module, sc)
    theta = module.theta().detach()
    want = 1.5 * sum((theta - a) @ kfac_dense(module, o) @ (theta - a) for o, a in enumerate(anchors))
    torch.testing.assert_close(module.penalty(), want, rtol=1e-10, atol=1e-12)
    assert module.penalty() > 0


def test_quadratic_exact_hessian_is_the_second_order_taylor_model() -> None:
    """Stored H = Hessian of the task's mean loss at theta*; the penalty (lam=1) is 1/2 D^T H D, which is
    L(theta* + D) - L(theta*) - g^T D up to O(|D|^3): the remainder shrinks 8x when D halves."""
    module, sc = build(QuadraticExact, QuadraticExactParams(lam=1.0, curvature="hessian", samples=None), "multi")
    task = sc.tasks[1]
    module.before_task(task)
    x, t = inputs(module, task), torch.full((task.n_train,), task.id)
    theta0 = module.theta().detach().clone()
    ps = module.network()

    def loss(theta: Tensor) -> Tensor:
        chunks, i = [], 0
        for p in ps:
            chunks.append(theta[i:i + p.numel()].view_as(p))
            i += p.numel()
        named = {n: c for (n, _), c in zip([(n, p) for n, p in module.backbone.named_parameters()], chunks)}
        logits = torch.func.functional_call(module.backbone, named, (x, t))
        return F.cross_entropy(logits, task.y_train)

    hess = torch.func.hessian(loss)(theta0)
    grad0 = torch.func.grad(loss)(theta0)
    module.after_task(task)
    torch.testing.assert_close(module.curv_sum, hess, rtol=1e-8, atol=1e-10)
    direction = torch.randn(module.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for eps in (1e-3, 5e-4):
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta0 + eps * direction, ps)
        taylor = loss(theta0 + eps * direction) - loss(theta0) - eps * grad0 @ direction
        errors.append((module.penalty() - taylor).abs().item())
        assert module.penalty().item() == pytest.approx(taylor.item(), rel=0.02)
    assert errors[1] / errors[0] == pytest.approx(1 / 8, rel=0.05)


def test_quadratic_exact_expanded_sum_equals_the_sum_over_past_tasks() -> None:
    """u^T A u + 2 u^T g + c (one product per step) == sum_o (theta - theta_o*)^T F_o (theta - theta_o*),
    and its gradient is lam * sum_o F_o (theta - theta_o*)."""
    module, sc = build(QuadraticExact, QuadraticExactParams(lam=3.0, curvature="ggn", samples=None), "multi")
    curvatures, anchors = [], []
    for task in sc.tasks:
        module.before_task(task)
        module.eval()
        curvatures.append(module.importance(task)["dense"])
        anchors.append(module.theta().detach().clone())
        module.after_task(task)
        jump(module, seed=task.id)
    theta = module.theta().detach()
    want = 1.5 * sum((theta - a) @ f @ (theta - a) for f, a in zip(curvatures, anchors))
    torch.testing.assert_close(module.penalty(), want, rtol=1e-10, atol=1e-12)
    assert len(curvatures) == len(sc.tasks) >= 2 and want > 0
    grad_want = 3.0 * sum(f @ (theta - a) for f, a in zip(curvatures, anchors))
    torch.testing.assert_close(flat_grad_of(module.penalty(), module), grad_want, rtol=1e-10, atol=1e-12)


def test_quadratic_exact_refuses_large_models_naming_max_params() -> None:
    with pytest.raises(ValueError, match=r"P=59 .*max_params=40"):
        build(QuadraticExact, QuadraticExactParams(max_params=40))
    module, _ = build(QuadraticExact, QuadraticExactParams(max_params=59))
    assert module.n_params == 59


# --------------------------------------------------------------- SI under Lightning
class PathRecorder(L.Callback):
    """Independently accumulates -sum_t g_t * d_t with g_t the task loss's gradient (recomputed on the
    batch) and with the total gradient (read from .grad)."""

    def __init__(self) -> None:
        self.omega_task = self.omega_total = 0
        self.penalised_steps = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batch = batch

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        x, y, t = self.batch
        with torch.enable_grad():
            self.g_task = flat_grad_of(F.cross_entropy(module.train_logits(x, t), y), module)
        self.g_total = grad_vector(module.network()).clone()
        self.penalised_steps += int(not torch.allclose(self.g_task, self.g_total))
        self.before = module.theta().detach().clone()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        d = module.theta().detach() - self.before
        self.omega_task = self.omega_task - self.g_task * d
        self.omega_total = self.omega_total - self.g_total * d


@pytest.mark.parametrize(("omega_grad", "clip"), [("task", None), ("total", None), ("task", 1e-3)])
def test_si_importance_is_the_path_integral_of_a_real_training_run(omega_grad: str, clip: float | None) -> None:
    """With ``clip`` the penalty (and so the closed-form gradient ``task`` subtracts) uses min(Omega, clip)."""
    module, sc = build(SI, SIParams(lam=50.0, xi=0.2, omega_grad=omega_grad, clip=clip), double=False, lr=0.2)
    big_omega = 0
    for task in sc.tasks:
        module.before_task(task)
        start = module.theta().detach().clone()
        rec = PathRecorder()
        batches = TaskBatches(task.x_train, task.y_train, torch.full((task.n_train,), task.id), 6,
                              device="cpu", seed=task.id, mean=sc.mean, std=sc.std)
        L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, callbacks=[rec]).fit(module, train_dataloaders=batches)
        omega = rec.omega_task if omega_grad == "task" else rec.omega_total
        torch.testing.assert_close(module.omega, omega, rtol=1e-5, atol=1e-7)
        # 12 steps; the gradients differ once a penalty exists, except at the first step (theta = anchor)
        assert rec.penalised_steps == (11 if task.id else 0)
        module.after_task(task)
        delta = module.theta().detach() - start
        big_omega = big_omega + omega / (delta.square() + 0.2)
        torch.testing.assert_close(module.curv_diag[0], big_omega, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(module.anchors[0], module.theta().detach())
    assert (big_omega.abs() > 1e-4).sum() > module.n_params // 2
    if clip is not None:  # the cap is active, and only in the penalty: Omega itself is kept whole
        assert (big_omega > clip).sum() > 5
        torch.testing.assert_close(module.penalty_importance()[0], big_omega.clamp(max=clip), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ checkpoints
STRATEGIES = [
    (L2, L2Params(lam=1.0)), (EWC, EWCParams(samples=20)), (OnlineEWC, OnlineEWCParams(samples=20)),
    (SI, SIParams()), (MAS, MASParams(samples=20)), (KFACEWC, KFACParams(samples=20)),
    (QuadraticExact, QuadraticExactParams(samples=20)),
]


@pytest.mark.parametrize(("cls", "params"), STRATEGIES, ids=lambda v: getattr(v, "__name__", ""))
def test_state_dict_round_trip_reproduces_the_penalty(cls, params) -> None:
    module, sc = build(cls, params, head="multi")
    for task in sc.tasks:
        module.before_task(task)
        if isinstance(module, SI):  # a path to integrate
            module.omega.fill_(0.3)
        module.after_task(task)
        jump(module, seed=task.id)
    fresh, _ = build(cls, params, head="multi")
    assert fresh.penalty() == 0
    fresh.load_state_dict(module.state_dict())
    assert fresh.penalty().item() == pytest.approx(module.penalty().item(), rel=1e-12) and module.penalty() > 0
    assert fresh.state_bytes() == module.state_bytes() > 0 or cls is L2


def test_bad_hyper_parameters_name_the_key() -> None:
    with pytest.raises(ValueError, match="fisher='diag'"):
        EWCParams(fisher="diag")
    with pytest.raises(ValueError, match="samples must be >= 1 or null"):
        MASParams(samples=0)
    with pytest.raises(ValueError, match="omega_grad='both'"):
        SIParams(omega_grad="both")
    with pytest.raises(ValueError, match="xi must be > 0"):
        SIParams(xi=0.0)
    with pytest.raises(ValueError, match="curvature='fisher'"):
        QuadraticExactParams(curvature="fisher")


# ---------------------------------------------------------------------- runner
def test_every_local_strategy_runs_in_the_runner_and_reports_its_memory(tmp_path: Path) -> None:
    labels = ["l2", "ewc", "online_ewc", "si", "mas", "kfac_ewc"]
    overrides = ["scenario.n_tasks=2", "trainer.epochs=1", "trainer.train_loss_probe=50", "settings=[task_il]",
                 "model=mlp_100", f"strategy=[{','.join(labels)}]", f"output.dir={tmp_path}", "checks.enabled=false",
                 "strategies.ewc.samples=100"]
    results = {r.label: r for r in execute(build_plan(load_config(overrides)))}
    assert all(r.status == "ok" and r.metrics["acc"] > 0.8 for r in results.values())
    p = 4 * sum(n for n in (64 * 100 + 100, 100 * 100 + 100, 100 * 10 + 10))  # mlp_100 on 8x8, float32 bytes
    assert results["ewc"].strategy_memory_bytes == [2 * p, 4 * p]  # (anchor, Fisher) per task
    assert results["online_ewc"].strategy_memory_bytes == [2 * p] * 2  # one running pair
    assert results["si"].strategy_memory_bytes == [4 * p] * 2  # + omega and the task's start point
    with pytest.raises(ConfigError, match="quadratic_exact.*max_params=5000"):
        prepare(build_plan(load_config([*overrides[:5], "strategy=quadratic_exact", f"output.dir={tmp_path}"])))
