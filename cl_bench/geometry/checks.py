"""Guarantee checks of a past task o after a later task t (docs/guarantees.md, C0-C11) and the pair's certificate.

Notation: theta_o* = anchor, D = theta_t - theta_o*, g = grad L_o(theta_o*),
H = curvature of L_o at theta_o* (Hessian, or the configured GGN/Fisher),
(lambda_i, v_i) its top eigenpairs, V = [v_1..v_k], E = L_o(theta_t) - L_o(theta_o*).
Every check returns one record: its numbers, threshold, verdict
(``pass`` | ``fail`` | ``n/a`` with a reason), ``floor`` (True when the verdict
was decided by the ``loss_eps`` floor rather than by the measured numbers) and
cost (curvature products, seconds). Quantities shared between checks (E, H D, ...)
are computed once, on first use, and counted in the cost of the check that needed
them first. The certificate (:meth:`PairChecks.certify`) is a prediction made from
the snapshot alone (anchor-time quantities and D) and verified against E.
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
from .radius import radius_curve
from .snapshot import Snapshot

PASS, FAIL, NA = "pass", "fail", "n/a"


def record(check_id: str, o: int, t: int, verdict: str, values: dict[str, Any], threshold: Any = None,
           reason: str | None = None, cost: dict[str, float] | None = None, floor: bool = False) -> dict[str, Any]:
    """One JSON-ready check record (``floor``: the verdict was decided by the ``loss_eps`` floor)."""
    return {"id": check_id, "name": CHECKS[check_id], "o": o, "t": t, "verdict": verdict, "reason": reason,
            "threshold": threshold, "values": values, "floor": floor, "cost": cost or {"hvp": 0, "seconds": 0.0}}


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
        """E = L_o(theta_t) - L_o(theta_o*), both evaluated in float64 when the objective allows it (a
        float32 mean over thousands of samples carries ~1e-6 nats of rounding noise, as large as the
        remainder of a small step); otherwise in the parameters' dtype."""
        return self._once("forgetting", self._forgetting)

    def _forgetting(self) -> float:
        obj, theta_o = self.snap.objective, self.snap.theta
        if theta_o.dtype != torch.float64:
            try:
                return obj.loss(self.theta_t.double()) - obj.loss(theta_o.double())
            except (RuntimeError, TypeError):  # e.g. float32 buffers (BatchNorm) in a float64 forward
                pass
        return self.loss_t - self.snap.loss

    @property
    def linear(self) -> float:
        """g^T D."""
        return float(self.snap.grad @ self.d)

    @property
    def hd(self) -> Tensor:
        """H D with the configured curvature (one product at the anchor)."""
        return self._once("hd", lambda: self._operator(self.snap.theta).matvec(self.d))

    @property
    def quadratic(self) -> float:
        """D^T H D (configured curvature)."""
        return float(self.d @ self.hd)

    @property
    def hess_d(self) -> Tensor:
        """H_o D with the Hessian itself (Taylor's theorem needs it; the same product as :attr:`hd` on the
        Hessian, one more product otherwise)."""
        if self.cfg.curvature == "hessian":
            return self.hd
        return self._once("hess_d", lambda: self._track(make_operator("hessian", self.snap.objective,
                                                                      self.snap.theta)).matvec(self.d))

    @property
    def hess_quadratic(self) -> float:
        """D^T H_o D with the Hessian."""
        return float(self.d @ self.hess_d)

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
        """E_hat = g^T D + D^T H D / 2 (configured curvature)."""
        return self.linear + 0.5 * self.quadratic

    @property
    def taylor_prediction(self) -> float:
        """E_hat = g^T D + D^T H_o D / 2 with the Hessian (the certificates' prediction)."""
        return self.linear + 0.5 * self.hess_quadratic

    @property
    def remainder_bound(self) -> float | None:
        """Anchor-time bound on |R| while ||D|| <= r_o: M_o ||D||^3 / 6 for ||D|| >= r_1 (the smallest sampled
        radius), and M_o r_1 ||D||^2 / 2 below it (no Hessian change is sampled below r_1, so its variation
        there is bounded by the one at r_1, ||H(theta_o* + w) - H_o|| <= M_o r_1: piecewise-linear
        activations change H in jumps, not in proportion to ||w||); None outside r_o or without M_o."""
        s = self.snap
        if not math.isfinite(s.lipschitz_M) or self.d_norm > s.lipschitz_r:
            return None
        if self.d_norm < s.lipschitz_r1:
            return s.lipschitz_M * s.lipschitz_r1 * self.d_norm**2 / 2
        return s.lipschitz_M * self.d_norm**3 / 6

    def radius_reason(self) -> str | None:
        """Why the anchor-time remainder bound does not apply to this D (None: it applies)."""
        s = self.snap
        if not math.isfinite(s.lipschitz_M):
            return "M_o not estimated at the anchor (checks.certificates off or no stable radius)"
        if self.d_norm > s.lipschitz_r:
            return f"||D||={self.d_norm:.3g} > r_o={s.lipschitz_r:.3g}"
        return None

    def explain(self) -> dict[str, float]:
        """Exact split E = g^T D + D^T H_o D / 2 + R (Hessian) and each term's share of |.|-sum."""
        lin, quad = self.linear, 0.5 * self.hess_quadratic
        rem = self.forgetting - lin - quad
        total = abs(lin) + abs(quad) + abs(rem)

        def share(v: float) -> float:
            return abs(v) / total if total > 0 else 0.0

        return {"linear": lin, "quadratic": quad, "remainder": rem, "share_linear": share(lin),
                "share_quadratic": share(quad), "share_remainder": share(rem),
                "explained": 1.0 - share(rem) if total > 0 else 1.0}

    # ------------------------------------------------------------- certificate
    def certify(self) -> dict[str, Any]:
        """The pair's certificate: the first of exact isolation, null space, Taylor bound whose conditions
        hold (all anchor-time information plus D), verified against the measured E."""
        cfg, s = self.cfg, self.snap
        e = self.forgetting
        tol = cfg.violation_tol * max(1.0, abs(s.loss))
        kinds: dict[str, dict[str, Any]] = {}

        # exact isolation: nothing task o depends on moved
        if s.isolated is None:
            kinds["exact_isolation"] = {"certified": False, "reason": "no isolated parameters declared"}
        else:
            moved = self.d[s.isolated]
            max_moved = float(moved.abs().max()) if moved.numel() else 0.0
            ok = max_moved == 0.0
            kinds["exact_isolation"] = {
                "certified": ok, "prediction": 0.0 if ok else None, "bound": 0.0 if ok else None,
                "n_isolated": int(s.isolated.sum()),
                "reason": None if ok else
                f"max |D| on the {int(s.isolated.sum())} isolated parameters = {max_moved:.3g}"}

        rem_bound = self.remainder_bound
        why_radius = self.radius_reason()
        # null space and Taylor bound (evaluated even when exact isolation holds: the soundness counts see both)
        e_hat = self.taylor_prediction
        bound = None if rem_bound is None else e_hat + rem_bound
        # null space: ||H_o D|| / (lambda_1 ||D||) and |g^T D| small
        hd_ratio = float(self.hess_d.norm()) / (s.lambda_1 * self.d_norm) if self.d_norm and s.lambda_1 > 0 \
            else (0.0 if not self.d_norm else math.inf)
        reasons = []
        if hd_ratio > cfg.null_space_tol:
            reasons.append(f"||H_o D|| / (lambda_1 ||D||)={hd_ratio:.3g} > {cfg.null_space_tol:g}")
        if abs(self.linear) > cfg.null_space_linear:
            reasons.append(f"|g.D|={abs(self.linear):.3g} > {cfg.null_space_linear:g}")
        if why_radius:
            reasons.append(why_radius)
        kinds["null_space"] = {"certified": not reasons, "prediction": e_hat, "bound": bound,
                               "hd_ratio": hd_ratio, "reason": "; ".join(reasons) or None}
        # Taylor bound: inside r_o, with an informative remainder term
        reasons = [why_radius] if why_radius else []
        if rem_bound is not None and rem_bound > cfg.taylor_slack * max(abs(e_hat), cfg.loss_eps):
            reasons.append(f"remainder bound {rem_bound:.3g} > {cfg.taylor_slack:g} |E_hat|={abs(e_hat):.3g}")
        kinds["taylor_bound"] = {"certified": not reasons, "prediction": e_hat, "bound": bound,
                                 "floor": rem_bound is not None and abs(e_hat) < cfg.loss_eps,
                                 "reason": "; ".join(reasons) or None}
        for k in kinds.values():
            k["violated"] = bool(k["certified"] and e > k["bound"] + tol)
        chosen = next((name for name, k in kinds.items() if k["certified"]), None)
        c = kinds[chosen] if chosen else {}
        bound = c.get("bound")
        out = {
            "o": s.task, "t": self.t, "certified": chosen is not None, "kind": chosen,
            "prediction": c.get("prediction", kinds.get("taylor_bound", {}).get("prediction")),
            "bound": bound if chosen else kinds.get("taylor_bound", {}).get("bound"),
            "measured": e, "ratio": (bound / e) if chosen and bound is not None and e >= cfg.loss_eps else None,
            "floor": bool(c.get("floor", False)),
            "violated": any(k["violated"] for k in kinds.values()), "tolerance": tol,
            "distance": self.d_norm, "r_o": s.lipschitz_r, "M_o": s.lipschitz_M,
            "remainder_bound": rem_bound,
            "reason": None if chosen else " | ".join(f"{n}: {k['reason']}" for n, k in kinds.items()),
            "kinds": kinds, "explain": self.explain(),
        }
        return out

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
             reason: str | None = None, floor: bool = False) -> dict[str, Any]:
        return record(cid, self.snap.task, self.t, verdict, values, threshold, reason, floor=floor)

    def c0(self) -> dict[str, Any]:
        """Stationarity: share of g^T D in the prediction; ||g_o|| reported."""
        lin, half_quad = abs(self.linear), abs(0.5 * self.quadratic)
        share = lin / (lin + half_quad) if lin + half_quad > 0 else 0.0
        by_share = share <= self.cfg.stationarity_tol
        floor = not by_share and lin <= self.cfg.loss_eps
        ok = by_share or floor
        vals = {"grad_norm": float(self.snap.grad.norm()), "linear_term": self.linear, "linear_share": share}
        reason = "|g.D| below loss_eps" if floor else (
            None if ok else "anchor not stationary: the null-space form E = D^T H D / 2 does not apply")
        return self._rec("C0", _verdict(ok), vals, {"linear_share": self.cfg.stationarity_tol}, reason, floor)

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
        """Taylor fidelity: kappa = |E - E_hat| / max(|E| + |g^T D| + |D^T H D| / 2, eps), with the split of E
        into linear, quadratic and remainder parts (Hessian) and their shares."""
        e, e_hat = self.forgetting, self.predicted
        scale = abs(e) + abs(self.linear) + 0.5 * abs(self.quadratic)
        floor = scale < self.cfg.loss_eps
        kappa = abs(e - e_hat) / max(scale, self.cfg.loss_eps)
        vals = {"forgetting": e, "predicted": e_hat, "linear_term": self.linear, "quadratic_term": 0.5 * self.quadratic,
                "kappa": kappa, "loss_o": self.snap.loss, "loss_t": self.loss_t, "explain": self.explain()}
        ok = kappa <= self.cfg.kappa_tol
        reason = "|E| + |g.D| + |D^T H D|/2 below loss_eps" if floor else (
            None if ok else "quadratic model does not explain the forgetting (locality broken)")
        return self._rec("C2", _verdict(ok), vals, self.cfg.kappa_tol, reason, floor)

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
        """Spectral sandwich (tightness, no verdict), c = V^T D, r = D - V c:
        LB = (sum_i lambda_i c_i^2 + min(lambda_min, 0) ||r||^2) / 2 <= D^T H D / 2,
        UB = (sum_i lambda_i c_i^2 + lambda_{k+1} ||r||^2) / 2 >= D^T H D / 2 (when lambda_{k+1} bounds the rest),
        UB_loose = (lambda_1 ||c||^2 + lambda_{k+1} ||r||^2) / 2; tightness = UB / (D^T H D / 2)."""
        s = self.snap
        if s.k == 0:
            return self._rec("C4", NA, {}, None, "no eigenvectors stored (memory budget)")
        c = s.eigvecs.T @ self.d
        r2 = max(self.d_norm**2 - float(c @ c), 0.0)
        top = float((s.eigvals[: s.k] * c**2).sum())
        lb = 0.5 * (top + min(s.lambda_min, 0.0) * r2)
        ub = 0.5 * (top + s.lambda_next * r2)
        ub_loose = 0.5 * (s.lambda_1 * float(c @ c) + s.lambda_next * r2)
        half_quad = 0.5 * self.quadratic
        vals = {"lower": lb, "upper": ub, "upper_loose": ub_loose, "quadratic_term": half_quad,
                "tightness": ub / half_quad if half_quad > 0 else None,
                "quadratic_inside": lb - self.cfg.loss_eps <= half_quad <= ub + self.cfg.loss_eps,
                "subspace_share": float(c.norm()) / self.d_norm if self.d_norm else 0.0, "k": s.k}
        return self._rec("C4", NA, vals, None, "descriptive: how much of D^T H D the stored top-k explain")

    def c5(self) -> dict[str, Any]:
        """Per-step leakage ||V^T d_s|| / ||d_s|| of task t's optimiser steps into task o's basis."""
        s = self.snap
        baseline = math.sqrt(s.k / self.d.numel())
        tol = self.cfg.leakage_tol * baseline
        vals: dict[str, Any] = {"random_baseline": baseline}
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
        vals["ratio_to_random"] = vals["mean"] / baseline if baseline > 0 else math.nan
        ok = vals["mean"] <= tol
        return self._rec("C5", _verdict(ok), vals, {"ratio_to_random": self.cfg.leakage_tol},
                         None if ok else "updates enter task o's top-k subspace more than a random direction")

    def c6(self) -> dict[str, Any]:
        """Validity radius along the update taken, u = D / ||D|| (diagnostic: evaluates L_o on the segment):
        r*_D from e(r) = |dL(r) - q(r)| / max(|dL|, |q|, eps) on the grid radii <= ||D|| and ||D|| itself,
        q(r) = r g^T u + r^2 u^T H_o u / 2; pass when the quadratic model held up to ||D||. The anchor-time
        r* (top eigenvectors and random directions) is reported next to it."""
        vals: dict[str, Any] = {"distance": self.d_norm, "r_star_anchor": self.snap.radius}
        if self.d_norm == 0:
            return self._rec("C6", NA, vals, {"radius_tol": self.cfg.radius_tol}, "D = 0: no update")
        u = self.d / self.d_norm
        radii = sorted({*(r for r in self.cfg.radii if r < self.d_norm), self.d_norm})
        snap = self.snap
        curve = radius_curve(snap.objective.losses_along, snap.theta, snap.loss, self.linear / self.d_norm,
                             self.hess_quadratic / self.d_norm**2, u, radii, self.cfg.radius_tol, self.cfg.loss_eps,
                             two_sided=False)
        vals.update(r_star=curve["r_star"], along_d=curve)
        ok = curve["r_star"] >= self.d_norm
        floor = ok and max(abs(v) for v in curve["loss_change"]) < self.cfg.loss_eps
        return self._rec("C6", _verdict(ok), vals, {"radius_tol": self.cfg.radius_tol},
                         None if ok else f"quadratic model broke down along D at r={curve['r_star']:.3g} "
                                         f"< ||D||={self.d_norm:.3g}", floor)

    def c7(self) -> dict[str, Any]:
        """Remainder: the exact R = E - g^T D - D^T H_o D / 2 against the anchor-time bound M_o ||D||^3 / 6
        (pass: |R| <= remainder_tol x bound, the anchor-time constant held along this D)."""
        bound = self.remainder_bound
        ex = self.explain()
        vals = {"remainder": ex["remainder"], "bound": bound, "M_o": self.snap.lipschitz_M,
                "r_o": self.snap.lipschitz_r, "distance": self.d_norm, "share_remainder": ex["share_remainder"]}
        if bound is None:
            return self._rec("C7", NA, vals, self.cfg.remainder_tol, self.radius_reason())
        tol = self.cfg.violation_tol * max(1.0, abs(self.snap.loss))
        ok = abs(ex["remainder"]) <= self.cfg.remainder_tol * bound + tol
        vals["ratio"] = abs(ex["remainder"]) / bound if bound > 0 else None
        return self._rec("C7", _verdict(ok), vals, self.cfg.remainder_tol,
                         None if ok else "exact remainder exceeds the anchor-time bound M_o ||D||^3 / 6")

    def c8(self) -> dict[str, Any]:
        """Function drift: mean ||J D||^2 (JVP at theta_o*) vs mean ||f_t(x) - f_o(x)||^2 on S_o."""
        obj = self.snap.objective
        f_o, jd = obj.outputs_and_jvp(self.snap.theta, self.d)
        f_t = obj.outputs(self.theta_t)  # the objective's outputs: task o's columns in task-IL
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
        """Loss profile L_o(theta_o* + a D) on the a-grid and a = 1; rise = max_a L_o(theta_o* + a D) - L_o(theta_o*)
        (pass: rise <= barrier_tol, the whole segment stays in task o's low-loss region). The chord barrier
        (linear mode connectivity) and the layer-wise barriers are reported next to it."""
        loss = self.snap.objective.loss
        full = barrier(loss, self.snap.theta, self.theta_t, self.cfg.lmc_alphas, self.snap.loss, self.loss_t)
        curve: list[float] = list(full["loss"])  # type: ignore[arg-type]
        alphas: list[float] = list(full["alphas"])  # type: ignore[arg-type]
        profile = [self.snap.loss, *curve, self.loss_t]
        rise = max(profile) - self.snap.loss
        vals: dict[str, Any] = {"rise": rise, "barrier": full["barrier"], "alphas": [0.0, *alphas, 1.0],
                                "loss": profile}
        if self.cfg.lmc_layerwise and self.groups:
            layers = layerwise_barriers(loss, self.snap.theta, self.theta_t, self.groups, self.cfg.lmc_layer_alphas,
                                        self.snap.loss)
            vals["layer_barriers"] = layers
            vals["max_layer_barrier"] = max(layers.values(), default=0.0)
        ok = rise <= self.cfg.barrier_tol
        return self._rec("C11", _verdict(ok), vals, self.cfg.barrier_tol,
                         None if ok else "task o's loss rises by more than barrier_tol along the segment")
