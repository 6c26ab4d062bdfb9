"""Regression gate: baselines of fixed fast experiments and the check of a fresh run against them.

A baseline (``reports/baselines/<name>.json``, written by ``cl-bench baseline``) holds, per
``setting/label``, the mean, seed std (ddof=1) and per-seed values of every headline metric
and of every guarantee check's pass rate, plus the library versions, the machine and the
config hashes that produced them. ``cl-bench regress`` re-runs the same experiment (fresh,
nothing reused) and flags a metric whose mean left its band::

    band = max(k * std_baseline, floor[metric])
    higher is better:  regression if  mean_now < mean_base - band
    lower is better:   regression if  mean_now > mean_base + band
    two-sided:         regression if |mean_now - mean_base| > band

Directions: accuracy-like metrics (acc, aia, learning_acc, bwt, fwt) higher; forgetting,
loss_forgetting, intransigence and certificate violations lower; check pass rates two-sided
(a check that suddenly passes more often is as suspicious as one that fails). The floor keeps
float differences between CPUs inside the band: re-running both baselines with ATen's
non-vectorised kernels and MKL's compatible mode, as a stand-in for another CPU, moved no
metric by more than 6 % of its band (GEM's accuracy, 0.0016 of 0.03).
``tests/test_regress.py`` shows planted regressions leaving it. ``blind_to`` in a baseline lists
the strategies the gate cannot tell from plain fine-tuning at that experiment's settings.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cl_bench.metrics import HIGHER, LOWER, METRICS
from cl_bench.results import RunResult

BASELINE_SCHEMA = 1
BOTH = "both"
DEFAULT_K = 3.0
#: absolute floors of the band: those of the gated metrics (cl_bench.metrics.METRICS), and check pass rates
DEFAULT_FLOORS: dict[str, float] = {
    **{m: info.floor for m, info in METRICS.items() if info.floor is not None}, "check": 0.2,
}


def direction(metric: str) -> str:
    """The way a metric may not move: ``higher`` / ``lower`` is better, ``both`` for check pass rates."""
    return BOTH if metric.startswith("check_") else METRICS[metric].better


def floor_of(metric: str, floors: dict[str, float]) -> float:
    """The absolute band floor of a metric (``floors["check"]`` for every check pass rate)."""
    return floors["check" if metric.startswith("check_") else metric]


# ---------------------------------------------------------------- summaries
def run_metrics(result: RunResult) -> dict[str, float]:
    """The gated numbers of one run: defined headline metrics, the pass rate pass / (pass + fail)
    of each guarantee check (n/a records left out) and the share of certified (o, t) pairs whose
    measured forgetting exceeded the certified bound."""
    out = {m: float(v) for m, v in result.metrics.items() if m in DEFAULT_FLOORS and v is not None}
    for cid, counts in (result.checks.get("verdicts") or {}).items():
        decided = counts.get("pass", 0) + counts.get("fail", 0)
        if decided:
            out[f"check_{cid}"] = counts.get("pass", 0) / decided
    cert = result.checks.get("certificate")
    if cert and cert.get("n_certified"):
        out["certificate_violations"] = cert["n_certified_violated"] / cert["n_certified"]
    return out


def summarize(results: list[RunResult]) -> dict[str, dict[str, dict[str, Any]]]:
    """``setting/label`` -> metric -> mean, std (ddof=1; 0 for one seed), n and the per-seed values."""
    values: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if r.status == "ok":
            for m, v in run_metrics(r).items():
                values.setdefault(f"{r.setting}/{r.label}", {}).setdefault(m, []).append(v)
    return {
        key: {m: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v),
                  "values": v} for m, v in sorted(per.items())}
        for key, per in values.items()
    }


def plan_hash(run_hashes: dict[str, str]) -> str:
    """One hash of every run's configuration hash (RunSpec.config_hash)."""
    blob = json.dumps(sorted(run_hashes.items())).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# -------------------------------------------------------------------- runs
