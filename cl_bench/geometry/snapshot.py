"""Curvature snapshot of a task at its end: anchor, probe objective, gradient, top-k spectrum, trace, radius.

Computed once per task o (docs/guarantees.md, "Snapshot") and kept for every
later check of o: theta_o*, L_o on the probe set S_o, g_o, the top k+1
eigenpairs of H_o (Lanczos; lambda_{k+1} enters the C4 sandwich), the smallest
Ritz value (C1), a deflated Hutchinson trace (C3, C12), the validity-radius
curves along the top eigenvectors and random directions (C6) with the
perturbation score s(r), the descriptive landscape numbers (C12), and what the
certificates rest on: the strategy's declared isolation mask and the
Hessian-Lipschitz constant M_o with its radius r_o (:mod:`.remainder`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .config import ChecksConfig
from .hutchinson import hutchinson_trace
from .lanczos import lanczos
from .objective import Objective
from .operators import make_operator
from .radius import perturbation_score, radius_curve
from .remainder import hessian_lipschitz


@dataclass
class Snapshot:
    """What is kept of task o (tensors stay in memory; ``record`` is the JSON part)."""

    task: int
    theta: Tensor
    objective: Objective
    loss: float
    grad: Tensor
    eigvals: Tensor  # all computed Ritz values, descending
    eigvecs: Tensor  # [P, k_stored] orthonormal
    lambda_min: float
    lambda_min_converged: bool
    trace: float
    trace_std_error: float
    radius: float | None  # r* of C6 (inf: valid on the whole grid), None when not computed
    columns: list[int] | None = None  # outputs task o's loss uses (None: all)
    record: dict[str, Any] = field(default_factory=dict)
    isolated: Tensor | None = None  # bool [P]: parameters task o's outputs depend on, declared at its end
    lipschitz_M: float = math.inf  # anchor-time Hessian-Lipschitz estimate M_o (inf: not estimated)
    lipschitz_r: float = 0.0  # radius r_o where M_o holds (0: nowhere)
    lipschitz_r1: float = 0.0  # smallest sampled radius r_1 (below it the variation bound applies)

    @property
    def lambda_1(self) -> float:
        return float(self.eigvals[0])

    @property
    def k(self) -> int:
        return int(self.eigvecs.shape[1])

    @property
    def lambda_next(self) -> float:
        """lambda_{k+1} (or the last computed Ritz value, an upper bound on it, when no more were computed)."""
        return float(self.eigvals[min(self.k, len(self.eigvals) - 1)])


def take_snapshot(objective: Objective, theta: Tensor, task: int, cfg: ChecksConfig, k_store: int | None = None,
                  columns: list[int] | None = None, isolated: Tensor | None = None) -> Snapshot:
    """Snapshot of ``objective`` at ``theta``; keeps ``k_store`` (default ``cfg.k``) eigenvectors;
    ``isolated``: the strategy's declared bool mask [P] of the parameters task ``task`` depends on."""
    theta = theta.detach().clone()
    cost: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    loss, grad = objective.loss_and_grad(theta)
    op = make_operator(cfg.curvature, objective, theta)
    res = lanczos(op.matvec, objective.dim, cfg.k + 1, max_iter=cfg.lanczos_iters, tol=cfg.lanczos_tol,
                  seed=cfg.seed + task, device=theta.device, dtype=theta.dtype)
    cost["lanczos"] = {"hvp": res.n_matvec, "seconds": time.perf_counter() - t0}
    k_store = min(cfg.k if k_store is None else k_store, res.eigvecs.shape[1])
    lambda_min_ok = res.lambda_min_residual <= cfg.lanczos_tol * max(abs(float(res.eigvals[0])), 1e-30)

    trace, trace_se = math.nan, math.nan
    if cfg.wants("C3") or cfg.wants("C12"):
        t0, before = time.perf_counter(), op.n_matvec
        tr = hutchinson_trace(op.matvec, objective.dim, cfg.hutchinson_probes, basis=res.eigvecs,
                              basis_trace=float(res.eigvals.sum()), seed=cfg.seed + task,
                              device=theta.device, dtype=theta.dtype)
        trace, trace_se = tr.trace, tr.std_error
        cost["hutchinson"] = {"hvp": op.n_matvec - before, "seconds": time.perf_counter() - t0}

    snap = Snapshot(task, theta, objective, loss, grad, res.eigvals.detach().clone(),
                    res.eigvecs[:, :k_store].clone(), res.lambda_min, lambda_min_ok, trace, trace_se, None,
                    columns)
    if isolated is not None:
        if isolated.shape != theta.shape or isolated.dtype != torch.bool:
            raise ValueError(f"isolated_mask({task}) must be a bool tensor of shape {tuple(theta.shape)}, "
                             f"got {isolated.dtype} {tuple(isolated.shape)}")
        snap.isolated = isolated.detach().to(theta.device).clone()
    radius_rec = score = None
    if cfg.wants("C6"):
        t0, before = time.perf_counter(), op.n_matvec
        radius_rec = validity_radius(snap, op.matvec, cfg)
        snap.radius = radius_rec["r_star"]
        n_eig = min(cfg.score_eigvecs, snap.k)
        if n_eig and cfg.score_random:
            score = perturbation_score(objective.losses_along, theta, loss, snap.eigvecs[:, :n_eig], cfg.score_random,
                                       cfg.score_radii, cfg.seed + 104729 * (task + 1))
        cost["radius"] = {"hvp": op.n_matvec - before, "seconds": time.perf_counter() - t0}
    lip = None
    if cfg.certificates:
        t0 = time.perf_counter()
        lip = hessian_lipschitz(objective, theta, snap.eigvecs, cfg.lipschitz_eigvecs, cfg.lipschitz_random,
                                cfg.lipschitz_radii, cfg.lipschitz_stability, cfg.lipschitz_safety,
                                cfg.seed + 15485863 * (task + 1), grad if cfg.lipschitz_gradient else None,
                                cfg.lipschitz_power)
        snap.lipschitz_M, snap.lipschitz_r, snap.lipschitz_r1 = lip["M"], lip["r"], min(cfg.lipschitz_radii)
        cost["hessian_lipschitz"] = {"hvp": lip.pop("hvp"), "seconds": time.perf_counter() - t0}
    snap.record = {
        "task": task, "n_probe": objective.n, "n_params": objective.dim, "curvature": cfg.curvature,
        "loss": loss, "grad_norm": float(grad.norm()),
        "eigvals": [float(v) for v in res.eigvals], "eigval_residuals": [float(v) for v in res.residuals],
        "k_stored": k_store, "lanczos_matvecs": res.n_matvec, "lanczos_converged": res.converged,
        "lambda_min": res.lambda_min, "lambda_min_residual": res.lambda_min_residual,
        "lambda_min_converged": lambda_min_ok,
        "trace": trace, "trace_std_error": trace_se, "radius": radius_rec, "perturbation_score": score,
        "hessian_lipschitz": lip, "n_isolated": None if snap.isolated is None else int(snap.isolated.sum()),
        "cost": cost,
    }
    return snap


def validity_radius(snap: Snapshot, matvec: Any, cfg: ChecksConfig) -> dict[str, Any]:
    """C6 curves along the top ``radius_eigvecs`` eigenvectors and ``radius_random`` random unit directions."""
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * (snap.task + 1))
    directions: list[tuple[str, Tensor, float]] = []
    for i in range(min(cfg.radius_eigvecs, snap.k)):
        directions.append((f"v{i + 1}", snap.eigvecs[:, i], float(snap.eigvals[i])))
    for j in range(cfg.radius_random):
        u = torch.randn(snap.theta.numel(), generator=gen, dtype=torch.float64).to(snap.theta)
        u = u / u.norm()
        directions.append((f"random{j + 1}", u, float(u @ matvec(u))))
    curves = {}
    for name, u, curv in directions:
        curves[name] = radius_curve(snap.objective.losses_along, snap.theta, snap.loss, float(snap.grad @ u), curv, u,
                                    cfg.radii, cfg.radius_tol, cfg.loss_eps)
    r_star = min((c["r_star"] for c in curves.values()), default=math.inf)
    return {"r_star": r_star, "r_max_tested": max(cfg.radii), "tol": cfg.radius_tol, "directions": curves}
