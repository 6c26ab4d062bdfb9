"""Certificates against dense float64 computations on tiny MLPs (torch.func.hessian), and their counters.

- the anchor-time bound M_o ||D||^3 / 6 >= the exact Taylor remainder, computed by Gauss-Legendre
  quadrature of int_0^1 (1 - s) D^T (H(theta_o* + s D) - H_o) D ds with dense Hessians;
- the null-space quantity ||H_o D|| / (lambda_1 ||D||) against a dense H D;
- the validity radius along D against a dense scan of the same grid;
- a planted violation (a too-small M_o, a false isolation mask) is counted, never hidden;
- task-IL: L_o is the cross-entropy over the task's own classes whatever training masked;
- exact isolation of PackNet and HAT in task-IL through the runner's real Trainer.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_geometry_checks import quadratic_objective, spectrum_matrix
from test_geometry_toys import (
    single_thread,  # noqa: F401  (autouse fixture)
    toy_mlp_objective,
    toy_module,
    toy_scenario,
)

from cl_bench.geometry import ChecksConfig, PairChecks, certificate, flat_params, module_objective, take_snapshot
from cl_bench.geometry.remainder import gauss_legendre_remainder, hessian_lipschitz, legendre_nodes, stable_constant

F64 = torch.float64
CFG = ChecksConfig(k=4, lanczos_iters=200, lanczos_tol=1e-9, hutchinson_probes=4, radii=[0.01, 0.03, 0.1, 0.3, 1.0],
                   lipschitz_radii=[0.01, 0.03, 0.1, 0.3, 1.0], lipschitz_eigvecs=2, lipschitz_random=4)


@pytest.fixture(scope="module")
def mlp():
    """Snapshot of task 0 of a tanh MLP at a point trained a little on task 0, with its dense Hessian."""
    sc, module, obj, theta = toy_mlp_objective(6, logits="setting")
    for _ in range(50):  # gradient descent towards a minimum of L_0 (a realistic anchor, not stationary)
        theta = theta - 0.5 * obj.loss_and_grad(theta)[1]
    snap = take_snapshot(obj, theta, 0, CFG)

    def loss(th):
        return obj.chunk_loss(th, obj.x, obj.y)

    hess = torch.func.hessian(loss)
    # a direction like a later task's update: the gradient of task 1's loss at the anchor, plus noise
    t1 = sc.tasks[1]
    obj1 = module_objective(module, (t1.x_train.double() / 255 - 0.4) / 0.3, t1.y_train, 1, logits="setting")
    g1 = obj1.loss_and_grad(theta)[1]
    noise = torch.randn(theta.numel(), dtype=F64, generator=torch.Generator().manual_seed(1))
    mixed = g1 / g1.norm() + noise / noise.norm()
    dirs = {"task1_grad": g1 / g1.norm(), "noise": noise / noise.norm(), "mixed": mixed / mixed.norm()}
    return snap, obj, loss, hess, dirs


def test_gauss_legendre_is_exact_for_polynomials():
    nodes, weights = legendre_nodes(6)
    assert float(weights.sum()) == pytest.approx(2.0, abs=1e-14)
    for p in range(12):  # n nodes integrate degree <= 2n - 1 exactly
        exact = (1 - (-1) ** (p + 1)) / (p + 1)
        assert float((weights * nodes**p).sum()) == pytest.approx(exact, abs=1e-13)


def test_anchor_time_constants_are_finite_on_the_mlp(mlp):
    snap, *_ = mlp
    lip = snap.record["hessian_lipschitz"]
    assert math.isfinite(snap.lipschitz_M) and snap.lipschitz_M > 0 and snap.lipschitz_r > 0
    assert set(lip["quotients"]) == {"v1", "v2", "grad", "random1", "random2", "random3", "random4"}
    assert lip["running_max"] == sorted(lip["running_max"])


def test_lipschitz_quotients_match_dense_hessians(mlp):
    """q(u, r) = ||(H(theta + r u) - H_o) u|| / r per start and radius, against dense Hessians; one power step
    replaces a start u by w / ||w||, w = (H(theta + r_1 u) - H_o) u / r_1."""
    snap, obj, loss, hess, dirs = mlp
    h0, radii = hess(snap.theta), [0.01, 0.1, 1.0]

    def q(u, r):
        return (hess(snap.theta + r * u) - h0) @ u / r

    for power in (0, 1):
        lip = hessian_lipschitz(obj, snap.theta, snap.eigvecs, 1, 0, radii, 2.0, 2.0, 0, snap.grad, power)
        for name, u in (("v1", snap.eigvecs[:, 0]), ("grad", snap.grad / snap.grad.norm())):
            met = []
            if power:
                w = q(u, radii[0])
                met, u = [float(w.norm())], w / w.norm()
            want = [float(q(u, r).norm()) for r in radii]
            want[0] = max([want[0], *met])
            assert lip["quotients"][name] == pytest.approx(want, rel=1e-8), (name, power)
        assert lip["hvp"] == 2 * (2 * power + len(radii) + 1)


@pytest.mark.parametrize("name", ["task1_grad", "noise", "mixed"])
def test_anchor_time_bound_covers_the_exact_remainder_inside_r_o(mlp, name):
    snap, obj, loss, hess, dirs = mlp
    u = dirs[name]
    h0 = hess(snap.theta)
    g = snap.grad
    radii = [r for r in (0.003, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0) if r <= snap.lipschitz_r]
    assert len(radii) >= 3
    for r in radii:
        d = r * u
        exact = gauss_legendre_remainder(lambda s: float(d @ hess(snap.theta + s * d) @ d), d, n=12)
        e = float(loss(snap.theta + d) - loss(snap.theta))
        # the quadrature reproduces R = E - g.D - D^T H D / 2 (Taylor's theorem with integral remainder)
        assert exact == pytest.approx(e - float(g @ d) - 0.5 * float(d @ h0 @ d), rel=1e-6, abs=1e-13), r
        # below the smallest sampled radius r_1 the bound is M_o r_1 ||D||^2 / 2 (variation at r_1)
        r1 = snap.lipschitz_r1
        bound = snap.lipschitz_M * (r**3 / 6 if r >= r1 else r1 * r**2 / 2)
        assert abs(exact) <= bound, (name, r, exact, bound)
        cert = PairChecks(snap, snap.theta + d, 1, CFG).certify()
        assert cert["remainder_bound"] == pytest.approx(bound, rel=1e-12)
        assert e <= cert["kinds"]["taylor_bound"]["bound"] + 1e-12
        assert not cert["violated"]


def test_null_space_quantity_matches_a_dense_h_d(mlp):
    snap, obj, loss, hess, dirs = mlp
    h0 = hess(snap.theta)
    lam1 = float(torch.linalg.eigvalsh(h0)[-1])
    assert snap.lambda_1 == pytest.approx(lam1, rel=1e-6)
    d = 0.05 * dirs["mixed"]
    ns = PairChecks(snap, snap.theta + d, 1, CFG).certify()["kinds"]["null_space"]
    assert ns["hd_ratio"] == pytest.approx(float((h0 @ d).norm()) / (lam1 * float(d.norm())), rel=1e-6)
    assert not ns["certified"] and "||H_o D||" in ns["reason"]


def test_null_space_certifies_an_update_in_the_hessians_kernel():
    a = spectrum_matrix([3.0, 2.0, 1.0, 0.0, 0.0, 0.0])
    c = torch.zeros(6, dtype=F64)
    snap = take_snapshot(quadratic_objective(a, c), c, 0, CFG)
    kernel = torch.linalg.eigh(a).eigenvectors[:, :3]  # eigenvalue 0
    d = kernel @ torch.tensor([0.3, -0.2, 0.1], dtype=F64)
    cert = PairChecks(snap, c + d, 1, CFG).certify()
    assert cert["kind"] == "null_space" and cert["kinds"]["null_space"]["hd_ratio"] < 1e-12
    assert abs(cert["measured"]) < 1e-15 and not cert["violated"]


def test_validity_radius_along_d_matches_a_dense_scan(mlp):
    snap, obj, loss, hess, dirs = mlp
    d = 0.9 * dirs["task1_grad"]
    cfg = ChecksConfig(**{**CFG.__dict__, "radii": [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7]})
    rec = PairChecks(snap, snap.theta + d, 1, cfg).run(["C6"])[0]
    u, dn = d / d.norm(), float(d.norm())
    slope, curv = float(snap.grad @ u), float(u @ hess(snap.theta) @ u)
    grid = [*cfg.radii, dn]
    r_star = math.inf
    for i, r in enumerate(grid):
        dl = float(loss(snap.theta + r * u) - loss(snap.theta))
        q = r * slope + 0.5 * r * r * curv
        if abs(dl - q) / max(abs(dl), abs(q), cfg.loss_eps) > cfg.radius_tol:
            r_star = grid[i - 1] if i else 0.0
            break
    assert rec["values"]["r_star"] == pytest.approx(r_star)
    assert rec["values"]["along_d"]["curvature"] == pytest.approx(curv, rel=1e-6)
    assert (rec["verdict"] == "pass") == (r_star >= dn)


def test_a_planted_violation_is_counted(mlp):
    snap, obj, loss, hess, dirs = mlp
    d = 0.3 * dirs["task1_grad"]
    honest = PairChecks(snap, snap.theta + d, 1, CFG).certify()
    e, e_hat = honest["measured"], honest["prediction"]
    assert e != pytest.approx(e_hat, rel=1e-6)
    # a false anchor-time constant: M_o = 0 on a radius of 10 makes the bound E_hat, violated when E > E_hat
    planted = type(snap)(**{**snap.__dict__, "lipschitz_M": 0.0, "lipschitz_r": 10.0})
    sign = 1.0 if e > e_hat else -1.0
    cert = PairChecks(planted, planted.theta + sign * d, 1, CFG).certify()
    if cert["measured"] <= cert["prediction"]:  # the other side of the anchor has the other sign of R
        cert = PairChecks(planted, planted.theta - sign * d, 1, CFG).certify()
    assert cert["kind"] == "taylor_bound" and cert["violated"]
    # a false isolation mask: the coordinates that did not move, although the loss did
    d2 = d.clone()
    d2[: d2.numel() // 2] = 0
    mask = torch.zeros_like(d2, dtype=torch.bool)
    mask[: d2.numel() // 2] = True
    lying = type(snap)(**{**snap.__dict__, "isolated": mask})
    iso = PairChecks(lying, lying.theta + d2, 2, CFG).certify()
    if iso["measured"] <= 0:  # the loss went down on this side: take the other
        iso = PairChecks(lying, lying.theta - d2, 2, CFG).certify()
    assert iso["kind"] == "exact_isolation" and iso["measured"] > 0 and iso["violated"]
    summary = certificate([honest, cert, iso])
    assert summary["n_pairs"] == 3 and summary["n_violated"] == 2 and summary["n_certified_violated"] == 2
    assert summary["by_kind"]["exact_isolation"] == {"chosen": 1, "certified": 1, "violated": 1}
    assert summary["by_kind"]["taylor_bound"]["violated"] >= 1


def test_the_taylor_bound_is_not_certified_outside_r_o(mlp):
    snap, *_ = mlp
    d = 2 * snap.lipschitz_r * torch.ones_like(snap.theta) / math.sqrt(snap.theta.numel())
    cert = PairChecks(snap, snap.theta + d, 1, CFG).certify()
    assert not cert["certified"] and f"> r_o={snap.lipschitz_r:.3g}" in cert["reason"]
    assert cert["kinds"]["exact_isolation"]["reason"] == "no isolated parameters declared"


def test_stable_constant_stops_where_the_estimate_grows():
    q = {"a": [1.0, 1.1, 1.5, 5.0, 50.0], "b": [0.5, 0.5, 0.6, 0.7, 0.8]}
    out = stable_constant(q, [0.01, 0.1, 0.3, 1.0, 3.0], stability=2.0, safety=3.0)
    assert out["r"] == 0.3 and out["M"] == pytest.approx(4.5)
    none = stable_constant({"a": [math.inf]}, [0.1], 2.0, 2.0)
    assert none["r"] == 0.0 and none["M"] == math.inf


def test_task_il_loss_is_over_the_tasks_classes_whatever_training_masked():
    sc = toy_scenario("task_il")
    for mask in (False, True):
        module = toy_module(sc, mask=mask)
        task = sc.tasks[1]
        x = (task.x_train.double() / 255 - 0.4) / 0.3
        obj = module_objective(module, x, task.y_train, 1, logits="setting")
        assert obj.columns == [2, 3]
        z = module(x, torch.full((x.shape[0],), 1))
        expected = float(F.cross_entropy(z[:, [2, 3]], task.y_train - 2))
        assert obj.loss(flat_params(module)) == pytest.approx(expected, rel=1e-12)
    unmasked = module_objective(toy_module(sc, mask=False), x, task.y_train, 1, logits="train")
    assert unmasked.loss(flat_params(module)) > expected  # the 4-way loss of unmasked training differs


@pytest.fixture(scope="module")
def isolation_runs(tmp_path_factory):
    from cl_bench.config import build_plan, load_config
    from cl_bench.runner import execute

    out = tmp_path_factory.mktemp("certify_isolation")
    plan = build_plan(load_config(["scenario=split_digits", "scenario.n_tasks=3", "trainer.epochs=1",
                                   "trainer.train_loss_probe=100", "settings=[task_il]", "strategy=[packnet,hat]",
                                   "checks.k=3", "checks.probe_size=200", "checks.lanczos_iters=15",
                                   "checks.lipschitz.samples=16", "sweep.workers=1", f"output.dir={out}"]))
    return list(execute(plan))


def test_packnet_and_hat_are_certified_exact_isolation_in_task_il(isolation_runs):
    assert [r.status for r in isolation_runs] == ["ok", "ok"]
    for run in isolation_runs:
        cert = run.checks["certificate"]
        assert cert["n_pairs"] == 3 and cert["n_violated"] == 0
        for p in cert["pairs"]:
            assert p["kind"] == "exact_isolation", (run.label, p["reason"])
            assert p["measured"] == 0.0 and p["bound"] == 0.0


def test_perturbation_score_is_the_curvature_ratio_whatever_the_gradient():
    """On L = (theta - c)^T A (theta - c) / 2 the even part of the loss change is r^2 u^T A u / 2 exactly,
    so s(r) = mean_i lambda_i / mean_u u^T A u at every radius, at a stationary anchor or not."""
    from cl_bench.geometry.radius import perturbation_score

    a = spectrum_matrix([5.0, 3.0, 1.0, 0.5, 0.1, 0.0])
    evals, evecs = torch.linalg.eigh(a)
    top = evecs[:, [-1, -2]]  # lambda = 5, 3
    c = torch.zeros(6, dtype=F64)

    def loss(th):
        return float(0.5 * (th - c) @ a @ (th - c))

    gen = torch.Generator().manual_seed(7)
    rand = [torch.randn(6, generator=gen, dtype=F64) for _ in range(3)]
    e_rand_unit = sum(float(u @ a @ u) / float(u @ u) for u in rand) / 3 / 2
    for theta in (c, c + torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0], dtype=F64)):
        def along(th, dirs, steps):
            return torch.tensor([[loss(th + s * u) for u in dirs] for s in steps], dtype=F64)

        s = perturbation_score(along, theta, loss(theta), top, 3, [0.01, 1.0, 10.0], seed=7)
        for r, e_eig, e_rand, score in zip(s["radii"], s["E_eig"], s["E_rand"], s["score"]):
            assert e_eig == pytest.approx(0.5 * r * r * 4.0, rel=1e-9)
            assert e_rand == pytest.approx(r * r * e_rand_unit, rel=1e-9)
            assert score == pytest.approx(4.0 / (2 * e_rand_unit), rel=1e-9)
