"""Isolation family, shared part: the toy task sequence, training and leakage helpers used by the
other ``test_isolation_*`` files, and the linear algebra (QR of a union, GPM's energy criterion)
against brute force."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor

from cl_bench.data import Scenario, Task, TaskBatches, iterate_eval
from cl_bench.models import build_model
from cl_bench.module import ContinualModule, OptimizerConfig
from cl_bench.runner import fit_phases, quiet_lightning
from cl_bench.strategies.isolation import (
    GPM,
    OGD,
    GPMParams,
    OGDParams,
    OrthogonalSGD,
    OrthogonalSGDParams,
    gpm_extend,
    orthonormal_union,
    project_out,
)

CLASSES = [[0, 2], [1, 3], [4, 5]]  # not contiguous: task-IL masks must follow the class lists
SHAPE = (1, 2, 3)


def toy_scenario(setting: str = "task_il", n: int = 48, n_tasks: int = 3, seed: int = 0) -> Scenario:
    """Tiny learnable tasks: the class is written into one pixel, the others are noise."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for t, cls in enumerate(CLASSES[:n_tasks]):
        def draw(m: int) -> tuple[Tensor, Tensor]:
            y = torch.tensor(cls)[torch.randint(0, 2, (m,), generator=g)]
            x = torch.randint(0, 256, (m, *SHAPE), generator=g, dtype=torch.uint8)
            x[:, 0, 0, t % 3] = (y * 40).to(torch.uint8)
            return x, y
        tasks.append(Task(t, cls, *draw(n), *draw(n)))
    return Scenario("toy", setting, tasks, 6, SHAPE, (0.4,), (0.3,))


def build(cls: type[ContinualModule], params: Any = None, setting: str = "task_il", widths: tuple[int, ...] = (8, 6),
          head: str = "single", optimizer: OptimizerConfig | None = None, n_tasks: int = 3) -> ContinualModule:
    torch.manual_seed(0)
    sc = toy_scenario(setting, n_tasks=n_tasks)
    backbone = build_model({"name": "mlp", "widths": list(widths), "activation": "tanh", "head": head}, SHAPE,
                           sc.n_outputs, sc.task_classes())
    module = cls(backbone, sc, params, optimizer or OptimizerConfig(lr=0.1))
    module.scenario = sc  # the tests' handle on the tasks (a plain attribute, not module state)
    return module


def lightning_trainer(epochs: int = 2, callbacks: list | None = None, precision: str = "64-true") -> L.Trainer:
    """A barebones CPU Trainer as the runner builds it (float64 by default, for exact comparisons)."""
    quiet_lightning()
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, precision=precision, barebones=True,
                     callbacks=callbacks, num_sanity_val_steps=0, limit_val_batches=0)


def task_batches(module: ContinualModule, task: Task, batch_size: int = 16) -> TaskBatches:
    sc = module.scenario
    return TaskBatches(task.x_train, task.y_train, task.id, batch_size, seed=task.id, mean=sc.mean, std=sc.std)


def fit_task(module: ContinualModule, task: Task, epochs: int = 2, callbacks: list | None = None) -> None:
    """before_task -> a real Lightning fit per phase of the task (the runner's fit_phases) -> after_task."""
    module.before_task(task)
    module.train()  # Lightning keeps the mode it finds (an evaluation may have left eval mode on)
    fit_phases(module, task, task_batches(module, task),
               lambda phase: lightning_trainer(phase.epochs or epochs, callbacks))
    module.after_task(task)


def flat(module: ContinualModule) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.backbone.parameters()])


def all_inputs(module, task, split: str = "train") -> tuple[Tensor, Tensor]:
    sc = module.scenario
    x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
    xb, yb = next(iterate_eval(x, y, len(y), "cpu", sc.mean, sc.std))
    return xb.double(), yb


def grad_vector(module, scalar: Tensor) -> Tensor:
    ps = list(module.backbone.parameters())
    gs = torch.autograd.grad(scalar, ps, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, ps)])


def protected_share(module, d: Tensor) -> float:
    """||P d|| / ||d||: the part of an update inside the stored basis (computed from the buffers directly)."""
    if isinstance(module, GPM):
        parts, i = [], 0
        pieces = d.split([p.numel() for p in module.projected_parameters()])
        for l, lin in enumerate(module.layers):
            w, b = pieces[i].view_as(lin.weight), pieces[i + 1]
            i += 2
            parts.append(torch.cat([w, b[:, None]], dim=1) @ module.basis(l))
        return float(torch.cat([q.reshape(-1) for q in parts]).norm() / d.norm())
    return float((module.basis.T @ d).norm() / d.norm())


