"""Anchor-time Hessian-Lipschitz constant M_o and radius r_o of the Taylor remainder.

Taylor's theorem with integral remainder along D = theta - theta_o*:
L(theta_o* + D) = L(theta_o*) + g^T D + D^T H_o D / 2 + R,
R = int_0^1 (1 - s) D^T (H(theta_o* + s D) - H_o) D ds.
If ||H(theta_o* + w) - H_o||_2 <= M ||w|| for ||w|| <= r, then |R| <= M ||D||^3 / 6
for ||D|| <= r. M is estimated once, at the end of task o, from products at
points of the ball: q(u, r) = ||(H(theta_o* + r u) - H_o) u|| / r (one Hessian-vector
product per point) for unit directions u and radii r on a grid. The directions
start at the top eigenvectors of H_o, the gradient g_o and random vectors, and
are refined by a few steps of the higher-order power method on the third
derivative tensor T (u <- T[u, u, .] / ||T[u, u, .]||), which climbs towards the
direction of T's spectral norm, the constant the remainder needs at small radii.
The running maximum M(r) = max_{u, r' <= r} q(u, r') is "stable" while it stays
within ``stability`` x max(M(r_1), floor) of its value at the smallest radius,
floor = 1000 eps ||H_o u||_max / r_1 being the size of a quotient made of
rounding errors alone; r_o is the largest such grid radius, and
M_o = ``safety`` x max(M(r_o), floor). Both are estimates (a maximum over
sampled directions, not over the ball): the soundness battery tests them.
Below r_1 nothing is sampled, so the certificates bound the Hessian's change
there by its change at r_1 (see ``PairChecks.remainder_bound``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .objective import Objective


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


def _quotients(objective: Objective, theta: Tensor, dirs: Tensor, radii: Sequence[float]) -> tuple[Tensor, Tensor]:
    """(H(theta + r u) - H_o) u / r for every direction u (rows of ``dirs`` [S, P]) and radius r [R]
    -> [S, R, P], and H_o u [S, P]: one batched call of S x (R + 1) products, H_o u among them."""
    r = torch.tensor([0.0, *radii], dtype=theta.dtype, device=theta.device)  # [R + 1]
    hu = objective.hvps_along(theta, dirs, r).transpose(0, 1)  # [S, R + 1, P]
    return (hu[:, 1:] - hu[:, :1]) / r[1:, None], hu[:, 0]


def hessian_lipschitz(objective: Objective, theta: Tensor, eigvecs: Tensor, n_eig: int, n_random: int,
                      radii: Sequence[float], stability: float, safety: float, seed: int,
                      grad: Tensor | None = None, power_iters: int = 2) -> dict[str, Any]:
    """M_o, r_o and the quotient curves at the anchor ``theta`` (see the module docstring).

    Start directions: the top ``n_eig`` eigenvectors, the gradient direction g_o / ||g_o|| (when given
    and non-zero) and ``n_random`` random unit vectors. Each start is refined by ``power_iters`` steps
    u <- w / ||w||, w = (H(theta + r_1 u) - H_o) u / r_1 ~ T[u, u, .] (T the third-derivative tensor):
    the higher-order power method towards the direction of the largest ||T[u, u, .]||, the spectral norm
    of T that bounds the remainder at small radii for every D (a start whose w is 0 or not finite keeps
    its direction). Each refined direction is then scanned over every radius. Quotients met during the
    refinement count at r_1. The products of all starts are batched (:meth:`Objective.hvps`).
    """
    gen = torch.Generator().manual_seed(seed)
    starts: list[tuple[str, Tensor]] = [(f"v{i + 1}", eigvecs[:, i]) for i in range(min(n_eig, eigvecs.shape[1]))]
    if grad is not None and float(grad.norm()) > 0:
        starts.append(("grad", grad / grad.norm()))
    for j in range(n_random):
        u = torch.randn(theta.numel(), generator=gen, dtype=torch.float64).to(theta)
        starts.append((f"random{j + 1}", u / u.norm()))
    radii = sorted(float(r) for r in radii)
    if not starts:
        return {"M": math.inf, "r": 0.0, "quotients": {}, "hvp": 0, "running_max": [], "radii": radii}
    dirs = torch.stack([u for _, u in starts])  # [S, P]
    n, h0_max = 0, 0.0
    first: list[list[float]] = [[] for _ in starts]
    refining = torch.ones(len(starts), dtype=torch.bool)
    for _ in range(power_iters):
        idx = refining.nonzero().flatten()
        if not len(idx):
            break
        w, h0u = _quotients(objective, theta, dirs[idx], radii[:1])
        n += 2 * len(idx)
        h0_max = max(h0_max, float(h0u.norm(dim=1).max()))
        norms = w[:, 0].norm(dim=1)
        for i, norm in zip(idx.tolist(), norms.tolist()):
            first[i].append(norm)
            refining[i] = norm > 0 and math.isfinite(norm)
        grow = refining[idx]
        dirs[idx[grow]] = w[grow, 0] / norms[grow, None]
    w, h0u = _quotients(objective, theta, dirs, radii)
    n += len(starts) * (len(radii) + 1)
    h0_max = max(h0_max, float(h0u.norm(dim=1).max()))
    quotients: dict[str, list[float]] = {}
    for (name, _), curve, met in zip(starts, w.norm(dim=2).tolist(), first):
        curve[0] = max([curve[0], *met])
        quotients[name] = curve
    floor = 1000 * torch.finfo(theta.dtype).eps * h0_max / radii[0]
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
