"""Guarantee checks of a past task o after a later task t (GEOMETRY.md, C0-C11).

Notation: theta_o* = anchor, D = theta_t - theta_o*, g = grad L_o(theta_o*),
H = curvature of L_o at theta_o* (Hessian, or the configured GGN/Fisher),
(lambda_i, v_i) its top eigenpairs, V = [v_1..v_k], E = L_o(theta_t) - L_o(theta_o*).
Every check returns one record: its numbers, threshold, verdict
(``pass`` | ``fail`` | ``n/a`` with a reason) and cost (curvature products, seconds).
Quantities shared between checks (E, H D, ...) are computed once, on first use,
and counted in the cost of the check that needed them first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .config import CHECKS, ChecksConfig
from .hutchinson import hutchinson_trace
from .lanczos import lanczos
from .lmc import barrier, layerwise_barriers
from .operators import CurvatureOperator, make_operator
from .snapshot import Snapshot

PASS, FAIL, NA = "pass", "fail", "n/a"


def record(check_id: str, o: int, t: int, verdict: str, values: dict[str, Any], threshold: Any = None,
           reason: str | None = None, cost: dict[str, float] | None = None) -> dict[str, Any]:
    """One JSON-ready check record."""
    return {"id": check_id, "name": CHECKS[check_id], "o": o, "t": t, "verdict": verdict, "reason": reason,
            "threshold": threshold, "values": values, "cost": cost or {"hvp": 0, "seconds": 0.0}}


def leakage(basis: Tensor, d: Tensor) -> Tensor:
    """||V^T d|| / ||d|| for d [P] or each column of d [P, S] (0 for a zero update)."""
    proj = (basis.T @ d).norm(dim=0)
    norm = d.norm(dim=0)
    return torch.where(norm > 0, proj / norm.clamp_min(torch.finfo(d.dtype).tiny), torch.zeros_like(norm))


def _verdict(ok: bool) -> str:
    return PASS if ok else FAIL


class PairChecks:
    """All checks of snapshot o at parameters theta_t (lazy shared quantities)."""

    def __init__(self, snap: Snapshot, theta_t: Tensor, t: int, cfg: ChecksConfig,
                 theta_prev: Tensor | None = None, step_leakage: Tensor | None = None,
                 groups: list[tuple[str, slice]] | None = None) -> None:
        self.snap, self.cfg, self.t = snap, cfg, t
        self.theta_t = theta_t.detach()
        self.theta_prev = theta_prev
        self.step_leakage = step_leakage
        self.groups = groups
        self.d = self.theta_t - snap.theta
        self.d_norm = float(self.d.norm())
        self._ops: list[CurvatureOperator] = []
        self._cache: dict[str, Any] = {}

    # ------------------------------------------------------------ shared quantities
    def _once(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def _operator(self, theta: Tensor) -> CurvatureOperator:
        return self._track(make_operator(self.cfg.curvature, self.snap.objective, theta))

    def _track(self, op: CurvatureOperator) -> CurvatureOperator:
        self._ops.append(op)  # products() counts its matvecs
        return op

    def products(self) -> int:
        return sum(op.n_matvec for op in self._ops)

    @property
    def loss_t(self) -> float:
        return self._once("loss_t", lambda: self.snap.objective.loss(self.theta_t))

    @property
    def forgetting(self) -> float:
        """E = L_o(theta_t) - L_o(theta_o*)."""
        return self.loss_t - self.snap.loss

    @property
    def linear(self) -> float:
        """g^T D."""
        return float(self.snap.grad @ self.d)

    @property
    def hd(self) -> Tensor:
        """H D (one product)."""
        return self._once("hd", lambda: self._operator(self.snap.theta).matvec(self.d))

    @property
    def quadratic(self) -> float:
        """D^T H D."""
        return float(self.d @ self.hd)

    @property
    def gauss_newton_quadratic(self) -> float:
        """D^T G D with G the Gauss-Newton matrix at theta_o* (one product): the part of D^T H D that
        the outputs' first-order change explains; H - G = sum_n (dl/df_n) d^2 f_n / N is the rest."""
        def compute() -> float:
            op = self._track(make_operator("ggn", self.snap.objective, self.snap.theta))
            return float(self.d @ op.matvec(self.d))
        return self._once("gn", compute)

    @property
    def predicted(self) -> float:
        """E_hat = g^T D + D^T H D / 2."""
        return self.linear + 0.5 * self.quadratic

    def remainder(self) -> dict[str, float] | None:
        """rho_hat = ||H(theta_t) u - H(theta_o*) u|| / ||D||, u = D/||D||; bound rho_hat ||D||^3 / 6."""
        def compute() -> dict[str, float] | None:
            if self.d_norm == 0:
                return None
            u = self.d / self.d_norm
            ht_u = self._operator(self.theta_t).matvec(u)
            rho = float((ht_u - self.hd / self.d_norm).norm()) / self.d_norm
            return {"rho_hat": rho, "bound": rho * self.d_norm**3 / 6}
        return self._once("remainder", compute)

    # ----------------------------------------------------------------- checks
    def run(self, which: list[str]) -> list[dict[str, Any]]:
        out = []
        for cid in which:
            fn = getattr(self, f"c{cid[1:]}", None)
            if fn is None:  # C12 is a snapshot-time record
                continue
            t0, before = time.perf_counter(), self.products()
            rec = fn()
            rec["cost"] = {"hvp": self.products() - before, "seconds": time.perf_counter() - t0}
            out.append(rec)
        return out

    def _rec(self, cid: str, verdict: str, values: dict[str, Any], threshold: Any = None,
             reason: str | None = None) -> dict[str, Any]:
        return record(cid, self.snap.task, self.t, verdict, values, threshold, reason)

    def c0(self) -> dict[str, Any]:
        """Stationarity: share of g^T D in the prediction; ||g_o|| reported."""
        lin, half_quad = abs(self.linear), abs(0.5 * self.quadratic)
        share = lin / (lin + half_quad) if lin + half_quad > 0 else 0.0
        ok = share <= self.cfg.stationarity_tol or lin <= self.cfg.loss_eps
        vals = {"grad_norm": float(self.snap.grad.norm()), "linear_term": self.linear, "linear_share": share}
        reason = None if ok else "anchor not stationary: null-space theorem (E = D^T H D / 2) does not apply"
        return self._rec("C0", _verdict(ok), vals, {"linear_share": self.cfg.stationarity_tol}, reason)

    def c1(self) -> dict[str, Any]:
        """PSD anchor: lambda_min >= -tau lambda_1 (the smallest Ritz value is an upper bound on lambda_min)."""
        s = self.snap
        ratio = s.lambda_min / s.lambda_1 if s.lambda_1 > 0 else -math.inf
        ok = s.lambda_min >= -self.cfg.psd_tol * abs(s.lambda_1)
        vals = {"lambda_min": s.lambda_min, "lambda_1": s.lambda_1, "ratio": ratio, "converged": s.lambda_min_converged}
        if ok and not s.lambda_min_converged:
            return self._rec("C1", NA, vals, self.cfg.psd_tol,
                             "lambda_min not converged: its Ritz value only bounds it from above")
        reason = None if ok else "anchor Hessian indefinite: D^T H D = 0 does not imply H D = 0"
        return self._rec("C1", _verdict(ok), vals, self.cfg.psd_tol, reason)

    def c2(self) -> dict[str, Any]:
        """Taylor fidelity: kappa = |E - E_hat| / max(|E|, eps)."""
        e, e_hat = self.forgetting, self.predicted
        kappa = abs(e - e_hat) / max(abs(e), self.cfg.loss_eps)
        vals = {"forgetting": e, "predicted": e_hat, "linear_term": self.linear, "quadratic_term": 0.5 * self.quadratic,
                "kappa": kappa, "loss_o": self.snap.loss, "loss_t": self.loss_t}
        ok = kappa <= self.cfg.kappa_tol
        reason = None if ok else "quadratic model does not explain the forgetting (locality broken)"
        return self._rec("C2", _verdict(ok), vals, self.cfg.kappa_tol, reason)

    def c3(self) -> dict[str, Any]:
        """Curvature energy rho = D^T H D / (lambda_1 ||D||^2) vs a random direction's tr H / (P lambda_1).

        On the Hessian it also reports ``gauss_newton_rho`` = D^T G D / (lambda_1 ||D||^2): OGD-style
        methods zero this part (J D = 0), and rho minus it is the residual term's share."""
        s = self.snap
        baseline = s.trace / (self.d.numel() * s.lambda_1) if s.lambda_1 > 0 else math.nan
        vals = {"rho": math.nan, "random_baseline": baseline, "ratio_to_random": math.nan}
        if self.d_norm == 0:
            return self._rec("C3", NA, vals, self.cfg.energy_tol, "D = 0: no update")
        if s.lambda_1 <= 0:
            return self._rec("C3", NA, vals, self.cfg.energy_tol, "lambda_1 <= 0: no curvature scale")
        rho = self.quadratic / (s.lambda_1 * self.d_norm**2)
        vals.update(rho=rho, ratio_to_random=rho / baseline if baseline > 0 else math.nan)
        if self.cfg.curvature == "hessian":
            vals["gauss_newton_rho"] = self.gauss_newton_quadratic / (s.lambda_1 * self.d_norm**2)
        ok = rho <= self.cfg.energy_tol * baseline
        reason = None if ok else "update carries more curvature energy than a random direction of equal norm"
        return self._rec("C3", _verdict(ok), vals, {"ratio_to_random": self.cfg.energy_tol}, reason)

    def c4(self) -> dict[str, Any]:
        """Sandwich LB <= E - g^T D <= UB with c = V^T D, r = D - V c:
        LB = (sum_i lambda_i c_i^2 + min(lambda_min, 0) ||r||^2) / 2,
        UB = (sum_i lambda_i c_i^2 + lambda_{k+1} ||r||^2) / 2  (tight when D in span V),
        UB_loose = (lambda_1 ||c||^2 + lambda_{k+1} ||r||^2) / 2  (GEOMETRY.md); slack = C7 remainder + eps."""
        s = self.snap
        if s.k == 0:
            return self._rec("C4", NA, {}, None, "no eigenvectors stored (memory budget)")
        c = s.eigvecs.T @ self.d
        r2 = max(self.d_norm**2 - float(c @ c), 0.0)
        top = float((s.eigvals[: s.k] * c**2).sum())
        lb = 0.5 * (top + min(s.lambda_min, 0.0) * r2)
        ub = 0.5 * (top + s.lambda_next * r2)
        ub_loose = 0.5 * (s.lambda_1 * float(c @ c) + s.lambda_next * r2)
        measured = self.forgetting - self.linear
        rem = self.remainder() if self.cfg.wants("C7") else None
        slack = (rem["bound"] if rem else 0.0) + self.cfg.loss_eps
        half_quad = 0.5 * self.quadratic
        inside = lb - slack <= measured <= ub + slack
        vals = {"lower": lb, "upper": ub, "upper_loose": ub_loose, "measured": measured, "quadratic_term": half_quad,
                "inside": inside, "inside_without_slack": lb <= measured <= ub, "slack": slack,
                "quadratic_inside": lb - self.cfg.loss_eps <= half_quad <= ub + self.cfg.loss_eps,
                "subspace_share": float(c.norm()) / self.d_norm if self.d_norm else 0.0,
                "bound": self.linear + ub + (rem["bound"] if rem else 0.0), "k": s.k}
        reason = None if inside else "measured forgetting outside the spectral sandwich (+ remainder)"
        return self._rec("C4", _verdict(inside), vals, {"slack": slack}, reason)

    def c5(self) -> dict[str, Any]:
        """Per-step leakage ||V^T d_s|| / ||d_s|| of task t's optimiser steps into task o's basis."""
        s, tol = self.snap, self.cfg.leakage_tol
        vals: dict[str, Any] = {"random_baseline": math.sqrt(s.k / self.d.numel())}
        if self.theta_prev is not None and s.k:
            vals["task_update"] = float(leakage(s.eigvecs, self.theta_t - self.theta_prev))
        if s.k == 0:
            return self._rec("C5", NA, vals, tol, "no eigenvectors stored (memory budget)")
        steps = self.step_leakage
        if steps is None or steps.numel() == 0:
            return self._rec("C5", NA, vals, tol, "no optimiser steps recorded (leakage callback not attached)")
        q = torch.quantile(steps.double(), torch.tensor([0.5, 0.9], dtype=torch.float64, device=steps.device))
        vals.update(mean=float(steps.mean()), max=float(steps.max()), p50=float(q[0]), p90=float(q[1]),
                    last=float(steps[-1]), n_steps=int(steps.numel()))
        ok = vals["mean"] <= tol
        return self._rec("C5", _verdict(ok), vals, tol, None if ok else "updates re-enter task o's top-k subspace")

    def c6(self) -> dict[str, Any]:
        """Validity radius: ||D|| <= r* (r* from the snapshot's perturbation curves)."""
        r_star = self.snap.radius
        vals = {"distance": self.d_norm, "r_star": r_star}
        if r_star is None:
            return self._rec("C6", NA, vals, None, "validity radius not computed at the snapshot")
        ok = self.d_norm <= r_star
        return self._rec("C6", _verdict(ok), vals, {"radius_tol": self.cfg.radius_tol},
                         None if ok else "the run left the region where the local model is valid")

    def c7(self) -> dict[str, Any]:
        """Remainder: rho_hat ||D||^3 / 6 <= tol * max(|E_hat|, eps) (third-order term negligible)."""
        rem = self.remainder()
        if rem is None:
            return self._rec("C7", NA, {}, self.cfg.remainder_tol, "D = 0: no update")
        err = abs(self.forgetting - self.predicted)
        ok = rem["bound"] <= self.cfg.remainder_tol * max(abs(self.predicted), self.cfg.loss_eps)
        vals = {**rem, "taylor_error": err, "explains_error": err <= rem["bound"]}
        return self._rec("C7", _verdict(ok), vals, self.cfg.remainder_tol,
                         None if ok else "third-order remainder is not small against the quadratic prediction")

    def c8(self) -> dict[str, Any]:
        """Function drift: mean ||J D||^2 (JVP at theta_o*) vs mean ||f_t(x) - f_o(x)||^2 on S_o."""
        obj = self.snap.objective
        f_o, jd = obj.outputs_and_jvp(self.snap.theta, self.d)
        f_t = obj.outputs(self.theta_t)
        if self.snap.columns is not None:
            cols = torch.tensor(self.snap.columns, device=f_o.device)
            f_o, jd, f_t = f_o[:, cols], jd[:, cols], f_t[:, cols]
        delta = f_t - f_o
        actual = float((delta**2).sum(1).mean())
        predicted = float((jd**2).sum(1).mean())
        scale = float((f_o**2).sum(1).mean())
        rel = actual / scale if scale > 0 else math.inf
        vals = {"predicted": predicted, "actual": actual, "relative_drift": rel,
                "linearisation_error": float(((delta - jd) ** 2).sum(1).mean()) / actual if actual > 0 else 0.0}
        ok = rel <= self.cfg.drift_tol
        return self._rec("C8", _verdict(ok), vals, self.cfg.drift_tol,
                         None if ok else "outputs on task o's probe set moved (J D != 0)")

    def c9(self) -> dict[str, Any]:
        """Curvature staleness: ||V_o^T V_t||_F^2 / k and tr H(theta_t) / tr H(theta_o*) (a full Lanczos at theta_t)."""
        s, cfg = self.snap, self.cfg
        if s.k == 0:
            return self._rec("C9", NA, {}, cfg.staleness_tol, "no eigenvectors stored (memory budget)")
        op = self._operator(self.theta_t)
        res = lanczos(op.matvec, self.d.numel(), s.k, max_iter=cfg.lanczos_iters, tol=cfg.lanczos_tol,
                      seed=cfg.seed + self.t, device=self.d.device, dtype=self.d.dtype)
        tr = hutchinson_trace(op.matvec, self.d.numel(), cfg.hutchinson_probes, basis=res.eigvecs,
                              basis_trace=float(res.eigvals.sum()), seed=cfg.seed + self.t,
                              device=self.d.device, dtype=self.d.dtype)
        overlap = float((s.eigvecs.T @ res.eigvecs).norm() ** 2) / s.k
        vals = {"overlap": overlap, "trace_ratio": tr.trace / s.trace if s.trace else math.nan,
                "lambda_1_t": float(res.eigvals[0]), "lambda_1_o": s.lambda_1}
        ok = overlap >= cfg.staleness_tol
        return self._rec("C9", _verdict(ok), vals, cfg.staleness_tol,
                         None if ok else "stored top-k subspace no longer describes task o's curvature")

    def c10(self) -> dict[str, Any]:
        """Update size: ||theta_t - theta_{t-1}||, ||D|| and E (descriptive; compare across a learning-rate sweep)."""
        step = float((self.theta_t - self.theta_prev).norm()) if self.theta_prev is not None else None
        vals = {"task_update_norm": step, "distance": self.d_norm, "forgetting": self.forgetting}
        return self._rec("C10", NA, vals, None, "descriptive: forgetting vs update size across runs")

    def c11(self) -> dict[str, Any]:
        """LMC barrier of L_o between theta_o* and theta_t (+ one layer at a time)."""
        loss = self.snap.objective.loss
        full = barrier(loss, self.snap.theta, self.theta_t, self.cfg.lmc_alphas, self.snap.loss, self.loss_t)
        vals: dict[str, Any] = {"barrier": full["barrier"], "alphas": full["alphas"], "loss": full["loss"]}
        if self.cfg.lmc_layerwise and self.groups:
            layers = layerwise_barriers(loss, self.snap.theta, self.theta_t, self.groups, self.cfg.lmc_layer_alphas,
                                        self.snap.loss)
            vals["layer_barriers"] = layers
            vals["max_layer_barrier"] = max(layers.values(), default=0.0)
        ok = full["barrier"] <= self.cfg.barrier_tol
        return self._rec("C11", _verdict(ok), vals, self.cfg.barrier_tol,
                         None if ok else "theta_t left task o's linearly connected basin")
