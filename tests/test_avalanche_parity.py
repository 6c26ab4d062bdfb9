"""Parity with a peer: Avalanche's EWCPlugin and SynapticIntelligencePlugin on the same model state,
data and training trajectory as our EWC / online EWC / SI — equal where the definitions agree, and
the exact difference where they do not.

Differences, shown by the tests:
- Avalanche's EWC importance is the mean over minibatches of the squared minibatch-mean gradient:
  with minibatch size 1 it is our ``empirical`` Fisher; with size B it is a different estimator
  (cross terms of B samples; about 1/B of it for uncorrelated gradients), our ``fisher: batch``.
- Avalanche's EWC penalty is lambda * sum F D^2 (no 1/2): ours with lam = 2 lambda.
- Avalanche's SI uses the total gradient (ours: ``omega_grad: total``) and clips the importance
  at 0.001 from above (``after_training_exp`` passes ``clip_to=0.001``; ours: ``clip: 0.001``,
  default: not clipped, as in the paper).
- On a CPU model Avalanche's SI snapshots alias the live parameters and its importance is zero
  (a bug, shown below); the parity test copies the snapshots, as ``.cpu()`` does on CUDA.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from cl_bench.data import Scenario, Task, TaskBatches
from cl_bench.data.batching import _norm_stats, to_float
from cl_bench.geometry.fisher import TaskOutputs, per_sample_grads
from cl_bench.models import build_model
from cl_bench.module import OptimizerConfig
from cl_bench.strategies.local import EWC, SI, EWCParams, OnlineEWC, OnlineEWCParams, SIParams

avalanche_plugins = pytest.importorskip("avalanche.training.plugins")
from avalanche.training.plugins.evaluation import EvaluationPlugin  # noqa: E402
from avalanche.training.supervised import Naive  # noqa: E402
from avalanche.training.utils import copy_params_dict  # noqa: E402

CLASSES = [[0, 1], [2, 3]]


def scenario(n: int = 30) -> Scenario:
    g = torch.Generator().manual_seed(0)
    tasks = []
    for t, cls in enumerate(CLASSES):
        def draw() -> tuple[Tensor, Tensor]:
            y = torch.tensor(cls)[torch.randint(0, 2, (n,), generator=g)]
            x = torch.randint(0, 256, (n, 1, 2, 3), generator=g, dtype=torch.uint8)
            x[:, 0, 0, 0] = (y * 60).to(torch.uint8)
            return x, y
        tasks.append(Task(t, cls, *draw(), *draw()))
    return Scenario("toy", "class_il", tasks, 4, (1, 2, 3), (0.4,), (0.3,))


def build(cls, params, double: bool = True):
    torch.manual_seed(0)
    sc = scenario()
    backbone = build_model({"name": "mlp", "widths": [5], "activation": "tanh"}, (1, 2, 3), 4, sc.task_classes())
    module = cls(backbone, sc, params, OptimizerConfig(lr=0.2))
    return (module.double() if double else module), sc


def avalanche_strategy(module, plugin) -> Naive:
    """A real Avalanche strategy around our backbone: the object Avalanche's plugin hooks read."""
    return Naive(model=module.backbone, optimizer=torch.optim.SGD(module.backbone.parameters(), lr=0.2),
                 criterion=nn.CrossEntropyLoss(), plugins=[plugin], device="cpu", evaluator=EvaluationPlugin())


def dataset(module, task: Task) -> TensorDataset:
    x = to_float(task.x_train, _norm_stats(module.data_mean, module.data_std, "cpu")).to(module.anchors.dtype)
    return TensorDataset(x, task.y_train, torch.full((task.n_train,), task.id))


def flat(d: dict) -> Tensor:
    return torch.cat([v.data.reshape(-1) for v in d.values()])


