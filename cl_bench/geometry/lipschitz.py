"""Lipschitz bounds of the logits w.r.t. the input (check C12).

Lower bound: L >= max_n ||J_f(x_n)||_2, J_f(x) = df/dx, over probe samples (any
differentiable f: the local slope never exceeds the global constant).
Upper bound for a feed-forward chain f = A_L o s o ... o s o A_1 with 1-Lipschitz
activations s: L <= prod_l ||A_l||_2 (Szegedy et al. 2014, Sec. 4.3). Linear
layers use the exact spectral norm; other affine layers (convolutions, BatchNorm
in eval mode, average pools) use power iteration on J^T J, which approaches
||A||_2 from below (so for them the product is an estimate, not a certified bound).
Residual blocks are not a chain: the upper bound is then reported as unavailable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

_ONE_LIPSCHITZ = (nn.ReLU, nn.Tanh, nn.Identity, nn.Flatten, nn.Dropout)
_AFFINE = (nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def lipschitz_lower(f: Callable[[Tensor], Tensor], x: Tensor) -> float:
    """max_n ||J_f(x_n)||_2; one backward pass per output column (samples are independent in eval mode)."""
    xl = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = f(xl)
        rows = [torch.autograd.grad(z[:, c].sum(), xl, retain_graph=True)[0].flatten(1) for c in range(z.shape[1])]
    jac = torch.stack(rows, dim=1)  # [B, C, D_in]
    return float(torch.linalg.matrix_norm(jac.double(), ord=2).max())


def _power_norm(layer: nn.Module, shape: Sequence[int], iters: int, like: Tensor) -> float:
    """||J||_2 of an affine layer by power iteration on J^T J (J constant, taken at 0)."""
    x0 = torch.zeros((1, *shape), dtype=like.dtype, device=like.device)
    _, vjp_fn = torch.func.vjp(layer, x0)[:2]
    v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(x0)
    sigma = 0.0
    for _ in range(iters):
        v = v / v.norm()
        jv = torch.func.jvp(layer, (x0,), (v,))[1]
        sigma = float(jv.norm())
        v = vjp_fn(jv)[0]
    return sigma


def lipschitz_upper(chain: Sequence[nn.Module], head_weight: Tensor, x: Tensor, power_iters: int
                    ) -> tuple[float | None, str | None]:
    """prod_l ||A_l||_2 over ``chain`` (then the head's weight rows), or ``(None, reason)``."""
    shapes: list[torch.Size] = []
    h = x[:1]
    with torch.no_grad():
        for layer in chain:
            shapes.append(h.shape[1:])
            h = layer(h)
    bound = float(torch.linalg.matrix_norm(head_weight.detach().double(), ord=2))
    for layer, shape in zip(chain, shapes):
        if isinstance(layer, nn.Linear):
            bound *= float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2))
        elif isinstance(layer, _AFFINE):
            bound *= _power_norm(layer, shape, power_iters, x)
        elif isinstance(layer, nn.MaxPool2d) and layer.stride == layer.kernel_size and layer.dilation == 1:
            continue  # non-overlapping max pool is 1-Lipschitz
        elif not isinstance(layer, _ONE_LIPSCHITZ):
            return None, f"{type(layer).__name__} is not a supported chain layer (residual blocks need another bound)"
    return bound, None
