"""Anchor-time Hessian-Lipschitz constant M_o and radius r_o of the Taylor remainder.

Taylor's theorem with integral remainder along D = theta - theta_o*:
L(theta_o* + D) = L(theta_o*) + g^T D + D^T H_o D / 2 + R,
R = int_0^1 (1 - s) D^T (H(theta_o* + s D) - H_o) D ds.
If ||H(theta_o* + w) - H_o||_2 <= M ||w|| for ||w|| <= r, then |R| <= M ||D||^3 / 6
for ||D|| <= r. M is estimated once, at the end of task o, from products at
points of the ball: q(u, r) = ||(H(theta_o* + r u) - H_o) u|| / r (one Hessian-vector
product per point) for unit directions u (top eigenvectors of H_o and random
ones) and radii r on a grid. The running maximum M(r) = max_{u, r' <= r} q(u, r')
is "stable" while it stays within ``stability`` x max(M(r_1), floor) of its
value at the smallest radius, floor = 1000 eps ||H_o u||_max / r_1 being the
size of a quotient made of rounding errors alone; r_o is the largest such grid
radius, and M_o = ``safety`` x max(M(r_o), floor). Both are estimates (a maximum over sampled
directions, not over the ball): the soundness battery tests them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .objective import Objective
from .operators import HessianOperator


def lipschitz_quotients(objective: Objective, theta: Tensor, directions: Sequence[tuple[str, Tensor]],
                        radii: Sequence[float]) -> tuple[dict[str, list[float]], int, float]:
    """q(u, r) for each named unit direction and radius; the number of Hessian-vector products; max ||H_o u||."""
    h0 = HessianOperator(objective, theta)
    out: dict[str, list[float]] = {}
    n, h0_max = 0, 0.0
    for name, u in directions:
        h0u = h0.matvec(u)
        h0_max = max(h0_max, float(h0u.norm()))
        qs = []
        for r in radii:
            hr = HessianOperator(objective, theta + r * u)
            qs.append(float((hr.matvec(u) - h0u).norm()) / r)
            n += hr.n_matvec
        out[name] = qs
    return out, n + h0.n_matvec, h0_max


def stable_constant(quotients: dict[str, list[float]], radii: Sequence[float], stability: float,
                    safety: float, floor: float = 0.0) -> dict[str, Any]:
    """M_o and r_o from the quotients (see the module docstring); r_o = 0 and M_o = inf when none is finite."""
    order = sorted(range(len(radii)), key=lambda i: radii[i])
    running, m_r = 0.0, []
    for i in order:
        running = max([running, *(q[i] for q in quotients.values())])
        m_r.append(running)
    r_o, m_o = 0.0, math.inf
    if quotients and m_r and math.isfinite(m_r[0]):
        base = max(m_r[0], floor, 1e-300)
        for j, i in enumerate(order):
            if not (math.isfinite(m_r[j]) and m_r[j] <= stability * base):
                break
            r_o, m_o = float(radii[i]), safety * max(m_r[j], floor)
    return {"M": m_o, "r": r_o, "running_max": m_r, "radii": [float(radii[i]) for i in order],
            "stability": stability, "safety": safety, "floor": floor}


def hessian_lipschitz(objective: Objective, theta: Tensor, eigvecs: Tensor, n_eig: int, n_random: int,
                      radii: Sequence[float], stability: float, safety: float, seed: int) -> dict[str, Any]:
    """M_o, r_o and the quotient curves at the anchor ``theta`` (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    dirs: list[tuple[str, Tensor]] = [(f"v{i + 1}", eigvecs[:, i]) for i in range(min(n_eig, eigvecs.shape[1]))]
    for j in range(n_random):
        u = torch.randn(theta.numel(), generator=gen, dtype=torch.float64).to(theta)
        dirs.append((f"random{j + 1}", u / u.norm()))
    if not dirs:
        return {"M": math.inf, "r": 0.0, "quotients": {}, "hvp": 0, "running_max": [], "radii": list(radii)}
    quotients, n, h0_max = lipschitz_quotients(objective, theta, dirs, radii)
    floor = 1000 * torch.finfo(theta.dtype).eps * h0_max / min(radii)
    out = stable_constant(quotients, radii, stability, safety, floor)
    out.update(quotients=quotients, hvp=n)
    return out


def gauss_legendre_remainder(loss_hessian_quadratic: Any, d: Tensor, n: int = 8) -> float:
    """int_0^1 (1 - s) D^T (H(theta_o* + s D) - H_o) D ds by n-point Gauss-Legendre quadrature;
    ``loss_hessian_quadratic(s)`` returns D^T H(theta_o* + s D) D."""
    nodes, weights = legendre_nodes(n, d.dtype)
    h0 = loss_hessian_quadratic(0.0)
    return float(sum(0.5 * w * (1 - 0.5 * (x + 1)) * (loss_hessian_quadratic(0.5 * (float(x) + 1)) - h0)
                     for x, w in zip(nodes.tolist(), weights.tolist())))


def legendre_nodes(n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre nodes and weights on [-1, 1] (Golub-Welsch: eigenvalues of the Jacobi matrix)."""
    k = torch.arange(1, n, dtype=torch.float64)
    beta = k / torch.sqrt(4 * k**2 - 1)
    jacobi = torch.diag(beta, 1) + torch.diag(beta, -1)
    nodes, vecs = torch.linalg.eigh(jacobi)
    return nodes.to(dtype), (2 * vecs[0] ** 2).to(dtype)
