"""Hutchinson trace estimation, optionally deflated by an orthonormal basis.

tr(A) = E[z^T A z] for z with E[z z^T] = I (Hutchinson 1990); with Rademacher z
Var(z^T A z) = 2 (||A||_F^2 - sum_i A_ii^2). Deflation (the idea of Hutch++,
Meyer et al. 2021): for orthonormal V [P, k],
tr(A) = tr(V^T A V) + tr((I - V V^T) A (I - V V^T)), and the first term is exact
(k products, or none for Ritz vectors: V^T A V = diag(Ritz values) by Rayleigh-Ritz),
so only the remainder, without the large top eigenvalues, is sampled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TraceEstimate:
    """``trace`` estimate, its standard error (sample std / sqrt(m)), the exact deflated part, products used."""

    trace: float
    std_error: float
    deflated: float
    samples: list[float]
    n_matvec: int


def hutchinson_trace(matvec: Callable[[Tensor], Tensor], dim: int, n_probes: int, *, basis: Tensor | None = None,
                     basis_trace: float | None = None, seed: int = 0, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> TraceEstimate:
    """tr(A) ~ tr(V^T A V) + (1/m) sum_j z_j^T (I - VV^T) A (I - VV^T) z_j, z_j Rademacher (V optional;
    ``basis_trace`` = tr(V^T A V) when already known)."""
    if n_probes < 2:
        raise ValueError(f"hutchinson_trace needs n_probes >= 2 for an error estimate, got {n_probes}")
    gen = torch.Generator().manual_seed(seed)
    n_matvec = 0
    deflated = 0.0
    if basis is not None and basis_trace is not None:
        deflated = basis_trace
    elif basis is not None and basis.shape[1] > 0:
        av = torch.stack([matvec(c) for c in basis.T], dim=1)
        deflated = float(torch.einsum("pk,pk->", basis, av))
        n_matvec += basis.shape[1]

    def project(z: Tensor) -> Tensor:
        return z - basis @ (basis.T @ z) if basis is not None and basis.shape[1] > 0 else z

    samples = []
    for _ in range(n_probes):
        z = project((torch.randint(0, 2, (dim,), generator=gen) * 2 - 1).to(device=device, dtype=dtype))
        samples.append(float(z @ project(matvec(z))))
        n_matvec += 1
    s = torch.tensor(samples, dtype=torch.float64)
    return TraceEstimate(deflated + float(s.mean()), float(s.std() / n_probes**0.5), deflated, samples, n_matvec)
