"""Top-k eigenpairs (largest algebraic) of a symmetric operator: Lanczos with full reorthogonalisation.

Golub & Van Loan, *Matrix Computations* (4th ed.), Alg. 10.1.1 (Lanczos) with
complete reorthogonalisation (Sec. 10.3.1) applied twice per step ("twice is
enough", Parlett 1998, Sec. 6.9). After m steps, A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T
with T_m tridiagonal; the Ritz pairs (theta_i, Q_m s_i) of T_m = S diag(theta) S^T have
residual ||A y_i - theta_i y_i|| = |beta_m| |s_{m,i}| (Thm. 10.1.4), which is the stopping test.
An invariant subspace (beta ~ 0) restarts with a fresh random vector orthogonal to Q,
so repeated eigenvalues and rank-deficient operators still yield their full top-k.
Everything runs in torch on the operator's device; T_m is diagonalised in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LanczosResult:
    """``eigvals`` [k] descending, ``eigvecs`` [P, k] orthonormal, their residual norms [k];
    the smallest Ritz value (an upper bound on lambda_min) with its residual; products used."""

    eigvals: Tensor
    eigvecs: Tensor
    residuals: Tensor
    lambda_min: float
    lambda_min_residual: float
    n_matvec: int
    converged: bool


def _orthogonalise(w: Tensor, q: Tensor) -> Tensor:
    """W <- (I - Q^T Q) w twice, rows of q orthonormal."""
    for _ in range(2):
        w = w - q.T @ (q @ w)
    return w


def _random_unit(dim: int, q: Tensor, generator: torch.Generator, like: Tensor) -> Tensor:
    v = torch.randn(dim, generator=generator, dtype=torch.float64).to(like)
    v = _orthogonalise(v, q) if q.shape[0] else v
    return v / v.norm()


def lanczos(matvec: Callable[[Tensor], Tensor], dim: int, k: int, *, max_iter: int = 100, tol: float = 1e-3,
            with_min: bool = True, seed: int = 0, device: torch.device | str = "cpu",
            dtype: torch.dtype = torch.float32) -> LanczosResult:
    """The k largest algebraic eigenpairs of the symmetric operator ``matvec`` on R^dim.

    Stops when every wanted Ritz pair (and the smallest one when ``with_min``)
    has residual <= tol * max|theta|, when the Krylov space reaches ``max_iter``
    or ``dim``; ``converged`` says which. A numerically invariant block
    (beta <= tol * max|theta|: every pair in it has converged) hides repeated
    eigenvalues from a single start vector, so it is followed by a fresh block in
    its orthogonal complement until a block adds nothing above the current k-th
    value (nor below the current minimum).
    """
    if k < 1:
        raise ValueError(f"lanczos needs k >= 1, got {k}")
    if max_iter < 1:
        raise ValueError(f"lanczos max_iter must be >= 1, got {max_iter}")
    k = min(k, dim)
    m_max = min(max(max_iter, k), dim)
    gen = torch.Generator().manual_seed(seed)
    like = torch.empty(0, dtype=dtype, device=device)
    q_rows = torch.empty(min(m_max, 2 * k + 8), dim, dtype=dtype, device=device)  # grows by doubling
    alpha = torch.zeros(m_max, dtype=torch.float64)
    beta = torch.zeros(m_max, dtype=torch.float64)  # beta[j] couples q_j and q_{j+1}
    q = _random_unit(dim, q_rows[:0], gen, like)
    converged, m, block_start = False, 0, 0
    previous: tuple[float, float] | None = None  # (k-th largest, smallest) of the blocks before the current one
    for j in range(m_max):
        if j == q_rows.shape[0]:
            q_rows = torch.cat([q_rows, torch.empty(min(j, m_max - j), dim, dtype=dtype, device=device)])
        q_rows[j] = q
        w = matvec(q).to(dtype)
        alpha[j] = float(q @ w)
        w = _orthogonalise(w, q_rows[: j + 1])  # removes alpha_j q_j and beta_{j-1} q_{j-1} too
        beta[j] = float(w.norm())
        m = j + 1
        theta, s = _ritz(alpha[:m], beta[: m - 1])
        scale = max(float(theta.abs().max()), torch.finfo(dtype).tiny)
        if beta[j] <= tol * scale:  # invariant block: every Ritz pair in it has converged
            block, _ = _ritz(alpha[block_start:m], beta[block_start: m - 1])
            if m >= k and previous is not None and float(block[0]) <= previous[0] + tol * scale and (
                    not with_min or float(block[-1]) >= previous[1] - tol * scale):
                converged = True
                break
            if m == m_max:
                break
            previous = (float(theta[k - 1]) if m >= k else -math.inf, float(theta[-1]))
            beta[j], block_start = 0.0, m
            q = _random_unit(dim, q_rows[:m], gen, like)
            continue
        res = beta[j] * s[-1].abs()
        wanted = list(range(min(k, m))) + ([m - 1] if with_min else [])
        if block_start:  # a restarted block must also have settled its own extreme values
            _, s_block = _ritz(alpha[block_start:m], beta[block_start: m - 1])
            ends = s_block[-1, [0, -1] if with_min else [0]]
            res = torch.cat([res[wanted], beta[j] * ends.abs()])
            wanted = list(range(len(res)))
        if m >= k and bool((res[wanted] <= tol * scale).all()):
            converged = True
            break
        if m == m_max:
            break
        q = w / beta[j].item()
    theta, s = _ritz(alpha[:m], beta[: m - 1])
    res = beta[m - 1].abs() * s[-1].abs()
    top = slice(0, min(k, m))
    vecs = q_rows[:m].T @ s[:, top].to(dtype)
    return LanczosResult(theta[top].to(dtype), vecs, res[top].to(dtype), float(theta[m - 1]), float(res[m - 1]), m,
                         converged or m == dim)


def _ritz(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs of the tridiagonal T (diag alpha, off-diagonal beta), eigenvalues descending."""
    t = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    theta, s = torch.linalg.eigh(t)
    return theta.flip(0), s.flip(1)
