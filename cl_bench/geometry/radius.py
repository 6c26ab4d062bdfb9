"""Validity radius of the second-order model (check C6) and the perturbation score.

Along a unit direction u: dL(r) = L(theta* + r u) - L(theta*) against the model
q(r) = r g^T u + r^2 u^T H u / 2; relative error e(r) = |dL - q| / max(|dL|, |q|, eps).
Two-sided curves (eigenvectors, random directions) take the worse of +r and -r
(odd third-order terms); the curve along the update actually taken, u = D / ||D||,
is one-sided (+r only: the path). r*(u) is the largest grid radius up to which every
e <= tol (inf when the whole grid passes, 0 when the smallest radius already fails).

Perturbation score: s(r) = E_eig(r) / E_rand(r), with E_eig(r) the mean over the top
eigenvectors v_i of the even part of the loss change,
    e(r, u) = [L(theta* + r u) + L(theta* - r u)] / 2 - L(theta*) = r^2 u^T H u / 2 + O(r^4),
and E_rand(r) the same mean over random unit directions: how much more a step of length r along
the sharp directions costs than a step in a random direction. The even part drops g^T u r, which
at an anchor that is not a minimum would otherwise decide the sign of E_rand at small r.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

#: losses_along(theta [P], dirs [D, P], steps [S]) -> [S, D]: L(theta + s u) for every step and direction
#: (:meth:`~cl_bench.geometry.objective.Objective.losses_along`)
LossesAlong = Callable[[Tensor, Tensor, Tensor], Tensor]


def radius_curve(losses_along: LossesAlong, theta: Tensor, loss0: float, slope: float, curvature: float,
                 u: Tensor, radii: Sequence[float], tol: float, eps: float,
                 two_sided: bool = True) -> dict[str, Any]:
    """e(r) on the grid and r*(u) for one unit direction u with slope g^T u and curvature u^T H u
    (every point of the curve in one call of ``losses_along``)."""
    radii = sorted(radii)
    steps = [s for r in radii for s in ((r, -r) if two_sided else (r,))]
    along = losses_along(theta, u[None], torch.tensor(steps, dtype=theta.dtype, device=theta.device))  # [S, 1]
    changes_all = (along[:, 0].double() - loss0).tolist()
    errors, changes = [], []
    per_radius = 2 if two_sided else 1
    for i in range(len(radii)):
        err = 0.0
        for s, dl in zip(steps[i * per_radius:(i + 1) * per_radius], changes_all[i * per_radius:(i + 1) * per_radius]):
            q = s * slope + 0.5 * s * s * curvature
            err = max(err, abs(dl - q) / max(abs(dl), abs(q), eps))
            if s > 0:
                changes.append(dl)
        errors.append(err)
    r_star = math.inf
    for i, err in enumerate(errors):
        if err > tol:
            r_star = radii[i - 1] if i else 0.0
            break
    return {"radii": list(radii), "rel_error": errors, "loss_change": changes, "r_star": r_star,
            "slope": slope, "curvature": curvature}


def perturbation_score(losses_along: LossesAlong, theta: Tensor, loss0: float, eigvecs: Tensor,
                       n_random: int, radii: Sequence[float], seed: int) -> dict[str, Any]:
    """s(r) = E_eig(r) / E_rand(r) over the columns of ``eigvecs`` and ``n_random`` random unit directions
    (every point, +-r along every direction at every radius, in one call of ``losses_along``)."""
    radii = sorted(radii)
    gen = torch.Generator().manual_seed(seed)
    rand = [torch.randn(theta.numel(), generator=gen, dtype=torch.float64).to(theta) for _ in range(n_random)]
    rand = [u / u.norm() for u in rand]
    eig = list(eigvecs.T)
    dirs = torch.stack(eig + rand) if eig or rand else theta.new_zeros(0, theta.numel())  # [D, P]
    r = torch.tensor(radii, dtype=theta.dtype, device=theta.device)
    along = losses_along(theta, dirs, torch.stack([r, -r], 1).flatten()).double()  # [2R, D]: +r_1, -r_1, ...
    even = (along.view(len(radii), 2, -1).sum(1) / 2 - loss0).tolist()  # [R][D]

    def mean_change(row: list[float], cols: slice) -> float:
        vals = row[cols]
        return sum(vals) / len(vals) if vals else math.nan

    e_eig = [mean_change(row, slice(0, len(eig))) for row in even]
    e_rand = [mean_change(row, slice(len(eig), None)) for row in even]
    score = [a / b if b and math.isfinite(a) and math.isfinite(b) and b != 0 else math.nan
             for a, b in zip(e_eig, e_rand)]
    return {"radii": list(radii), "E_eig": e_eig, "E_rand": e_rand, "score": score,
            "n_eig": len(eig), "n_random": n_random}