@torch.no_grad()
def jump(module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in module.network():
        p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.fixture
def float64_default():
    """Avalanche allocates its importances with ``torch.zeros`` (the default dtype): make that float64 too."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_ewc_minibatch_1_importance_is_our_empirical_fisher_and_penalties_agree(mode: str, float64_default) -> None:
    lam = 3.0
    if mode == "separate":
        ours, sc = build(EWC, EWCParams(lam=2 * lam, fisher="empirical", samples=None))
        plugin = avalanche_plugins.EWCPlugin(lam)
    else:
        ours, sc = build(OnlineEWC, OnlineEWCParams(lam=2 * lam, gamma=0.6, fisher="empirical", samples=None))
        plugin = avalanche_plugins.EWCPlugin(lam, mode="online", decay_factor=0.6)
    strategy = avalanche_strategy(ours, plugin)
    for task in sc.tasks:  # what EWCPlugin.after_training_exp does, on the same model state and data
        imp = plugin.compute_importances(ours.backbone, nn.CrossEntropyLoss(), strategy.optimizer,
                                         dataset(ours, task), "cpu", batch_size=1)
        plugin.update_importances(imp, task.id)
        plugin.saved_params[task.id] = copy_params_dict(ours.backbone)
        ours.before_task(task)
        ours.after_task(task)
        torch.testing.assert_close(flat(plugin.importances[task.id]), ours.curv_diag[-1], rtol=1e-10, atol=1e-14)
        jump(ours, task.id)
    strategy.clock.train_exp_counter = len(sc.tasks)
    strategy.loss = torch.zeros((), dtype=torch.float64)
    plugin.before_backward(strategy)
    # Avalanche sums its penalty into a float32 tensor (``torch.tensor(0).float()``)
    assert strategy.loss.item() == pytest.approx(ours.penalty().item(), rel=1e-6)
    assert strategy.loss.item() > 0


def test_ewc_minibatch_importance_is_the_squared_batch_mean_gradient_not_the_fisher(float64_default) -> None:
    ours, sc = build(EWC, EWCParams(fisher="empirical", samples=None))
    task, b = sc.tasks[0], 4
    plugin = avalanche_plugins.EWCPlugin(1.0)
    strategy = avalanche_strategy(ours, plugin)
    imp = flat(plugin.compute_importances(ours.backbone, nn.CrossEntropyLoss(), strategy.optimizer,
                                          dataset(ours, task), "cpu", batch_size=b))
    x = dataset(ours, task).tensors[0]
    ours.eval()
    g = per_sample_grads(TaskOutputs(ours.backbone, 0, None), x, task.y_train)  # [N, P] (our code)
    batch_means = torch.stack([g[i:i + b].mean(0) for i in range(0, task.n_train, b)])
    torch.testing.assert_close(imp, batch_means.square().mean(0), rtol=1e-10, atol=1e-14)
    fisher = g.square().mean(0)
    assert imp.sum() < 0.6 * fisher.sum()  # far below the empirical Fisher: not the same estimator
    # our ``batch`` estimator (kept to reproduce Avalanche's tables) is exactly Avalanche's
    same, _ = build(EWC, EWCParams(fisher="batch", samples=None, probe_batch_size=b))
    same.before_task(task)
    same.after_task(task)
    torch.testing.assert_close(same.curv_diag[-1], imp, rtol=1e-10, atol=1e-14)


def unalias(store: dict) -> None:
    """Give ParamData its own copy: what ``param.detach().cpu().flatten()`` returns on a CUDA model."""
    for v in store.values():
        v.data = v.data.clone()


class AvalancheSIHooks(L.Callback):
    """Calls SynapticIntelligencePlugin's per-iteration hooks around every step of our Lightning run;
    ``copy``: detach the snapshot from the live parameters, as on a CUDA device."""

    def __init__(self, plugin, strategy, copy: bool) -> None:
        self.plugin, self.strategy, self.copy = plugin, strategy, copy

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.plugin.before_training_iteration(self.strategy)
        if self.copy:
            unalias(self.plugin.syn_data["old_theta"])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.plugin.after_training_iteration(self.strategy)


def train_both(ours, sc, plugin, strategy, task: Task, copy: bool) -> None:
    ours.before_task(task)
    plugin.before_training_exp(strategy)
    if copy:
        unalias(plugin.ewc_data[0])
    batches = TaskBatches(task.x_train, task.y_train, torch.full((task.n_train,), task.id), 5,
                          device="cpu", seed=task.id, mean=sc.mean, std=sc.std)
    L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[AvalancheSIHooks(plugin, strategy, copy)]).fit(ours, batches)
    plugin.after_training_exp(strategy)
    ours.after_task(task)


def test_avalanche_si_on_cpu_snapshots_aliases_of_the_parameters_and_integrates_zero() -> None:
    """``extract_weights`` stores ``param.detach().cpu().flatten()``: on CPU a view of the live parameter,
    so old_theta and new_theta are the same storage, every step's update reads as 0, and SI's
    importance (and, through the aliased anchor, its penalty) is identically zero."""
    ours, sc = build(SI, SIParams(lam=4.0, xi=0.05, omega_grad="total"), double=False)
    plugin = avalanche_plugins.SynapticIntelligencePlugin(si_lambda=4.0, eps=0.05)
    strategy = avalanche_strategy(ours, plugin)
    train_both(ours, sc, plugin, strategy, sc.tasks[0], copy=False)
    assert flat(plugin.syn_data["cum_trajectory"]).abs().max() == 0 and flat(plugin.ewc_data[1]).abs().max() == 0
    assert ours.curv_diag.abs().max() > 0
    assert plugin.syn_data["old_theta"]["body.1.weight"].data.data_ptr() == ours.backbone.body[1].weight.data_ptr()


def test_si_matches_avalanche_and_its_importance_clipping() -> None:
    xi, lam = 0.05, 4.0
    ours, sc = build(SI, SIParams(lam=lam, xi=xi, omega_grad="total", clip=0.001), double=False)
    plugin = avalanche_plugins.SynapticIntelligencePlugin(si_lambda=lam, eps=xi)
    strategy = avalanche_strategy(ours, plugin)
    for task in sc.tasks:
        train_both(ours, sc, plugin, strategy, task, copy=True)
        omega = ours.curv_diag[0]
        # the same path integral, cumulative over tasks (Avalanche keeps -Omega before clipping) ...
        torch.testing.assert_close(-flat(plugin.syn_data["cum_trajectory"]), omega, rtol=2e-4, atol=1e-6)
        # ... and the same clipped importance in the penalty (``clip: 0.001``)
        torch.testing.assert_close(flat(plugin.ewc_data[1]), ours.penalty_importance()[0], rtol=2e-4, atol=1e-6)
        torch.testing.assert_close(flat(plugin.ewc_data[0]), ours.anchors[0])
    assert (omega > 0.001).sum() > 5  # the clipping is active here
    jump(ours, 0)
    theirs = plugin.compute_ewc_loss(ours.backbone, plugin.ewc_data, set(), "cpu", lambd=lam)
    d = ours.theta().detach() - ours.anchors[0]
    assert theirs.item() == pytest.approx(ours.penalty().item(), rel=1e-5)
    assert theirs.item() < 0.9 * (lam / 2 * (omega * d.square()).sum()).item()  # unclipped (the paper's) is larger
