"""GeometryTracker: curvature snapshots at the end of each task, checks of past tasks after each task,
per-step leakage during training, and the run's certificates (docs/guarantees.md).

Runner protocol, per task t (not for ``joint`` runs):
``Trainer(callbacks=[tracker.callback()]).fit(...)`` -> ``module.after_task(task)`` ->
``tracker.check(module, t)`` (past tasks o < t) -> ``tracker.snapshot(module, task)``;
after the last task ``result.checks = tracker.summary()``.
The loss of task o is the loss of the task as the setting evaluates it
(cross-entropy over every output in class-IL, over task o's own classes in
task-IL, whatever training masked; eval mode), never the strategy's penalty.
theta is the network's flat vector (:mod:`cl_bench.layout`: frozen copies such
as a distillation teacher are outside it).
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, fields
from typing import Any, cast

import lightning as L
import torch
from torch import Tensor, nn

from cl_bench.data import Scenario, Task, iterate_eval
from cl_bench.layout import ParamLayout, flat_params, network_parameters
from cl_bench.models import MultiHead
from cl_bench.module import ContinualModule, StepCallback, eval_mode
from cl_bench.seeds import generator

from .certificate import certificate
from .checks import PairChecks, record
from .config import ChecksConfig
from .lipschitz import lipschitz_lower, lipschitz_upper
from .objective import module_objective
from .operators import make_operator
from .snapshot import Snapshot, take_snapshot


def declared_isolation(module: nn.Module, task_id: int) -> Tensor | None:
    """``module.isolated_mask(task_id)`` (bool [P] in the layout of :mod:`cl_bench.layout`), None when the
    module declares nothing."""
    fn = getattr(module, "isolated_mask", None)
    mask = fn(task_id) if callable(fn) else None
    return None if mask is None else mask.detach().bool()


class GeometryTracker:
    """Snapshots, checks and leakage of one run (one tracker per run)."""

    def __init__(self, cfg: ChecksConfig, scenario: Scenario, device: torch.device | str) -> None:
        self.cfg, self.scenario, self.device = cfg, scenario, torch.device(device)
        self.snapshots: dict[int, Snapshot] = {}
        self.records: list[dict[str, Any]] = []
        self.pairs: list[dict[str, Any]] = []  # one certificate per (o, t)
        self.warnings: list[str] = []
        self._steps: dict[int, list[Tensor]] = defaultdict(list)  # task t -> per-step [||d||, leak_o...]
        self._step_tasks: dict[int, list[int]] = {}  # task t -> past tasks o in column order
        self._stored_bytes = 0

    # ------------------------------------------------------------------ probes
    def probe_set(self, task: Task) -> tuple[Tensor, Tensor]:
        """S_o: ``probe_size`` training samples of the task (fixed by ``checks.seed``), normalised, on device."""
        n = min(self.cfg.probe_size, task.n_train)
        gen = generator(self.cfg.seed, task.id)
        idx = torch.randperm(task.n_train, generator=gen)[:n].sort().values
        s = self.scenario
        x, y = next(iterate_eval(task.x_train[idx], task.y_train[idx], n, self.device, s.mean, s.std))
        return x, y

    def _k_within_budget(self, n_params: int, elem_bytes: int) -> int:
        per_vec = n_params * elem_bytes
        room = int(self.cfg.eigvec_budget_mb * 2**20) - self._stored_bytes
        k = max(0, min(self.cfg.k, room // per_vec))
        if k < self.cfg.k:
            msg = (f"checks.eigvec_budget_mb={self.cfg.eigvec_budget_mb}: keeping {k} of k={self.cfg.k} eigenvectors "
                   f"({per_vec / 2**20:.2f} MB each, {self._stored_bytes / 2**20:.1f} MB stored); "
                   "raise checks.eigvec_budget_mb or lower checks.k")
            warnings.warn(msg, stacklevel=3)
            self.warnings.append(msg)
        return k

    # -------------------------------------------------------------- snapshot
    def snapshot(self, module: nn.Module, task: Task) -> list[dict[str, Any]]:
        """Snapshot of task o = ``task.id`` at the module's current parameters; returns its C12 record."""
        if not self.cfg.enabled:
            return []
        with eval_mode(module):
            x, y = self.probe_set(task)
            obj = module_objective(module, x, y, task.id, self.cfg.probe_batch_size or None, logits="setting")
            theta = flat_params(module)
            k = self._k_within_budget(theta.numel(), theta.element_size())
            snap = take_snapshot(obj, theta, task.id, self.cfg, k, obj.columns, declared_isolation(module, task.id))
            self._stored_bytes += snap.eigvecs.numel() * snap.eigvecs.element_size()
            self.snapshots[task.id] = snap
            recs = [self._landscape(module, snap)] if self.cfg.wants("C12") else []
        self.records.extend(recs)
        return recs

    def _landscape(self, module: nn.Module, snap: Snapshot) -> dict[str, Any]:
        """C12 (descriptive): lambda_1, trace, top-k energy, numerical rank, Lipschitz bounds."""
        t0, o, cfg = time.perf_counter(), snap.task, self.cfg
        hvp = 0
        vals: dict[str, Any] = {
            "lambda_1": snap.lambda_1, "lambda_min": snap.lambda_min, "trace": snap.trace,
            "trace_std_error": snap.trace_std_error,
            "top_k_energy": float(snap.eigvals[: cfg.k].sum()) / snap.trace if snap.trace else math.nan,
            "numerical_rank": None, "lipschitz_lower": None, "lipschitz_upper": None,
        }
        reasons = []
        floating_buffers = any(b.is_floating_point() for b in module.buffers())
        if snap.theta.numel() > cfg.rank_max_params:
            reasons.append(f"numerical rank: {snap.theta.numel()} params > checks.rank_max_params")
        elif floating_buffers:
            reasons.append("numerical rank: float64 Hessian needs a model without floating buffers (BatchNorm)")
        else:
            op = make_operator(cfg.curvature, snap.objective, snap.theta.double())
            ev = torch.linalg.eigvalsh(op.dense(cfg.rank_max_params))
            hvp += op.n_matvec
            vals["numerical_rank"] = int((ev.abs() > ev.abs().max() * ev.numel() * torch.finfo(ev.dtype).eps).sum())
        if cfg.lipschitz.enabled:
            x = snap.objective.x[: cfg.lipschitz.samples].to(snap.theta.dtype)
            tid = torch.full((x.shape[0],), o, dtype=torch.long, device=x.device)
            cols = snap.columns

            def logits(xb: Tensor) -> Tensor:
                z = module(xb, tid)
                return z[:, cols] if cols is not None else z

            vals["lipschitz_lower"] = lipschitz_lower(logits, x)
            chain, head_w, why = self._chain(module, o, cols)
            if chain is not None and head_w is not None:
                vals["lipschitz_upper"], why = lipschitz_upper(chain, head_w, x, cfg.lipschitz.power_iters)
            if why:
                reasons.append(f"lipschitz upper: {why}")
        rec = record("C12", o, o, "n/a", vals, None, "; ".join(["descriptive", *reasons]))
        rec["cost"] = {"hvp": hvp, "seconds": time.perf_counter() - t0}
        return rec

    @staticmethod
    def _chain(module: nn.Module, o: int, cols: list[int] | None
               ) -> tuple[list[nn.Module] | None, Tensor | None, str | None]:
        backbone = getattr(module, "backbone", None)
        body, head = getattr(backbone, "body", None), getattr(backbone, "head", None)
        if not isinstance(body, nn.Sequential):
            return None, None, "backbone has no sequential body"
        if isinstance(head, MultiHead):
            head_o: Any = head.heads[o]
            return list(body), head_o.weight, None
        if isinstance(head, nn.Linear):
            return list(body), head.weight[cols] if cols is not None else head.weight, None
        return None, None, f"head {type(head).__name__} is not linear"

    # ------------------------------------------------------------------ checks
    def check(self, module: nn.Module, t: int) -> list[dict[str, Any]]:
        """Checks C0-C11 of every snapshot o < t at the module's current parameters theta_t."""
        if not self.cfg.enabled:
            return []
        out: list[dict[str, Any]] = []
        with eval_mode(module):
            theta_t = flat_params(module)
            prev = self.snapshots[t - 1].theta if t - 1 in self.snapshots else None
            groups = ParamLayout.of(module).groups()
            steps = self._step_matrix(t)
            for o in sorted(s for s in self.snapshots if s < t):
                snap = self.snapshots[o]
                if snap.theta.numel() != theta_t.numel():
                    raise ValueError(f"checks: the module has {theta_t.numel()} parameters after task {t} but "
                                     f"{snap.theta.numel()} at task {o}'s snapshot; parameters must not change shape")
                leak = None
                if steps is not None and o in self._step_tasks[t]:
                    leak = steps[:, 1 + self._step_tasks[t].index(o)]
                pair = PairChecks(snap, theta_t, t, self.cfg, prev, leak, groups)
                out += pair.run(self.cfg.which)
                if self.cfg.certificates:
                    self.pairs.append(pair.certify())
        self.records.extend(out)
        return out

    def begin_steps(self, t: int) -> list[int]:
        """Start recording task t's steps: the past tasks o < t with stored eigenvectors (its C5 columns)."""
        if not self.cfg.wants("C5"):
            return []
        past = [o for o in sorted(self.snapshots) if o < t and self.snapshots[o].k > 0]
        self._step_tasks[t] = past
        return past

    def add_step(self, t: int, row: Tensor) -> None:
        """One optimiser step of task t: ``[||d_s||, leak_o for o in begin_steps(t)]`` (kept on the device)."""
        self._steps[t].append(row)

    def _step_matrix(self, t: int) -> Tensor | None:
        """Per-step rows [||d_s||, leak_o...] of task t, zero updates dropped."""
        rows = self._steps.get(t)
        if not rows:
            return None
        m = torch.stack(rows)
        return m[m[:, 0] > 0]

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: snapshots (without their probe objective, rebuilt on load) and records."""
        snaps = {o: {f.name: getattr(s, f.name) for f in fields(s) if f.name != "objective"}
                 for o, s in self.snapshots.items()}
        return {"snapshots": snaps, "records": self.records, "pairs": self.pairs, "warnings": self.warnings,
                "steps": dict(self._steps), "step_tasks": self._step_tasks, "stored_bytes": self._stored_bytes}

    def load_state_dict(self, state: dict[str, Any], module: nn.Module) -> None:
        """Restore :meth:`state_dict` for ``module`` (the probe objectives are rebuilt from the fixed probe sets)."""
        def to_device(v: Any) -> Any:
            return v.to(self.device) if isinstance(v, Tensor) else v

        with eval_mode(module):
            for o, saved in state["snapshots"].items():
                x, y = self.probe_set(self.scenario.tasks[o])
                obj = module_objective(module, x, y, o, self.cfg.probe_batch_size or None, logits="setting")
                self.snapshots[o] = Snapshot(objective=obj, **{k: to_device(v) for k, v in saved.items()})
        self.records, self.warnings = state["records"], state["warnings"]
        self.pairs = state.get("pairs", [])
        self._steps = defaultdict(list, {t: [to_device(r) for r in rows] for t, rows in state["steps"].items()})
        self._step_tasks, self._stored_bytes = state["step_tasks"], state["stored_bytes"]

    # ---------------------------------------------------------------- callback
    def callback(self) -> L.Callback:
        """Lightning callback measuring C5 leakage of every optimiser step into the stored bases of past tasks."""
        return LeakageCallback(self)

    # ----------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        """JSON-ready: config, snapshot records, all check records, the certificates (per pair and counted),
        verdict counts (with ``floor``: verdicts decided by the loss_eps floor), cost per check."""
        verdicts: dict[str, Counter] = defaultdict(Counter)
        floors: Counter = Counter()
        cost: dict[str, dict[str, float]] = defaultdict(lambda: {"hvp": 0, "seconds": 0.0})
        for r in self.records:
            verdicts[r["id"]][r["verdict"]] += 1
            floors[r["id"]] += bool(r.get("floor"))
            cost[r["id"]]["hvp"] += r["cost"]["hvp"]
            cost[r["id"]]["seconds"] += r["cost"]["seconds"]
        for s in self.snapshots.values():
            for part, c in s.record["cost"].items():
                cost[f"snapshot_{part}"]["hvp"] += c["hvp"]
                cost[f"snapshot_{part}"]["seconds"] += c["seconds"]
        return {
            "config": asdict(self.cfg), "snapshots": [self.snapshots[o].record for o in sorted(self.snapshots)],
            "records": self.records, "certificate": certificate(self.pairs),
            "verdicts": {k: dict(v) for k, v in verdicts.items()}, "floor_verdicts": dict(floors),
            "cost": dict(cost), "warnings": self.warnings,
        }


class LeakageCallback(StepCallback):
    """C5: after every optimiser step s of task t, leak_o(s) = ||V_o^T d_s|| / ||d_s|| for each past o.

    d_s is the parameter change between consecutive ``on_step_start`` calls
    (and ``on_train_end``), so corrections the module applies after the optimiser step
    (``transform_update``) are included. Each call copies theta into a row of a
    ``[STEPS_PER_PRODUCT + 1, P]`` buffer; every :data:`STEPS_PER_PRODUCT` steps (and at the end of
    training) the buffered steps' changes D ``[S, P]`` give their leakages by one ``D V`` product
    (``V = [V_o ...]`` ``[P, K]``, K = sum of stored k). Values stay on the device until the checks run.
    """

    #: optimiser steps whose leakages are computed by one product
    STEPS_PER_PRODUCT = 64

    def __init__(self, tracker: GeometryTracker) -> None:
        self.tracker = tracker
        self._thetas: Tensor | None = None  # [STEPS_PER_PRODUCT + 1, P]: theta at the buffered step starts
        self._filled = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t: int = int(getattr(pl_module, "current_task"))
        past = self.tracker.begin_steps(self._t)
        self._thetas = None
        if not past:
            return
        snaps = self.tracker.snapshots
        self._basis = torch.cat([snaps[o].eigvecs for o in past], dim=1)  # [P, K]
        self._segments = torch.cat([torch.full((snaps[o].k,), i, device=self._basis.device)
                                    for i, o in enumerate(past)])
        self._n_past = len(past)
        self._params = [p for _, p in network_parameters(pl_module)]
        theta = flat_params(pl_module)
        self._thetas = theta.new_empty(self.STEPS_PER_PRODUCT + 1, theta.numel())
        self._thetas[0], self._filled = theta, 1

    def _measure(self) -> None:
        if self._thetas is None:
            return
        torch.cat([p.detach().reshape(-1) for p in self._params], out=self._thetas[self._filled])
        self._filled += 1
        if self._filled == self._thetas.shape[0]:
            self._flush()

    def _flush(self) -> None:
        """The leakages of the buffered steps, one row ``[||d_s||, leak_o...]`` per step to the tracker."""
        thetas = cast(Tensor, self._thetas)
        d = thetas[1:self._filled] - thetas[:self._filled - 1]  # [S, P]
        proj2 = (d @ self._basis) ** 2  # [S, K]
        per_task = proj2.new_zeros(d.shape[0], self._n_past).index_add_(1, self._segments, proj2)  # [S, n_past]
        norm = d.norm(dim=1)  # [S]
        leak = per_task.sqrt() / norm.clamp_min(torch.finfo(d.dtype).tiny)[:, None]
        for row in torch.cat([norm[:, None], leak], dim=1):
            self.tracker.add_step(self._t, row)
        thetas[0], self._filled = thetas[self._filled - 1], 1

    def on_step_start(self, module: ContinualModule) -> None:
        self._measure()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._measure()
        if self._thetas is not None:
            self._flush()
        self._thetas = None
