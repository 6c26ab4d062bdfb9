"""Validity radius of the second-order model (check C6).

Along a unit direction u: dL(r) = L(theta* + r u) - L(theta*) against the model
q(r) = r g^T u + r^2 u^T H u / 2; relative error e(r) = |dL - q| / max(|dL|, |q|, eps),
taken as the worse of +r and -r (odd third-order terms). r*(u) is the largest grid
radius up to which every e <= tol (inf when the whole grid passes, 0 when the
smallest radius already fails); r* = min_u r*(u).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor


def radius_curve(loss: Callable[[Tensor], float], theta: Tensor, loss0: float, slope: float, curvature: float,
                 u: Tensor, radii: Sequence[float], tol: float, eps: float) -> dict[str, float | list[float]]:
    """e(r) on the grid and r*(u) for one unit direction u with slope g^T u and curvature u^T H u."""
    radii = sorted(radii)
    errors = []
    for r in radii:
        err = 0.0
        for s in (r, -r):
            dl = loss(theta + s * u) - loss0
            q = s * slope + 0.5 * s * s * curvature
            err = max(err, abs(dl - q) / max(abs(dl), abs(q), eps))
        errors.append(err)
    r_star = math.inf
    for i, err in enumerate(errors):
        if err > tol:
            r_star = radii[i - 1] if i else 0.0
            break
    return {"radii": list(radii), "rel_error": errors, "r_star": r_star, "slope": slope, "curvature": curvature}