def build(overrides: list[str], config_file: str | None, runs_dir: Path, workers: int | None = None) -> Any:
    """The plan of a baseline experiment, its runs written under ``runs_dir/<name>``
    (``workers``: processes in the pool instead of the config's ``sweep.workers``)."""
    from cl_bench.config import build_plan, load_config

    cfg = load_config(overrides, config_file)
    cfg.output.dir = str(runs_dir / str(cfg.name))
    plan = build_plan(cfg)
    if workers:
        plan.workers = workers
    return plan


def run_plan(plan: Any, resume: bool) -> list[RunResult]:
    """Every run of the plan in plan order, intransigence filled from the joint runs."""
    from cl_bench.runner import add_intransigence, execute

    results = list(execute(plan, resume=resume, workers=plan.workers))
    order = {spec.run_id: i for i, spec in enumerate(plan.runs)}
    results.sort(key=lambda r: order[r.run_id])
    add_intransigence(results)
    return results


def make_baseline(plan: Any, overrides: list[str], config_file: str | None) -> dict[str, Any]:
    """Run a baseline experiment's plan (from :func:`build`) from scratch and return its record."""
    from cl_bench.results import device_info, library_versions

    start = time.perf_counter()
    results = run_plan(plan, resume=False)
    failed = [r.run_id for r in results if r.status != "ok"]
    if failed:
        raise RuntimeError(f"baseline {plan.name}: runs failed: {', '.join(failed)}; a baseline needs every run")
    run_hashes = {spec.run_id: spec.config_hash() for spec in plan.runs}
    metrics = summarize(results)
    return {
        "schema": BASELINE_SCHEMA, "name": plan.name, "overrides": list(overrides), "config_file": config_file,
        "config_hash": plan_hash(run_hashes), "run_hashes": run_hashes,
        "seeds": sorted({s.seed for s in plan.runs}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - start, 1), "versions": library_versions(), "device": device_info("cpu"),
        "metrics": metrics, "blind_to": blind_spots(metrics),
    }


def blind_spots(metrics: dict[str, dict[str, dict[str, Any]]], k: float = DEFAULT_K,
                floors: dict[str, float] | None = None, reference: str = "naive") -> list[str]:
    """``setting/label`` whose every gated metric would stay inside its band if the strategy were
    replaced by ``reference`` (plain fine-tuning): a bug that switches such a strategy's mechanism
    off passes the gate. Empty when the baseline has no reference runs."""
    out = []
    for key, stats in metrics.items():
        setting, label = key.split("/", 1)
        ref = metrics.get(f"{setting}/{reference}")
        if ref is not None and label != reference \
                and not any(r.regressed for r in compare({key: stats}, {key: ref}, k, floors)):
            out.append(key)
    return out


class BaselineError(ValueError):
    """A baseline file that cannot be used; the message names the file and what is wrong."""


