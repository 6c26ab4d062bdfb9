"""Checks C0-C11 and the certificates on toys with known answers (quadratic, least squares, two basins), a small MLP."""

from __future__ import annotations

import math

import pytest
import torch
from test_geometry_toys import (
    least_squares_objective,
    quadratic_objective,
    single_thread,  # noqa: F401  (autouse fixture)
    toy_mlp_objective,
    xor_objective,
)

from cl_bench.geometry import (
    ChecksConfig,
    PairChecks,
    certificate,
    leakage,
    take_snapshot,
)
from cl_bench.geometry.lmc import barrier, layerwise_barriers

F64 = torch.float64


def spectrum_matrix(d: list[float], seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(d), len(d), dtype=F64, generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(torch.tensor(d, dtype=F64)) @ q.T


def by_id(records):
    return {r["id"]: r for r in records}


CFG = ChecksConfig(k=3, lanczos_iters=50, lanczos_tol=1e-10, which=[f"C{i}" for i in range(12)],
                   radii=[0.1, 1.0, 10.0, 100.0], hutchinson_probes=4, lipschitz_radii=[0.01, 0.1, 1.0, 10.0])


@pytest.fixture
def quadratic():
    """L = (theta - c)^T A (theta - c) / 2, A PSD with a known spectrum; anchor at its minimum c."""
    d = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.0, 0.0, 0.0]
    a = spectrum_matrix(d)
    c = torch.linspace(-1, 1, len(d), dtype=F64)
    obj = quadratic_objective(a, c)
    return obj, a, c, take_snapshot(obj, c, 0, CFG)


def test_quadratic_toy_kappa_zero_sandwich_tight_radius_infinite(quadratic):
    obj, a, c, snap = quadratic
    assert snap.radius == math.inf and float(snap.grad.norm()) == 0.0
    torch.testing.assert_close(snap.eigvals[:4], torch.tensor([5.0, 4.0, 3.0, 2.0], dtype=F64))
    d = snap.eigvecs @ torch.tensor([0.7, -1.2, 0.4], dtype=F64)  # D in span(V_k)
    pair = PairChecks(snap, c + d, 1, CFG)
    recs = by_id(pair.run(CFG.which))
    e = float(d @ a @ d) / 2
    assert recs["C2"]["values"]["forgetting"] == pytest.approx(e, rel=1e-12)
    assert recs["C2"]["values"]["kappa"] < 1e-12 and recs["C2"]["verdict"] == "pass"
    c4 = recs["C4"]["values"]
    assert c4["lower"] == pytest.approx(e, rel=1e-12) and c4["upper"] == pytest.approx(e, rel=1e-12)
    assert c4["subspace_share"] == pytest.approx(1.0) and recs["C4"]["verdict"] == "n/a"  # tightness only
    assert c4["tightness"] == pytest.approx(1.0, rel=1e-10)
    assert c4["upper_loose"] > c4["upper"]  # the lambda_1 ||V^T D||^2 form is looser
    for cid in ("C0", "C1", "C6", "C7"):
        assert recs[cid]["verdict"] == "pass", recs[cid]
    assert recs["C6"]["values"]["r_star"] == math.inf  # the quadratic model is exact along D
    assert abs(recs["C7"]["values"]["remainder"]) < 1e-12 and snap.lipschitz_r == 10.0
    assert recs["C11"]["values"]["barrier"] == 0.0  # convex: the loss along the segment lies below the chord
    assert recs["C11"]["values"]["rise"] == pytest.approx(e) and recs["C11"]["verdict"] == "fail"  # E > barrier_tol
    cert = certificate([pair.certify()])
    p = cert["pairs"][0]
    assert cert["n_certified"] == 1 and p["kind"] == "taylor_bound" and not p["violated"] and cert["n_violated"] == 0
    assert p["bound"] == pytest.approx(e, rel=1e-9) and p["ratio"] == pytest.approx(1.0, rel=1e-9)  # tight
    assert p["explain"]["share_quadratic"] == pytest.approx(1.0) and p["kinds"]["null_space"]["certified"] is False