class StepRecorder(L.Callback):
    """theta after minus theta before every optimiser step (read between consecutive batch starts)."""

    def __init__(self) -> None:
        self.steps: list[Tensor] = []
        self.prev: Tensor | None = None

    def _mark(self, module) -> None:
        theta = flat(module)
        if self.prev is not None:
            self.steps.append(theta - self.prev)
        self.prev = theta

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._mark(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._mark(pl_module)


def steps_of(module, task, epochs: int = 2) -> list[Tensor]:
    rec = StepRecorder()
    fit_task(module, task, epochs=epochs, callbacks=[rec])
    return [d for d in rec.steps if d.norm() > 0]


def without_basis(module):
    """A copy of the module that fine-tunes freely from the same point (its bases emptied)."""
    naive = copy.deepcopy(module)
    names = [n for n, _ in naive.named_buffers() if n == "basis" or n.startswith("basis_")]
    for n in names:
        setattr(naive, n, getattr(naive, n)[:, :0])
    return naive


STRATEGIES = {
    "ogd": (OGD, OGDParams(samples=24, variant="all_logits")),
    "gpm": (GPM, GPMParams(threshold=0.95, samples=48)),
    "orthogonal_sgd": (OrthogonalSGD, OrthogonalSGDParams(k=6, samples=1000, lanczos_tol=1e-8)),
}


# ------------------------------------------------------------------ linear algebra
def dense_projector(a: Tensor) -> Tensor:
    """A A^+: the orthogonal projector onto the column span of A."""
    return a @ torch.linalg.pinv(a, rtol=1e-10)


def test_qr_of_a_union_is_the_dense_projector_onto_the_span() -> None:
    g = torch.Generator().manual_seed(0)
    p = 30
    a1 = torch.randn(p, 4, generator=g, dtype=torch.float64)
    # the second block repeats a direction of the first and has an internal dependency: rank 5 in all
    a2 = torch.cat([a1[:, :1] * 2 - a1[:, 1:2], torch.randn(p, 2, generator=g, dtype=torch.float64)], dim=1)
    a2 = torch.cat([a2, a2[:, 1:2] + a2[:, 2:3]], dim=1)
    basis = orthonormal_union(torch.zeros(p, 0, dtype=torch.float64), a1)
    basis = orthonormal_union(basis, a2)
    union = torch.cat([a1, a2], dim=1)
    assert basis.shape == (p, int(torch.linalg.matrix_rank(union))) == (p, 6)
    torch.testing.assert_close(basis.T @ basis, torch.eye(6, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(basis @ basis.T, dense_projector(union), atol=1e-10, rtol=0)
    # the projection removes exactly the span: (I - P) v == v - A A^+ v
    v = torch.randn(p, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(project_out(basis, v), v - dense_projector(union) @ v, atol=1e-10, rtol=0)
    assert project_out(basis, v).T.matmul(union).abs().max() < 1e-10


def test_union_with_vectors_already_in_the_span_adds_nothing_even_in_float32() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, 5, generator=g)
    basis = orthonormal_union(torch.zeros(200, 0), a)
    again = orthonormal_union(basis, a @ torch.randn(5, 7, generator=g))
    assert again.shape == (200, 5)
    assert (basis.T @ basis - torch.eye(5)).abs().max() < 1e-5


def brute_gpm_k(reps: Tensor, basis: Tensor, threshold: float) -> int:
    """Smallest k of the GPM criterion by enumeration over k (criterion written out in full)."""
    total = torch.linalg.matrix_norm(reps) ** 2
    proj = basis @ basis.T @ reps
    u, s, vh = torch.linalg.svd(reps - proj, full_matrices=False)
    for k in range(s.numel() + 1):
        approx = u[:, :k] @ torch.diag(s[:k]) @ vh[:k]  # best rank-k approximation of R_hat
        if torch.linalg.matrix_norm(proj) ** 2 + torch.linalg.matrix_norm(approx) ** 2 >= threshold * total:
            return k
    raise AssertionError("criterion never met")


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.99])
def test_gpm_extend_takes_the_smallest_basis_meeting_the_energy_threshold(threshold: float) -> None:
    g = torch.Generator().manual_seed(2)
    reps1 = torch.randn(12, 5, generator=g, dtype=torch.float64) @ torch.diag(torch.tensor([5.0, 3, 1, 0.5, 0.1],
                                                                                        dtype=torch.float64)) \
        @ torch.randn(5, 40, generator=g, dtype=torch.float64)
    m1 = gpm_extend(torch.zeros(12, 0, dtype=torch.float64), reps1, threshold)
    assert m1.shape[1] == brute_gpm_k(reps1, torch.zeros(12, 0, dtype=torch.float64), threshold)
    reps2 = torch.randn(12, 30, generator=g, dtype=torch.float64)
    m2 = gpm_extend(m1, reps2, threshold)
    assert m2.shape[1] - m1.shape[1] == brute_gpm_k(reps2, m1, threshold)
    torch.testing.assert_close(m2.T @ m2, torch.eye(m2.shape[1], dtype=torch.float64), atol=1e-10, rtol=0)
    # representations already explained by the basis add nothing
    inside = m2 @ torch.randn(m2.shape[1], 9, generator=g, dtype=torch.float64)
    assert gpm_extend(m2, inside, threshold).shape == m2.shape