def load_baseline(path: Path) -> dict[str, Any]:
    """A baseline JSON, checked whole (schema, every field :func:`compare` and the report read)
    before anything trains; any defect is a :class:`BaselineError` naming the file."""
    regenerate = "regenerate it with `cl-bench baseline`"

    def bad(what: str) -> BaselineError:
        return BaselineError(f"{path}: {what}; {regenerate}")

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise BaselineError(f"{path}: cannot be read ({err})") from err
    except json.JSONDecodeError as err:
        raise bad(f"not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise bad(f"holds a JSON {type(data).__name__}, not a baseline object")
    if data.get("schema") != BASELINE_SCHEMA:
        raise bad(f"baseline schema {data.get('schema')} is not {BASELINE_SCHEMA}")
    expected: dict[str, type | tuple[type, ...]] = {
        "name": str, "overrides": list, "config_file": (str, type(None)), "run_hashes": dict, "metrics": dict}
    for key, kind in expected.items():
        if key not in data:
            raise bad(f"has no {key!r}")
        if not isinstance(data[key], kind):
            raise bad(f"{key!r} is a {type(data[key]).__name__}")
    if not all(isinstance(o, str) for o in data["overrides"]):
        raise bad("'overrides' must be a list of key=value strings")
    for key, per in data["metrics"].items():
        if not isinstance(per, dict) or not per:
            raise bad(f"metrics[{key!r}] is not a mapping of metrics")
        for metric, st in per.items():
            if not (metric.startswith("check_") or metric in DEFAULT_FLOORS):
                raise bad(f"metrics[{key!r}] has unknown metric {metric!r}")
            if not isinstance(st, dict) or not all(
                    isinstance(st.get(f), (int, float)) and not isinstance(st.get(f), bool) for f in ("mean", "std")):
                raise bad(f"metrics[{key!r}][{metric!r}] needs numeric 'mean' and 'std'")
    return data


# -------------------------------------------------------------- comparison
@dataclass
class Row:
    """One metric of one ``setting/label``: baseline vs now, the band, and whether it regressed."""

    key: str
    metric: str
    base: float
    now: float | None  # None: the run failed or the metric vanished
    band: float
    direction: str

    @property
    def delta(self) -> float | None:
        return None if self.now is None else self.now - self.base

    @property
    def regressed(self) -> bool:
        d = self.delta
        if d is None:
            return True
        if self.direction == HIGHER:
            return d < -self.band
        if self.direction == LOWER:
            return d > self.band
        return abs(d) > self.band


def compare(
    baseline: dict[str, dict[str, dict[str, Any]]],
    current: dict[str, dict[str, dict[str, Any]]],
    k: float = DEFAULT_K,
    floors: dict[str, float] | None = None,
) -> list[Row]:
    """A row for every (setting/label, metric) of the baseline; band = max(k * std, floor)."""
    floors = {**DEFAULT_FLOORS, **(floors or {})}
    rows = []
    for key, metrics in baseline.items():
        for m, stat in metrics.items():
            now = current.get(key, {}).get(m)
            rows.append(Row(key, m, stat["mean"], None if now is None else now["mean"],
                            max(k * stat["std"], floor_of(m, floors)), direction(m)))
    return rows


def parse_floors(items: list[str]) -> dict[str, float]:
    """``metric=value`` items (``check`` = every check pass rate) -> floors."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in DEFAULT_FLOORS:
            raise ValueError(f"--floor {item!r}: expected METRIC=VALUE with METRIC one of {', '.join(DEFAULT_FLOORS)}")
        try:
            out[name] = float(value)
        except ValueError as err:
            raise ValueError(f"--floor {item!r}: {value!r} is not a number") from err
        if out[name] < 0:
            raise ValueError(f"--floor {item!r}: a floor must be >= 0")
    return out


def changed_runs(baseline: dict[str, Any], plan: Any) -> list[str]:
    """Run ids whose configuration hash differs from the baseline's (or that are new)."""
    return [s.run_id for s in plan.runs if baseline["run_hashes"].get(s.run_id) != s.config_hash()]


def moves_table(baseline: dict[str, Any], rows: list[Row], largest: int = 5) -> Any:
    """The regressed rows, or (none regressed) the ``largest`` moves relative to their band."""
    from rich.table import Table

    bad = [r for r in rows if r.regressed]
    shown = bad or sorted(rows, key=lambda r: -abs(r.delta or 0.0) / max(r.band, 1e-12))[:largest]
    table = Table(title=f"{baseline['name']}: " + ("REGRESSIONS" if bad else "largest moves (all inside the band)"),
                  title_justify="left")
    for col in ("setting/strategy", "metric", "better", "baseline", "now", "moved", "band"):
        table.add_column(col, justify="left" if col in ("setting/strategy", "metric", "better") else "right")
    for r in shown:
        std = baseline["metrics"][r.key][r.metric]["std"]
        table.add_row(r.key, r.metric, r.direction, f"{r.base:.4f} ± {std:.4f}",
                      "missing" if r.now is None else f"{r.now:.4f}",
                      "n/a" if r.delta is None else f"{r.delta:+.4f}", f"{r.band:.4f}")
    return table
