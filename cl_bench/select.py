"""Hyper-parameter selection on validation: ``cl-bench best RESULTS_DIR --metric val/acc``.

Every strategy label of a results folder (a sweep's grid points are labels,
``ewc@lam=10``) is scored by the mean over seeds of a validation metric
(:data:`cl_bench.metrics.VALIDATION_METRICS`, from the held-out
``scenario.val_fraction`` of each task's training data); the best label per
setting is selected, and its *test* metrics are reported beside it. A test
metric is refused as the selection metric: choosing on the test sets would
make the reported test numbers optimistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cl_bench.metrics import VALIDATION_METRICS
from cl_bench.results import RunResult

#: lower is better among the validation metrics
LOWER_IS_BETTER = ("val/forgetting",)


@dataclass
class Candidate:
    """One label of one setting: its validation score (mean over seeds) and its runs."""

    setting: str
    label: str
    score: float
    runs: list[RunResult]


def candidates(runs: list[RunResult], metric: str) -> list[Candidate]:
    """Every (setting, label) with the validation ``metric`` defined in all its finished runs."""
    if metric not in VALIDATION_METRICS:
        valid = ", ".join(VALIDATION_METRICS)
        raise ValueError(f"--metric {metric}: selection uses a validation metric only ({valid}), never a test "
                         "metric; run with scenario.val_fraction > 0 (e.g. 0.1) to have them")
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in runs:
        if r.status == "ok":
            groups.setdefault((r.setting, r.label), []).append(r)
    out = []
    for (setting, label), group in groups.items():
        values = [r.metrics.get(metric) for r in group]
        if values and all(v is not None for v in values):
            out.append(Candidate(setting, label, sum(float(v) for v in values if v is not None) / len(values), group))
    if not out:
        raise ValueError(f"no finished run has {metric}: the runs were made without a validation split; "
                         "re-run with scenario.val_fraction=0.1")
    return out


def select(runs: list[RunResult], metric: str) -> dict[str, tuple[Candidate, list[Candidate]]]:
    """Per setting: the best candidate by ``metric`` and every candidate, best first."""
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    by_setting: dict[str, list[Candidate]] = {}
    for c in candidates(runs, metric):
        by_setting.setdefault(c.setting, []).append(c)
    return {s: (sorted(cs, key=lambda c: (sign * c.score, c.label))[0],
                sorted(cs, key=lambda c: (sign * c.score, c.label))) for s, cs in by_setting.items()}


def describe(c: Candidate) -> dict[str, Any]:
    """The configuration of a selected label: strategy class, hyper-parameters, optimiser, seeds."""
    config = c.runs[0].config
    return {"strategy": c.runs[0].strategy, "params": config.get("params", {}),
            "optimizer": config.get("optimizer", {}), "seeds": sorted(r.seed for r in c.runs)}
