"""Soundness battery of the certificates: every strategy x both settings x several learning rates.

Runs the embedded Split-Digits scenario (no download) with the guarantee checks
on, and counts per learning rate and setting the (o, t) pairs, the pairs each
certificate kind certified (``chosen``: the kind reported for the pair; ``held``:
every kind whose conditions held) and the violations (a certified pair whose
measured E exceeded its bound). Every count of violations must be 0; a
non-zero count is a defect of the anchor-time estimate (docs/guarantees.md).

    uv run python -m cl_bench.geometry.soundness [--lrs 0.005 0.05 0.2] [--epochs 1] [--out DIR]

Exit status 1 when any certified pair was violated.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .certificate import KINDS


def battery_overrides(lr: float, epochs: int, out: Path, strategies: str = "all") -> list[str]:
    """Config overrides of one learning rate of the battery."""
    return ["scenario=split_digits", "settings=[class_il,task_il]", f"strategy={strategies}",
            f"optimizer.lr={lr}", f"trainer.epochs={epochs}", f"output.dir={out / f'lr{lr:g}'}"]


def count(results: list[Any]) -> dict[str, dict[str, int]]:
    """Setting -> counts of pairs, certified pairs per kind (chosen / held), violations, bound / E <= 1.5."""
    out: dict[str, Counter] = {}
    for r in results:
        cert = (r.checks or {}).get("certificate") if isinstance(r.checks, dict) else None
        if not cert:
            continue
        c = out.setdefault(r.setting, Counter())
        c["runs"] += 1
        c["pairs"] += cert["n_pairs"]
        c["certified"] += cert["n_certified"]
        c["violated"] += cert["n_violated"]
        c["ratio_le_1_5"] += cert.get("n_ratio_le_1_5", 0)
        c["with_ratio"] += cert.get("n_ratio", 0)
        for kind in KINDS:
            k = cert["by_kind"][kind]
            c[f"{kind}_chosen"] += k["chosen"]
            c[f"{kind}_held"] += k["certified"]
            c[f"{kind}_violated"] += k["violated"]
    return {s: dict(c) for s, c in out.items()}


def run_battery(lrs: list[float], epochs: int, out: Path, strategies: str = "all",
                workers: int = 2) -> dict[str, Any]:
    """Run the battery; returns ``{lr: {setting: counts}}`` and the total of violations."""
    from cl_bench.config import build_plan, load_config
    from cl_bench.runner import execute, quiet_lightning

    quiet_lightning()
    table: dict[str, Any] = {}
    for lr in lrs:
        plan = build_plan(load_config(battery_overrides(lr, epochs, out, strategies)))
        results = list(execute(plan, workers=workers))
        failed = [f"{r.setting}/{r.label}" for r in results if r.status != "ok"]
        table[f"{lr:g}"] = {"counts": count(results), "failed_runs": failed}
    violations = sum(c.get("violated", 0) for row in table.values() for c in row["counts"].values())
    return {"epochs": epochs, "strategies": strategies, "by_lr": table, "violations": violations}


def main(argv: list[str] | None = None) -> int:
    """Command line: run the battery, write ``soundness.json`` under ``--out``, print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.005, 0.05, 0.2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--strategies", default="all")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/soundness"))
    args = parser.parse_args(argv)
    summary = run_battery(args.lrs, args.epochs, args.out, args.strategies, args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soundness.json").write_text(json.dumps(summary, indent=2))
    for lr, row in summary["by_lr"].items():
        for setting, c in row["counts"].items():
            kinds = " ".join(f"{k}={c.get(k + '_chosen', 0)}/{c.get(k + '_held', 0)}" for k in KINDS)
            print(f"lr={lr:>6} {setting:9s} runs={c['runs']:3d} pairs={c['pairs']:4d} certified={c['certified']:4d} "
                  f"[{kinds}] bound/E<=1.5: {c['ratio_le_1_5']}/{c['with_ratio']} violated={c['violated']}")
        if row["failed_runs"]:
            print(f"lr={lr}: failed runs {row['failed_runs']}")
    print(f"violations: {summary['violations']}")
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
