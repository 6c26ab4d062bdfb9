"""Linear mode connectivity of a past task's loss (check C11).

Barrier along the segment theta(a) = (1 - a) theta_a + a theta_b (Frankle et al. 2020, Def. 1):
B = max_a [ L((1 - a) theta_a + a theta_b) - ((1 - a) L(theta_a) + a L(theta_b)) ].
B ~ 0: theta_b is in theta_a's linearly connected basin. The layer-wise variant
moves one layer at a time: theta_l(a) = theta_a + a P_l (theta_b - theta_a), P_l
selecting layer l's coordinates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor


def barrier(loss: Callable[[Tensor], float], theta_a: Tensor, theta_b: Tensor, alphas: Sequence[float],
            loss_a: float | None = None, loss_b: float | None = None) -> dict[str, float | list[float]]:
    """B over the interior grid ``alphas`` (endpoints contribute 0), with the loss curve."""
    la = loss(theta_a) if loss_a is None else loss_a
    lb = loss(theta_b) if loss_b is None else loss_b
    d = theta_b - theta_a
    curve = [loss(theta_a + a * d) for a in alphas]
    gaps = [lc - ((1 - a) * la + a * lb) for a, lc in zip(alphas, curve)]
    return {"barrier": max([0.0, *gaps]), "alphas": list(alphas), "loss": curve, "loss_a": la, "loss_b": lb}


def layerwise_barriers(loss: Callable[[Tensor], float], theta_a: Tensor, theta_b: Tensor,
                       groups: Sequence[tuple[str, slice]], alphas: Sequence[float],
                       loss_a: float | None = None) -> dict[str, float]:
    """B_l of the path that moves only layer l from theta_a towards theta_b; layers that do not move get 0."""
    la = loss(theta_a) if loss_a is None else loss_a
    out: dict[str, float] = {}
    for name, sl in groups:
        if not bool((theta_b[sl] != theta_a[sl]).any()):
            out[name] = 0.0
            continue
        end = theta_a.clone()
        end[sl] = theta_b[sl]
        b = barrier(loss, theta_a, end, alphas, loss_a=la)["barrier"]
        out[name] = float(b) if isinstance(b, (int, float)) else max(b)
    return out
