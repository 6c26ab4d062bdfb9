"""Shared pieces of the speed benchmarks: the same work done three ways.

- :func:`raw_loop`: a plain PyTorch loop over the same device-resident tensors
  (one SGD optimiser per task, shuffled index batches, evaluation of every
  task after every task) — the floor any framework is measured against.
- :func:`avalanche_split`: the same tasks as an Avalanche benchmark (tensors
  behind a map-style dataset, so Avalanche pays no PIL or disk cost).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.data import Scenario, TaskBatches, iterate_eval


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (after one warm-up call) and the last result."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def mlp_matmul_flops(widths: list[int], n_train: int, n_eval: int) -> float:
    """Multiply-add FLOPs of the matrix products of training an MLP (``widths`` = input, hidden..., output) on
    ``n_train`` samples and evaluating it on ``n_eval``: forward 2 * in * out per layer and sample; backward
    the weight gradient of every layer and the input gradient of all but the first (its input needs none)."""
    layers = list(zip(widths[:-1], widths[1:]))
    forward = sum(2 * a * b for a, b in layers)
    backward = forward + sum(2 * a * b for a, b in layers[1:])
    return float(n_train * (forward + backward) + n_eval * forward)


def gemm_rate(size: int = 2048, repeats: int = 5) -> float:
    """The best float32 matrix-product rate (FLOP/s) of this process's threads: an n x n product, best of
    ``repeats``; no implementation of a GEMM-bound protocol can run its products faster."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b, 1)[0] for _ in range(repeats))
    return 2 * size**3 / best


@torch.no_grad()
def accuracy_row(model: nn.Module, scenario: Scenario, device: str, batch_size: int = 1024) -> list[float]:
    model.eval()
    row = []
    for task in scenario.tasks:
        correct = 0
        for x, y in iterate_eval(task.x_test, task.y_test, batch_size, device, scenario.mean, scenario.std):
            correct += (model(x).argmax(1) == y).sum().item()
        row.append(correct / task.n_test)
    model.train()
    return row


def raw_loop(
    scenario: Scenario,
    make_model: Callable[[], nn.Module],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    epochs: int,
    batch_size: int,
    device: str,
    seed: int,
    method: str = "naive",
    lam: float = 0.0,
    fisher_samples: int = 1024,
    buffer_size: int = 0,
    replay_batch: int = 0,
) -> list[list[float]]:
    """Naive fine-tuning, EWC or ER written as a plain PyTorch loop; returns the accuracy matrix.

    - ``ewc``: loss + lam/2 * sum_o F_o (theta - theta_o*)^2, F_o the empirical Fisher (true labels) of
      ``fisher_samples`` random training samples of task o (per-sample gradients with ``torch.func``).
    - ``er``: the batch concatenated with ``replay_batch`` examples drawn from a reservoir buffer of
      ``buffer_size`` examples, filled with every batch (batched Algorithm R).
    Like cl-bench's runner it also evaluates the untrained model once (the ``b[j]`` row that forward
    transfer needs), so both do the same work.
    """
    torch.manual_seed(seed)
    model = make_model().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    accuracy_row(model, scenario, device)
    anchors: list[Tensor] = []
    fishers: list[Tensor] = []
    buf_x = buf_y = None
    seen = 0
    rows = []
    for task in scenario.tasks:
        opt = make_optimizer(model)
        batches = TaskBatches(task.x_train, task.y_train, task.id, batch_size, device=device, seed=seed,
                              mean=scenario.mean, std=scenario.std)
        for _ in range(epochs):
            for x, y, _t in batches:
                xin, yin = x, y
                if method == "er" and seen > 0:
                    pick = torch.randint(min(seen, buffer_size), (replay_batch,), device=device)
                    xin, yin = torch.cat([x, buf_x[pick]]), torch.cat([y, buf_y[pick]])
                loss = F.cross_entropy(model(xin), yin)
                if anchors:
                    theta = torch.cat([p.reshape(-1) for p in params])
                    loss = loss + 0.5 * lam * sum((f * (theta - a).square()).sum() for f, a in zip(fishers, anchors))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if method == "er":
                    if buf_x is None:
                        buf_x = x.new_zeros((buffer_size, *x.shape[1:]))
                        buf_y = y.new_zeros(buffer_size)
                    pos = seen + torch.arange(len(y), device=device)
                    slot = torch.where(pos < buffer_size, pos,
                                       (torch.rand(len(y), device=device) * (pos + 1)).long())
                    keep = slot < buffer_size
                    buf_x[slot[keep]], buf_y[slot[keep]] = x[keep], y[keep]
                    seen += len(y)
        if method == "ewc":
            anchors.append(torch.cat([p.detach().reshape(-1) for p in params]))
            fishers.append(empirical_fisher(model, task, scenario, fisher_samples, device))
        rows.append(accuracy_row(model, scenario, device))
    return rows


def empirical_fisher(model: nn.Module, task: Any, scenario: Scenario, samples: int, device: str) -> Tensor:
    """mean_i (d log p(y_i | x_i) / d theta)^2 over ``samples`` random training samples, flat ``[P]``."""
    from torch.func import functional_call, grad, vmap

    named = {n: p.detach() for n, p in model.named_parameters()}
    idx = torch.randperm(task.n_train)[:samples]

    def nll(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (x[None],)), y[None])

    model.eval()
    total = None
    for x, y in iterate_eval(task.x_train[idx], task.y_train[idx], 64, device, scenario.mean, scenario.std):
        g = vmap(grad(nll), in_dims=(None, 0, 0))(named, x, y)
        part = torch.cat([g[n].square().sum(0).reshape(-1) for n in named])
        total = part if total is None else total + part
    model.train()
    return total / len(idx)


class _TensorDataset(torch.utils.data.Dataset):
    """Float tensors with a ``targets`` list, the shape Avalanche's generators accept."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y
        self.targets = y.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], self.targets[i]


def _normalised(x: Tensor, scenario: Scenario) -> Tensor:
    """What the scenario's batches hold: pixels / 255, then mean/std unless the scenario has none."""
    x = x.float() / 255
    if not scenario.mean:
        return x
    return (x - torch.tensor(scenario.mean).view(1, -1, 1, 1)) / torch.tensor(scenario.std).view(1, -1, 1, 1)


def avalanche_split(scenario: Scenario) -> Any:
    """The scenario's tasks (class-incremental, fixed class order) as an Avalanche benchmark."""
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark

    tasks = scenario.tasks
    train = _TensorDataset(
        _normalised(torch.cat([t.x_train for t in tasks]), scenario), torch.cat([t.y_train for t in tasks])
    )
    test = _TensorDataset(
        _normalised(torch.cat([t.x_test for t in tasks]), scenario), torch.cat([t.y_test for t in tasks])
    )
    order = [c for t in scenario.tasks for c in t.classes]
    return nc_benchmark(train, test, n_experiences=scenario.n_tasks, task_labels=False, fixed_class_order=order)


def avalanche_final_accuracies(strategy: Any, benchmark: Any) -> list[list[float]]:
    """Train an Avalanche strategy through the stream; accuracy matrix from its evaluator."""
    rows = []
    for exp in benchmark.train_stream:
        strategy.train(exp, num_workers=0)
        res = strategy.eval(benchmark.test_stream, num_workers=0)
        n_exp = len(benchmark.test_stream)
        rows.append([res[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"] for j in range(n_exp)])
    return rows
