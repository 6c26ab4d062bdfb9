"""Compact guarantee table of a set of runs: one row per strategy label (runs pooled over seeds).

Reads only ``RunResult.checks`` (``GeometryTracker.summary()``): verdict counts
per check id (passes and n/a over all (o, t) pairs and runs), the certificates
(certified pairs per kind, violations, median bound / E) and the means of the
headline numbers of docs/guarantees.md — kappa = |E - E_hat| / max(|E| + |g.D| +
|D^T H D| / 2, eps) (C2), the share of E the quadratic model explains, and the
measured E vs the predicted E_hat (C3's and C5's ratios to a random direction
stay in the records). :data:`LEGEND` explains every column.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from rich import box
from rich.table import Table

from cl_bench.results import RunResult

from .config import CHECKS

LEGEND = ("C<i>: passes (n/a in brackets; floor-decided verdicts in docs/guarantees.md); "
          "cert: certified pairs as exact isolation/null space/Taylor bound; viol: certified pairs with E > bound; "
          "bnd/E: median bound / E over certified pairs with E >= loss_eps; kappa: |E - E_hat| / (|E| + |g.D| + "
          "|D^T H D|/2); expl: share of E explained by g.D + D^T H D/2; E/E_hat: measured / predicted "
          "forgetting (nats); s/HVP: check cost per run. "
          "See docs/guarantees.md.")

def records(result: RunResult, check_id: str) -> list[dict[str, Any]]:
    """The records of one check id in a run (empty when the run has no checks)."""
    return [r for r in result.checks.get("records", []) if r["id"] == check_id]


def finite_mean(values: list[Any]) -> float | None:
    """Mean of the finite numbers in ``values`` (None, NaN and inf skipped); None when there are none."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else None


def strategy_key(result: RunResult, multi_setting: bool) -> str:
    """Row name: the strategy label, prefixed by the setting when the runs span several settings."""
    return f"{result.setting}/{result.label}" if multi_setting else result.label


def group_runs(results: list[RunResult]) -> dict[str, list[RunResult]]:
    """Runs with checks, grouped by row name in first-seen order."""
    with_checks = [r for r in results if r.checks]
    multi = len({r.setting for r in with_checks}) > 1
    groups: dict[str, list[RunResult]] = {}
    for r in with_checks:
        groups.setdefault(strategy_key(r, multi), []).append(r)
    return groups


def verdict_counts(runs: list[RunResult]) -> dict[str, Counter]:
    """Check id -> Counter of verdicts over every record of ``runs``."""
    counts: dict[str, Counter] = {}
    for run in runs:
        for rec in run.checks.get("records", []):
            counts.setdefault(rec["id"], Counter())[rec["verdict"]] += 1
    return counts


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def verdict_cell(c: Counter) -> str:
    """Passes, with the n/a count in brackets when there are any (fails = pairs - passes - n/a)."""
    return f"{c['pass']}" + (f" ({c['n/a']})" if c["n/a"] else "")


def guarantee_table(results: list[RunResult]) -> Table:
    """One row per strategy: (o, t) pairs, passes per check (n/a in brackets; the descriptive checks whose
    records are all n/a, C4, C10 and C12, are left out), certified pairs per kind, violations, median
    bound / E, mean kappa (C2), explained share, mean measured E / predicted
    E_hat (C2), check cost per run (seconds / curvature products, snapshots included). The caption is
    :data:`LEGEND`."""
    groups = group_runs(results)
    totals: Counter = Counter()
    for runs in groups.values():
        for cid, c in verdict_counts(runs).items():
            totals[cid] += c["pass"] + c["fail"]
    ids = [cid for cid in CHECKS if totals[cid]]
    table = Table(title="guarantee checks and certificates (docs/guarantees.md): passes of the (o, t) pairs per "
                  "check (n/a in brackets); means over pairs and seeds", title_justify="left",
                  caption=LEGEND, caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    width = max([len("strategy"), *(len(name) for name in groups)])
    table.add_column("strategy", justify="left", no_wrap=True, min_width=width)
    for name in ("runs", "pairs", *ids, "cert", "viol", "bnd/E", "kappa", "expl", "E/E_hat",
                 "s/HVP"):
        table.add_column(name, justify="right")
    for name, runs in groups.items():
        counts = verdict_counts(runs)
        c2 = [r["values"] for run in runs for r in records(run, "C2")]
        cert = [run.checks.get("certificate", {}) for run in runs]
        pairs = [p for c in cert for p in c.get("pairs", [])]
        chosen = Counter(p.get("kind") for p in pairs if p.get("certified"))
        ratios = sorted(p["ratio"] for p in pairs if p.get("certified") and isinstance(p.get("ratio"), (int, float)))
        costs = [run.checks.get("cost", {}).values() for run in runs]
        table.add_row(
            name, str(len(runs)), str(sum(c.get("n_pairs", 0) for c in cert)),
            *(verdict_cell(counts.get(cid, Counter())) for cid in ids),
            "/".join(str(chosen[k]) for k in ("exact_isolation", "null_space", "taylor_bound")),
            str(sum(c.get("n_violated", c.get("n_certified_violated", 0)) for c in cert)),
            _fmt(ratios[len(ratios) // 2] if ratios else None),
            _fmt(finite_mean([v["kappa"] for v in c2])),
            _fmt(finite_mean([p["explain"]["explained"] for p in pairs if "explain" in p]), ".2f"),
            f"{_fmt(finite_mean([v['forgetting'] for v in c2]))}/{_fmt(finite_mean([v['predicted'] for v in c2]))}",
            f"{sum(c['seconds'] for cost in costs for c in cost) / len(runs):.1f}/"
            f"{sum(c['hvp'] for cost in costs for c in cost) / len(runs):.0f}",
        )
    return table
