"""Curvature matrices of a probe objective as linear operators on flat parameter vectors.

One interface, in the style of curvlinops: ``op.matvec(v) -> Tensor`` (and
``op @ v``, ``op.matmat(V)``, ``op.dense()`` for tiny models). Each operator
is bound to one objective L (a fixed probe set, eval mode) and one point
theta; it keeps the autograd graph of its chunks, so a product costs one
(Hessian) or two (GGN, Fisher) backward passes and no forward pass.

- :class:`HessianOperator`: H = d^2 L / d theta^2 (reverse-over-reverse).
- :class:`GGNOperator`: G = (1/N) sum_n J_n^T (d^2 l_n / dz^2) J_n (Schraudolph 2002);
  for softmax cross-entropy it equals the exact Fisher (Martens 2020, Sec. 9.2),
  so :func:`make_operator` maps ``fisher`` to it.
- :class:`EmpiricalFisherOperator`: F_emp = (1/N) sum_n g_n g_n^T, g_n = grad l_n
  (Kunstner et al. 2019 on why it is not the Fisher).

Products are counted in ``n_matvec`` (the HVP count reported with every check).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .objective import Objective

CURVATURES: tuple[str, ...] = ("hessian", "ggn", "fisher", "empirical_fisher")


def _grad(outputs: Tensor, inputs: Tensor, grad_outputs: Tensor | None = None, create_graph: bool = False) -> Tensor:
    (g,) = torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=True, create_graph=create_graph,
                               allow_unused=True, materialize_grads=True)
    return g


class CurvatureOperator:
    """A symmetric P x P matrix available through products with flat vectors."""

    def __init__(self, objective: Objective, theta: Tensor) -> None:
        if theta.dim() != 1 or theta.numel() != objective.dim:
            raise ValueError(f"theta must be a flat vector of {objective.dim} parameters, got {tuple(theta.shape)}")
        self.objective = objective
        self.theta = theta.detach()
        self.dim = objective.dim
        self.n_matvec = 0

    @property
    def device(self) -> torch.device:
        return self.theta.device

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    def _matvec(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def matvec(self, v: Tensor) -> Tensor:
        """A v for a flat vector v [P]."""
        if v.shape != (self.dim,):
            raise ValueError(f"matvec needs a vector of shape ({self.dim},), got {tuple(v.shape)}")
        self.n_matvec += 1
        return self._matvec(v.to(self.dtype))

    def matmat(self, m: Tensor) -> Tensor:
        """A M for M [P, K], one product per column."""
        return torch.stack([self.matvec(c) for c in m.T], dim=1)

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matvec(v) if v.dim() == 1 else self.matmat(v)

    def dense(self, max_dim: int = 5000) -> Tensor:
        """The full matrix A = A I [P, P] (P products; only for tiny models)."""
        if self.dim > max_dim:
            raise ValueError(f"dense() of a {self.dim}-parameter operator exceeds max_dim={max_dim}")
        return self.matmat(torch.eye(self.dim, dtype=self.dtype, device=self.device))


class HessianOperator(CurvatureOperator):
    """H v = d/d theta (grad L(theta)^T v), with grad L kept as a differentiable graph per chunk."""

    def __init__(self, objective: Objective, theta: Tensor) -> None:
        super().__init__(objective, theta)
        self._leaf = self.theta.clone().requires_grad_(True)
        with torch.enable_grad():
            self._grads = [_grad(objective.chunk_loss(self._leaf, x, y), self._leaf, create_graph=True)
                           for x, y in objective.chunks()]

    def _matvec(self, v: Tensor) -> Tensor:
        with torch.enable_grad():
            out = torch.zeros_like(v)
            for g in self._grads:
                if g.requires_grad:
                    out = out + _grad(g, self._leaf, v)
            return out


class _OuterProductOperator(CurvatureOperator):
    """A = sum_chunks J^T M J for a vector function z(theta) [B, C] with Jacobian J.

    J v is computed with the double-vjp trick (Townsend 2017): w(u) = J^T u is
    linear in a dummy u, so J v = d(w(u)^T v)/du; both graphs are kept.
    """

    def _chunk_outputs(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _apply_m(self, z: Tensor, y: Tensor, jv: Tensor) -> Tensor:
        raise NotImplementedError

    def __init__(self, objective: Objective, theta: Tensor) -> None:
        super().__init__(objective, theta)
        self._leaf = self.theta.clone().requires_grad_(True)
        self._chunks = []
        with torch.enable_grad():
            for x, y in objective.chunks():
                z = self._chunk_outputs(x, y)
                u = torch.zeros_like(z, requires_grad=True)
                w = _grad(z, self._leaf, u, create_graph=True)
                self._chunks.append((z, u, w, y))

    def _matvec(self, v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        with torch.enable_grad():
            for z, u, w, y in self._chunks:
                if not w.requires_grad:  # z does not depend on theta
                    continue
                jv = _grad(w, u, v)
                out += _grad(z, self._leaf, self._apply_m(z.detach(), y, jv))
        return out


class GGNOperator(_OuterProductOperator):
    """G v = (1/N) sum_n J_n^T H_n J_n v, H_n = d^2 l(z_n, y_n) / dz_n^2 (from autograd on l alone)."""

    def _chunk_outputs(self, x: Tensor, y: Tensor) -> Tensor:
        return self.objective.forward(self._leaf, x)

    def _apply_m(self, z: Tensor, y: Tensor, jv: Tensor) -> Tensor:
        zl = z.clone().requires_grad_(True)
        with torch.enable_grad():
            g = _grad(self.objective.per_sample_loss(zl, y).sum(), zl, create_graph=True)
            hjv = _grad(g, zl, jv) if g.requires_grad else torch.zeros_like(jv)
        return hjv / self.objective.n


class EmpiricalFisherOperator(_OuterProductOperator):
    """F_emp v = (1/N) sum_n g_n (g_n^T v): z = per-sample losses [B], M = I / N."""

    def _chunk_outputs(self, x: Tensor, y: Tensor) -> Tensor:
        return self.objective.per_sample_loss(self.objective.forward(self._leaf, x), y)

    def _apply_m(self, z: Tensor, y: Tensor, jv: Tensor) -> Tensor:
        return jv / self.objective.n


def make_operator(kind: str, objective: Objective, theta: Tensor) -> CurvatureOperator:
    """``hessian`` | ``ggn`` | ``fisher`` (= GGN for cross-entropy) | ``empirical_fisher``."""
    if kind == "hessian":
        return HessianOperator(objective, theta)
    if kind in ("ggn", "fisher"):
        return GGNOperator(objective, theta)
    if kind == "empirical_fisher":
        return EmpiricalFisherOperator(objective, theta)
    raise ValueError(f"curvature={kind!r} is not valid; choose one of {list(CURVATURES)}")
