"""Continual-learning metrics from the accuracy and loss matrices.

Notation (0-indexed, T tasks): ``R[t][j]`` = test accuracy on task j after
training task t (a T x T matrix: the runner evaluates every task after every
task, or with ``trainer.eval_every`` after some tasks only: the other rows are
all None, and every metric but the final-row ones is then undefined, never 0);
``b[j]`` = accuracy of the untrained model on task j;
``Ltr[t][j]`` = training loss on task j after training task t.

Peers disagree on "forgetting"; every variant is kept under its own name:

- ``forgetting``            max over rows j..T-2, minus the last row (Chaudhry et al. 2018)
- ``forgetting_avalanche``  diagonal minus last row (Avalanche's first-minus-last)
- ``forgetting_mammoth``    max over rows j..T-1 (the last included), minus the last row:
  Mammoth's ``utils/metrics.py::forgetting`` takes the column max of the
  accuracy list with the not-yet-seen tasks padded with 0, so rows l < j never
  win and the last row is inside the max; each term is therefore >= 0.

Per-task vectors of the forgetting/bwt/loss variants are indexed by j = 0..T-2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cl_bench.data.task import SETTINGS

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class Metric:
    """What a metric means, which way is better, and how the terminal, reports and the regression gate use it.

    ``source``: ``matrix`` (computed from the stored matrices by :func:`compute_metrics`) or ``run``
    (a property of the whole run). ``floor``: the absolute floor of the regression gate's band
    (None: not gated). ``headline``: a column of the terminal table and the reports.
    """

    doc: str
    better: str
    headline: bool = False
    floor: float | None = None
    source: str = "matrix"


METRICS: dict[str, Metric] = {
    "acc": Metric("final average accuracy: mean_j R[T-1][j]", HIGHER, True, 0.03),
    "acc_sample_weighted": Metric(
        "final accuracy weighted by test sizes: sum_j n_j R[T-1][j] / sum_j n_j", HIGHER),
    "aia": Metric("average incremental accuracy: mean_t mean_{j<=t} R[t][j]", HIGHER, True, 0.03),
    "forgetting": Metric(
        "Chaudhry 2018: mean_{j<T-1} (max_{j<=l<=T-2} R[l][j] - R[T-1][j])", LOWER, True, 0.03),
    "forgetting_avalanche": Metric("Avalanche first-minus-last: mean_{j<T-1} (R[j][j] - R[T-1][j])", LOWER),
    "forgetting_mammoth": Metric(
        "Mammoth: mean_{j<T-1} (max_{j<=l<=T-1} R[l][j] - R[T-1][j]), last row inside the max", LOWER),
    "bwt": Metric(
        "backward transfer (Lopez-Paz & Ranzato 2017): mean_{j<T-1} (R[T-1][j] - R[j][j])", HIGHER, True, 0.03),
    "fwt": Metric("forward transfer (Lopez-Paz & Ranzato 2017): mean_{j>0} (R[j-1][j] - b[j]); undefined in "
                  "class-IL", HIGHER, True, 0.05),
    "learning_acc": Metric("learning accuracy: mean_j R[j][j]", HIGHER, True, 0.03),
    "intransigence": Metric("Chaudhry 2018: mean_j (joint_acc[j] - R[j][j])", LOWER, True, 0.03),
    "loss_forgetting": Metric(
        "mean_{j<T-1} (Ltr[T-1][j] - Ltr[j][j]), training loss of the setting (nats)", LOWER, True, 0.15),
    "time_s": Metric("wall-clock seconds of the whole run (training, consolidation, evaluation)", LOWER, True,
                     source="run"),
    "certificate_violations": Metric(
        "share of certified (o, t) pairs whose measured forgetting exceeded the bound", LOWER, floor=0.05,
        source="run"),
}
#: the metrics :func:`compute_metrics` derives from the matrices
MATRIX_METRICS: tuple[str, ...] = tuple(m for m, info in METRICS.items() if info.source == "matrix")
#: the columns of the terminal table and the reports
HEADLINE: tuple[str, ...] = tuple(m for m, info in METRICS.items() if info.headline)


def lower_is_better(metric: str) -> bool:
    """True for a metric of :data:`METRICS` whose lower values are better (forgetting-like)."""
    return metric in METRICS and METRICS[metric].better == LOWER


@dataclass
class MetricReport:
    """Scalar metrics (``None`` when undefined), per-task vectors, and why undefined."""

    values: dict[str, float | None] = field(default_factory=dict)
    per_task: dict[str, list[float]] = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"values": dict(self.values), "per_task": dict(self.per_task), "undefined": dict(self.undefined)}


def final_accuracy(R: np.ndarray) -> float:
    """ACC = 1/T sum_j R[T-1][j] (Lopez-Paz & Ranzato 2017, Sec. 2; Chaudhry et al. 2018, A_T)."""
    return float(R[-1].mean())


def final_accuracy_weighted(R: np.ndarray, test_sizes: np.ndarray) -> float:
    """sum_j n_j R[T-1][j] / sum_j n_j: the accuracy on the union of all test sets."""
    return float((test_sizes * R[-1]).sum() / test_sizes.sum())


def average_incremental_accuracy(R: np.ndarray) -> float:
    """AIA = 1/T sum_t A_t with A_t = 1/(t+1) sum_{j<=t} R[t][j] (Rebuffi et al. 2017 iCaRL;
    Hou et al. 2019 LUCIR; Douillard et al. 2020 PODNet), tasks weighted equally within A_t."""
    T = R.shape[0]
    seen = np.tril(np.ones((T, T), dtype=bool))
    return float(((R * seen).sum(axis=1) / seen.sum(axis=1)).mean())


def forgetting_per_task(R: np.ndarray) -> np.ndarray:
    """f_j = max_{l in [j, T-2]} R[l][j] - R[T-1][j], j < T-1
    (Chaudhry et al. 2018, RWalk, "forgetting measure", evaluated after the last task)."""
    return _best_before(R, last=R.shape[0] - 2) - R[-1, :-1]


def forgetting_avalanche_per_task(R: np.ndarray) -> np.ndarray:
    """f_j = R[j][j] - R[T-1][j], j < T-1 (Avalanche's forgetting: accuracy when first learnt minus last)."""
    return np.diag(R)[:-1] - R[-1, :-1]


def forgetting_mammoth_per_task(R: np.ndarray) -> np.ndarray:
    """f_j = max_{l in [j, T-1]} R[l][j] - R[T-1][j] >= 0, j < T-1 (Mammoth's forgetting:
    column max over all rows of the zero-padded lower-triangular accuracy list)."""
    return _best_before(R, last=R.shape[0] - 1) - R[-1, :-1]


def bwt_per_task(R: np.ndarray) -> np.ndarray:
    """BWT_j = R[T-1][j] - R[j][j], j < T-1 (Lopez-Paz & Ranzato 2017, Sec. 2)."""
    return R[-1, :-1] - np.diag(R)[:-1]


def fwt_per_task(R: np.ndarray, acc_init: np.ndarray) -> np.ndarray:
    """FWT_j = R[j-1][j] - b[j], j = 1..T-1 (Lopez-Paz & Ranzato 2017, Sec. 2)."""
    return np.diag(R, k=1) - acc_init[1:]


def learning_accuracy(R: np.ndarray) -> float:
    """LA = 1/T sum_j R[j][j]: accuracy on each task right after learning it (Riemer et al. 2019)."""
    return float(np.diag(R).mean())


def intransigence_per_task(R: np.ndarray, joint_acc: np.ndarray) -> np.ndarray:
    """I_j = a*_j - R[j][j] (Chaudhry et al. 2018, RWalk, "intransigence measure"). RWalk's a*_j
    is a model trained jointly on tasks 0..j; here it is whatever joint model the caller ran
    (the ``joint`` baseline trains once on all tasks, a common approximation)."""
    return joint_acc - np.diag(R)


def loss_forgetting_per_task(Ltr: np.ndarray) -> np.ndarray:
    """E_j = L_j(theta_{T-1}) - L_j(theta_j) = Ltr[T-1][j] - Ltr[j][j], j < T-1: the increase in
    task j's training loss, the quantity the quadratic (EWC-style) model of L_j predicts."""
    return Ltr[-1, :-1] - np.diag(Ltr)[:-1]


def compute_metrics(
    acc: Sequence[Sequence[float]],
    acc_init: Sequence[float] | None,
    test_sizes: Sequence[int],
    setting: str,
    train_loss: Sequence[Sequence[float]] | None = None,
    joint_acc: Sequence[float] | None = None,
) -> MetricReport:
    """Every metric of :data:`MATRIX_METRICS` from the stored matrices; undefined ones are
    ``None`` in ``values`` with the reason in ``undefined`` (never 0)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting={setting!r} is not valid; choose one of {list(SETTINGS)}")
    R = _square("acc", acc)
    T = R.shape[0]
    sizes = _vector("test_sizes", test_sizes, T)
    if (sizes <= 0).any():
        raise ValueError(f"test_sizes must be positive, got {sizes.tolist()}")
    report = MetricReport()

    def put(name: str, value: float | None, per_task: np.ndarray | None = None, reason: str = "") -> None:
        report.values[name] = value
        if value is None:
            report.undefined[name] = reason
        elif per_task is not None:
            report.per_task[name] = per_task.tolist()

    put("acc", final_accuracy(R), R[-1])
    put("acc_sample_weighted", final_accuracy_weighted(R, sizes))
    missing = [t for t in range(T) if np.isnan(R[t]).all()]
    if missing:
        reason = (f"needs the row after every task; rows {missing} were not evaluated (trainer.eval_every)")
        for name in MATRIX_METRICS:
            if name not in report.values:
                put(name, None, reason=reason)
        return report
    put("aia", average_incremental_accuracy(R))
    put("learning_acc", learning_accuracy(R), np.diag(R))
    past = {
        "forgetting": forgetting_per_task,
        "forgetting_avalanche": forgetting_avalanche_per_task,
        "forgetting_mammoth": forgetting_mammoth_per_task,
        "bwt": bwt_per_task,
    }
    for name, fn in past.items():
        if T == 1:
            put(name, None, reason="T=1: no task was learnt before the last one")
        else:
            f = fn(R)
            put(name, float(f.mean()), f)

    if setting == "class_il":
        put("fwt", None, reason="class-IL: before task j its classes were never trained, so R[j-1][j] ~ 0 "
            "by construction, not transfer")
    elif acc_init is None:
        put("fwt", None, reason="acc_init (accuracy of the untrained model, b) was not recorded")
    elif T == 1:
        put("fwt", None, reason="T=1: no task follows another")
    else:
        f = fwt_per_task(R, _vector("acc_init", acc_init, T))
        put("fwt", float(f.mean()), f)

    if joint_acc is None:
        put("intransigence", None, reason="no joint-model accuracies (run the 'joint' strategy)")
    else:
        f = intransigence_per_task(R, _vector("joint_acc", joint_acc, T))
        put("intransigence", float(f.mean()), f)

    if train_loss is None:
        put("loss_forgetting", None, reason="no training-loss matrix recorded")
    else:
        Ltr = _square("train_loss", train_loss)
        if Ltr.shape[0] != T:
            raise ValueError(f"train_loss is {Ltr.shape[0]}x{Ltr.shape[0]} but acc is {T}x{T}")
        if T == 1:
            put("loss_forgetting", None, reason="T=1: no task was learnt before the last one")
        else:
            f = loss_forgetting_per_task(Ltr)
            put("loss_forgetting", float(f.mean()), f)
    return report


def _best_before(R: np.ndarray, last: int) -> np.ndarray:
    """max_{l in [j, last]} R[l][j] for each j < T-1, batched with a window mask."""
    T = R.shape[0]
    l, j = np.arange(T)[:, None], np.arange(T - 1)[None, :]
    window = (l >= j) & (l <= last)
    return np.where(window, R[:, :-1], -np.inf).max(axis=0)


def _square(name: str, rows: Sequence[Sequence[float]]) -> np.ndarray:
    T = len(rows)
    if T == 0:
        raise ValueError(f"{name} is empty: expected a T x T matrix (row t = after training task t)")
    for t, row in enumerate(rows):
        if len(row) != T:
            raise ValueError(f"{name} must be square T x T with T={T} rows; row {t} has {len(row)} entries "
                             "(every task must be evaluated after every task)")
    if any(all(v is None for v in row) for row in rows[-1:]):
        raise ValueError(f"{name}: the last row (after the last task) is not evaluated; every metric needs it")
    R = np.asarray([[np.nan] * T if all(v is None for v in row) else row for row in rows], dtype=np.float64)
    bad = np.argwhere(~np.isfinite(R) & ~np.isnan(R).all(axis=1, keepdims=True))
    if len(bad):
        raise ValueError(f"{name}[{bad[0][0]}][{bad[0][1]}] is not finite ({R[tuple(bad[0])]})")
    return R


def _vector(name: str, values: Sequence[float], T: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (T,):
        raise ValueError(f"{name} must have one entry per task (T={T}), got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} has non-finite entries: {v.tolist()}")
    return v


#: the validation metrics of a run (``val/<name>``); selection (``cl-bench best``, sweeps) uses only these
VALIDATION_METRICS: dict[str, str] = {
    "val/acc": "mean_j V[T-1][j]: final validation accuracy averaged over tasks (V: the validation accuracy matrix)",
    "val/forgetting": "mean_{j<T-1} max_{j<=t<T-1} (V[t][j] - V[T-1][j]): forgetting on the validation splits",
}


def validation_metrics(val_acc: list[list[float]]) -> dict[str, float | None]:
    """:data:`VALIDATION_METRICS` of the validation accuracy matrix ``V[t][j]`` (a single row: no forgetting)."""
    last = val_acc[-1]
    out: dict[str, float | None] = {"val/acc": sum(last) / len(last), "val/forgetting": None}
    if len(val_acc) > 1 and len(last) > 1:
        drops = [max(val_acc[t][j] for t in range(j, len(val_acc) - 1)) - last[j] for j in range(len(last) - 1)]
        out["val/forgetting"] = sum(drops) / len(drops)
    return out
