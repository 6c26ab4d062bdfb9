"""Lanczos top-k and Hutchinson trace vs dense float64 linear algebra."""

from __future__ import annotations

import pytest
import torch
from test_geometry_toys import (
    single_thread,  # noqa: F401  (autouse fixture)
    toy_mlp_objective,
)

from cl_bench.geometry import HessianOperator, hutchinson_trace, lanczos


@pytest.fixture(scope="module")
def mlp_hessian():
    """Dense float64 Hessian of a small trained-at-random MLP on real toy data, and its operator."""
    _, _, obj, theta = toy_mlp_objective(8)
    op = HessianOperator(obj, theta)
    h = torch.func.hessian(lambda th: obj.chunk_loss(th, obj.x, obj.y))(theta)
    return op, h


def test_lanczos_top_k_matches_dense_eigvalsh(mlp_hessian):
    op, h = mlp_hessian
    evals, evecs = torch.linalg.eigh(h)
    evals, evecs = evals.flip(0), evecs.flip(1)
    k = 6
    res = lanczos(op.matvec, op.dim, k, max_iter=op.dim, tol=1e-8, dtype=torch.float64)
    assert res.converged and res.n_matvec < op.dim  # stopped early on the residual test
    torch.testing.assert_close(res.eigvals, evals[:k], rtol=1e-4, atol=0)
    torch.testing.assert_close(res.eigvecs.T @ res.eigvecs, torch.eye(k, dtype=torch.float64), atol=1e-10, rtol=0)
    gap = 1e-3 * float(evals[0])
    separated = [i for i in range(k) if evals[i] - evals[i + 1] > gap and (i == 0 or evals[i - 1] - evals[i] > gap)]
    assert len(separated) >= 3
    for i in separated:  # eigenvectors up to sign
        assert abs(float(res.eigvecs[:, i] @ evecs[:, i])) == pytest.approx(1.0, abs=1e-6)
    true_residuals = (h @ res.eigvecs - res.eigvecs * res.eigvals).norm(dim=0)
    torch.testing.assert_close(true_residuals, res.residuals, atol=1e-8, rtol=0)
    assert res.lambda_min == pytest.approx(float(evals[-1]), rel=1e-4)


def test_lanczos_wants_largest_algebraic_not_largest_magnitude():
    d = torch.tensor([-50.0, 3.0, 2.0, 1.0, -0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    a = q @ torch.diag(d) @ q.T
    res = lanczos(lambda v: a @ v, 8, 3, max_iter=8, tol=1e-10, dtype=torch.float64)
    torch.testing.assert_close(res.eigvals, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    assert res.lambda_min == pytest.approx(-50.0)


def test_lanczos_restarts_on_an_invariant_subspace():
    """Rank-2 operator: the Krylov space closes after 3 steps; the top-4 still come out (5, 3, 0, 0), orthonormal."""
    u = torch.linalg.qr(torch.randn(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))[0]
    a = u @ torch.diag(torch.tensor([5.0, 3.0], dtype=torch.float64)) @ u.T
    res = lanczos(lambda v: a @ v, 30, 4, max_iter=30, tol=1e-10, dtype=torch.float64)
    torch.testing.assert_close(res.eigvals, torch.tensor([5.0, 3.0, 0.0, 0.0], dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(res.eigvecs.T @ res.eigvecs, torch.eye(4, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(a @ res.eigvecs, res.eigvecs * res.eigvals, atol=1e-10, rtol=0)


def test_lanczos_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k >= 1"):
        lanczos(lambda v: v, 5, 0)


def test_hutchinson_trace_within_four_standard_deviations(mlp_hessian):
    op, h = mlp_hessian
    m = 40
    # Var(z^T A z) = 2 (||A||_F^2 - sum_i A_ii^2) for Rademacher z (Hutchinson 1990)
    std = (2 * (h.pow(2).sum() - h.diagonal().pow(2).sum()) / m).sqrt()
    est = hutchinson_trace(op.matvec, op.dim, m, seed=3, dtype=torch.float64)
    assert abs(est.trace - float(h.trace())) < 4 * float(std)
    assert est.std_error == pytest.approx(float(std), rel=0.5)  # the sample estimate of that std
    assert est.n_matvec == m


def test_deflated_hutchinson_is_exact_when_the_basis_spans_the_range():
    u = torch.linalg.qr(torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))[0]
    a = u @ torch.diag(torch.tensor([4.0, -1.0, 2.5], dtype=torch.float64)) @ u.T
    est = hutchinson_trace(lambda v: a @ v, 40, 4, basis=u, dtype=torch.float64)
    assert est.trace == pytest.approx(5.5, abs=1e-12) and est.std_error == pytest.approx(0.0, abs=1e-12)
    assert est.n_matvec == 3 + 4


def test_deflation_reduces_the_error_on_an_mlp_hessian(mlp_hessian):
    op, h = mlp_hessian
    res = lanczos(op.matvec, op.dim, 8, max_iter=op.dim, tol=1e-8, dtype=torch.float64)
    m = 20
    plain = hutchinson_trace(op.matvec, op.dim, m, seed=5, dtype=torch.float64)
    deflated = hutchinson_trace(op.matvec, op.dim, m, basis=res.eigvecs, basis_trace=float(res.eigvals.sum()),
                                seed=5, dtype=torch.float64)
    p = torch.eye(op.dim, dtype=torch.float64) - res.eigvecs @ res.eigvecs.T
    rest = p @ h @ p
    std = (2 * (rest.pow(2).sum() - rest.diagonal().pow(2).sum()) / m).sqrt()
    assert abs(deflated.trace - float(h.trace())) < 4 * float(std)
    assert deflated.std_error < plain.std_error


def test_lanczos_finds_every_copy_of_a_repeated_eigenvalue():
    """A single start vector sees one copy per distinct eigenvalue; restarted blocks find the rest."""
    x = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = torch.kron(x.T @ x / 30, torch.eye(3, dtype=torch.float64))  # every eigenvalue 3 times
    ref = torch.linalg.eigvalsh(a).flip(0)
    res = lanczos(lambda v: a @ v, 12, 4, max_iter=12, tol=1e-10, dtype=torch.float64)
    torch.testing.assert_close(res.eigvals, ref[:4])
    assert res.lambda_min == pytest.approx(float(ref[-1]))