def test_quadratic_toy_sandwich_brackets_a_general_update(quadratic):
    obj, a, c, snap = quadratic
    d = torch.randn(10, dtype=F64, generator=torch.Generator().manual_seed(3))
    v = by_id(PairChecks(snap, c + d, 1, CFG).run(["C2", "C4"]))
    e = float(d @ a @ d) / 2
    assert v["C2"]["values"]["kappa"] < 1e-12
    c4 = v["C4"]["values"]
    assert c4["lower"] < e < c4["upper"] and c4["quadratic_inside"]
    coeff = snap.eigvecs.T @ d  # brute force from the dense spectrum
    r2 = float(d @ d - coeff @ coeff)
    assert c4["upper"] == pytest.approx(0.5 * (float((snap.eigvals[:3] * coeff**2).sum()) + 2.0 * r2), rel=1e-10)


def test_psd_check_fails_on_an_indefinite_toy():
    a = spectrum_matrix([5.0, 1.0, 0.5, -2.0, 0.0, 0.0])
    c = torch.zeros(6, dtype=F64)
    snap = take_snapshot(quadratic_objective(a, c), c, 0, CFG)
    assert snap.lambda_min == pytest.approx(-2.0)
    pair = PairChecks(snap, c + 0.1, 1, CFG)
    rec = by_id(pair.run(["C1"]))["C1"]
    assert rec["verdict"] == "fail" and "indefinite" in rec["reason"]
    assert rec["values"]["ratio"] == pytest.approx(-0.4)
    # Taylor's theorem needs no PSD anchor: the bound certifies the indefinite toy exactly
    p = pair.certify()
    d = torch.full((6,), 0.1, dtype=F64)
    assert p["kind"] == "taylor_bound" and p["bound"] == pytest.approx(float(d @ a @ d) / 2, rel=1e-9)


def test_stationarity_fails_away_from_the_minimum():
    a = spectrum_matrix([2.0, 1.0, 1.0, 0.5])
    c = torch.zeros(4, dtype=F64)
    anchor = c + torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)  # g = A (anchor - c) != 0
    snap = take_snapshot(quadratic_objective(a, c), anchor, 0, CFG)
    g = a @ (anchor - c)
    rec = by_id(PairChecks(snap, anchor + 0.01 * g, 1, CFG).run(["C0", "C2"]))
    assert rec["C0"]["verdict"] == "fail" and "not stationary" in rec["C0"]["reason"]
    assert rec["C0"]["values"]["grad_norm"] == pytest.approx(float(g.norm()))
    assert rec["C2"]["values"]["kappa"] < 1e-10  # still exact: E_hat includes g^T D


def test_function_drift_is_exact_for_a_linear_model():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, dtype=F64, generator=gen), torch.randn(30, 3, dtype=F64, generator=gen)
    obj = least_squares_objective(x, y, 3)
    w = torch.linalg.lstsq(x, y).solution.reshape(-1)  # the minimum: g = 0
    snap = take_snapshot(obj, w, 0, CFG)
    h = torch.kron(x.T @ x / 30, torch.eye(3, dtype=F64))  # H = X^T X / N (x) I_C for theta = vec(W) row-major
    torch.testing.assert_close(snap.eigvals[:4], torch.linalg.eigvalsh(h).flip(0)[:4])
    d = 0.3 * torch.randn(12, dtype=F64, generator=gen)
    rec = by_id(PairChecks(snap, w + d, 1, CFG).run(["C2", "C8"]))
    c8 = rec["C8"]["values"]
    expected = float(((x @ d.view(4, 3)) ** 2).sum(1).mean())
    assert c8["actual"] == pytest.approx(expected, rel=1e-12) and c8["predicted"] == pytest.approx(expected, rel=1e-12)
    assert c8["linearisation_error"] < 1e-12 and rec["C2"]["values"]["kappa"] < 1e-10


def test_lmc_barrier_zero_for_identical_endpoints_positive_between_two_basins():
    obj, theta_a, theta_b = xor_objective()
    assert barrier(obj.loss, theta_a, theta_a.clone(), [0.25, 0.5, 0.75])["barrier"] == 0.0
    b = barrier(obj.loss, theta_a, theta_b, [0.25, 0.5, 0.75])
    assert b["barrier"] == pytest.approx(5.0, abs=1e-3)
    layers = layerwise_barriers(obj.loss, theta_a, theta_b, [("w", slice(0, 4)), ("v", slice(4, 6)),
                                                              ("b", slice(6, 7))], [0.5])
    assert layers["w"] == pytest.approx(5.0, abs=1e-3) and layers["v"] == 0.0 and layers["b"] == 0.0


def test_leakage_is_one_inside_and_zero_orthogonal_to_the_basis():
    v = torch.linalg.qr(torch.randn(20, 4, dtype=F64, generator=torch.Generator().manual_seed(0)))[0]
    inside = v @ torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    outside = torch.randn(20, dtype=F64, generator=torch.Generator().manual_seed(1))
    outside = outside - v @ (v.T @ outside)
    assert float(leakage(v, inside)) == pytest.approx(1.0, abs=1e-12)
    assert float(leakage(v, outside)) == pytest.approx(0.0, abs=1e-12)
    both = leakage(v, torch.stack([inside, outside, torch.zeros(20, dtype=F64)], 1))
    torch.testing.assert_close(both, torch.tensor([1.0, 0.0, 0.0], dtype=F64), atol=1e-12, rtol=0)


@pytest.fixture(scope="module")
def mlp_snapshot():
    _, _, obj, theta = toy_mlp_objective(6)
    cfg = ChecksConfig(k=5, lanczos_iters=200, lanczos_tol=1e-9, hutchinson_probes=30,
                       radii=[0.01, 0.1, 1.0, 10.0, 100.0])
    snap = take_snapshot(obj, theta, 0, cfg)
    h = torch.func.hessian(lambda th: obj.chunk_loss(th, obj.x, obj.y))(theta)
    jac = torch.func.jacrev(lambda th: obj.forward(th, obj.x))(theta)  # [N, C, P]
    prob = torch.softmax(obj.forward(theta, obj.x), -1)
    h_out = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]  # cross-entropy's d^2 l / dz^2
    ggn = torch.einsum("ncp,ncd,ndq->pq", jac, h_out, jac) / obj.n
    return snap, h, cfg, ggn


def test_curvature_energy_and_random_baseline_match_the_dense_hessian(mlp_snapshot):
    snap, h, cfg, ggn = mlp_snapshot
    p = h.shape[0]
    lam1 = float(torch.linalg.eigvalsh(h)[-1])
    d = 0.05 * torch.randn(p, dtype=F64, generator=torch.Generator().manual_seed(2))
    rec = by_id(PairChecks(snap, snap.theta + d, 1, cfg).run(["C3"]))["C3"]["values"]
    assert rec["rho"] == pytest.approx(float(d @ h @ d) / (lam1 * float(d @ d)), rel=1e-6)
    # the Gauss-Newton part of D^T H D, against J^T (diag p - p p^T) J / N built densely
    assert rec["gauss_newton_rho"] == pytest.approx(float(d @ ggn @ d) / (lam1 * float(d @ d)), rel=1e-6)
    assert not math.isclose(rec["gauss_newton_rho"], rec["rho"], rel_tol=1e-3)  # tanh net: H != G
    dense_baseline = float(h.trace()) / (p * lam1)
    assert abs(rec["random_baseline"] - dense_baseline) < 4 * snap.trace_std_error / (p * lam1)
    # the baseline is what a random direction of equal norm gets on average: E[u^T H u] / ||u||^2 = tr H / P
    u = torch.randn(p, 4000, dtype=F64, generator=torch.Generator().manual_seed(5))
    rho_random = ((u * (h @ u)).sum(0) / (lam1 * (u * u).sum(0))).mean()
    assert float(rho_random) == pytest.approx(dense_baseline, rel=0.05)


def test_validity_radius_is_finite_on_a_nonlinear_model(mlp_snapshot):
    snap, _, _, _ = mlp_snapshot
    curves = snap.record["radius"]["directions"]
    assert set(curves) == {"v1", "random1"}
    assert 0 <= snap.radius < math.inf
    assert curves["v1"]["curvature"] == pytest.approx(snap.lambda_1)
    assert min(curves["v1"]["rel_error"]) < 0.01  # the model is accurate at small radii ...
    assert max(curves["v1"]["rel_error"]) > CFG.radius_tol  # ... and not at large ones


def test_curvature_staleness_is_zero_for_a_constant_hessian(quadratic):
    """C9 (optional): a quadratic's Hessian does not change, so the top-k subspace at theta_t is the stored one."""
    obj, a, c, snap = quadratic
    d = torch.randn(10, dtype=F64, generator=torch.Generator().manual_seed(4))
    rec = by_id(PairChecks(snap, c + d, 1, CFG).run(["C9"]))["C9"]
    assert rec["values"]["overlap"] == pytest.approx(1.0, abs=1e-10) and rec["verdict"] == "pass"
    assert rec["values"]["lambda_1_t"] == pytest.approx(5.0) and rec["cost"]["hvp"] > 0
