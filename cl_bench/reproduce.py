"""Reproduction suite (``cl-bench reproduce``): our runs of published protocols next to the
published numbers, written to ``reports/reproduction.md``.

The spec (``configs/reproduction.yaml``) lists experiments (``configs/experiment/<name>.yaml``
or explicit ``overrides``) with the published final average accuracy (%) per strategy label
and setting, the source, a tolerance in points and verified notes for the rows outside it.
For each row: ours = 100 * mean_seeds acc (std with ddof=1), diff = ours - published, verdict
= |diff| <= tolerance. Runs go to ``RUNS_DIR/<experiment>``; finished runs there are reused.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from cl_bench.config import CONFIG_DIR, ConfigError
from cl_bench.results import RunResult

DEFAULT_SPEC = CONFIG_DIR / "reproduction.yaml"
#: what a published number can be compared with: ``acc`` = mean_j R[T-1][j] (the DER paper),
#: ``acc_sample_weighted`` = accuracy over the pooled test stream (Avalanche's Top1_Acc_Stream)
METRICS = {"acc": "100 * mean_j R[T-1][j]", "acc_sample_weighted": "100 * accuracy on the pooled test sets"}


def load_spec(path: Path = DEFAULT_SPEC) -> dict[str, Any]:
    """The reproduction spec as plain data, checked: experiments -> {published, source, overrides?}."""
    from omegaconf import OmegaConf

    if not Path(path).exists():
        raise ConfigError(f"reproduction spec {path} not found")
    spec = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    unknown = sorted(set(spec) - {"tolerance", "min_seeds", "experiments", "notes"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid: tolerance, min_seeds, experiments, notes")
    if not spec.get("experiments"):
        raise ConfigError(f"{path}: `experiments` is empty")
    for name, entry in spec["experiments"].items():
        if not isinstance(entry, dict) or not entry.get("published") or not entry.get("source"):
            raise ConfigError(f"{path}: experiments.{name} needs `source` and "
                              "`published: {label: {setting: value}}`")
        for label, row in entry["published"].items():
            if not isinstance(row, dict) or not all(isinstance(v, (int, float)) for v in row.values()):
                raise ConfigError(f"{path}: experiments.{name}.published.{label} must map settings to numbers (%)")
        entry.setdefault("metric", "acc")
        if entry["metric"] not in METRICS:
            raise ConfigError(f"{path}: experiments.{name}.metric={entry['metric']!r}; valid: {', '.join(METRICS)}")
    spec.setdefault("tolerance", 3.0)
    spec.setdefault("min_seeds", 5)
    spec["notes"] = spec.get("notes") or {}
    return spec


def select(spec: dict[str, Any], only: list[str] | None) -> dict[str, dict[str, Any]]:
    """The experiments named in ``only`` (``NAME`` or ``NAME/LABEL``), all when ``only`` is empty."""
    experiments = spec["experiments"]
    if not only:
        return experiments
    out: dict[str, dict[str, Any]] = {}
    for item in only:
        name, _, label = item.partition("/")
        if name not in experiments:
            raise ConfigError(f"--only {item}: unknown experiment {name!r}; valid: {', '.join(experiments)}")
        entry = out.setdefault(name, {**experiments[name], "published": {}})
        labels = [label] if label else list(experiments[name]["published"])
        for lab in labels:
            if lab not in experiments[name]["published"]:
                raise ConfigError(f"--only {item}: {name} has no published label {lab!r}; "
                                  f"valid: {', '.join(experiments[name]['published'])}")
            entry["published"][lab] = experiments[name]["published"][lab]
    return out


def plan_of(name: str, entry: dict[str, Any], runs_dir: Path, min_seeds: int) -> Any:
    """The experiment restricted to its published labels, writing to ``runs_dir/name``."""
    from cl_bench.config import build_plan, load_config

    overrides = list(entry.get("overrides") or [f"experiment={name}"])
    labels = list(entry["published"])
    cfg = load_config([*overrides, f"strategy=[{','.join(labels)}]"])
    cfg.output.dir = str(runs_dir / name)
    plan = build_plan(cfg)
    seeds = sorted({s.seed for s in plan.runs})
    if len(seeds) < min_seeds:
        raise ConfigError(f"{name}: {len(seeds)} seeds {seeds}; a reproduction needs >= {min_seeds} (set seeds)")
    settings = {s.setting for s in plan.runs}
    for label, row in entry["published"].items():
        missing = set(row) - settings
        if missing:
            raise ConfigError(f"{name}: published {label} {sorted(missing)} but the experiment runs {sorted(settings)}")
    return plan


def finished_results(plan: Any) -> tuple[list[RunResult], list[str]]:
    """The runs of the plan already finished in its output folder (nothing is trained), and the
    run ids whose result file exists but was made with another configuration (stale)."""
    from cl_bench.runner import finished, result_path

    done, stale = [], []
    for spec in plan.runs:
        path = result_path(plan.output_dir, spec)
        result = finished(path, spec)
        if result is not None:
            done.append(result)
        elif path.exists():
            stale.append(spec.run_id)
    return done, stale


@dataclass
class Row:
    """One published (experiment, label, setting) value next to ours per seed, with its verdict."""

    experiment: str
    label: str
    setting: str
    published: float
    values: list[float]  # ours, % per seed
    n_planned: int
    tolerance: float
    note: str | None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def diff(self) -> float:
        return self.mean - self.published

    @property
    def verdict(self) -> str:
        if abs(self.diff) <= self.tolerance:
            verdict = "reproduced"
        else:
            verdict = "off, explained below" if self.note else "off, NOT EXPLAINED"
        if len(self.values) < self.n_planned:
            verdict += f" (incomplete: {len(self.values)} of {self.n_planned} seeds)"
        return verdict


def rows_of(name: str, entry: dict[str, Any], results: list[RunResult], n_seeds: int,
            spec: dict[str, Any]) -> list[Row]:
    """One row per published (label, setting); ``values`` empty when no run finished."""
    rows = []
    for label, published in entry["published"].items():
        for setting, value in published.items():
            accs = [100.0 * cast(float, r.metrics[entry["metric"]]) for r in results
                    if r.label == label and r.setting == setting and r.status == "ok"]
            rows.append(Row(name, label, setting, float(value), accs, n_seeds, float(spec["tolerance"]),
                            spec["notes"].get(f"{name}/{label}/{setting}")))
    return rows


def render(rows: list[Row], entries: dict[str, dict[str, Any]], spec_path: Path, runs_dir: Path, command: str,
           stale: list[str] | None = None) -> str:
    """reports/reproduction.md: one table per experiment, notes, rows without runs."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tol = rows[0].tolerance if rows else 3.0
    out = [
        "# Reproduction of published results", "",
        f"Generated {when} by `{command}` from the runs under `{runs_dir}`; published values and notes: "
        f"`{spec_path.name}`. Ours: final accuracy (%) as the source defines it (each section names the "
        f"metric), mean ± std (ddof=1) over seeds; diff = ours - published; reproduced when |diff| <= {tol:g} "
        "points.", "",
    ]
    missing = [r for r in rows if not r.values]
    for name in dict.fromkeys(r.experiment for r in rows):
        done = [r for r in rows if r.experiment == name and r.values]
        if not done:
            continue
        entry = entries[name]
        config = (f"overrides `{' '.join(entry['overrides'])}`" if entry.get("overrides")
                  else f"`configs/experiment/{name}.yaml`")
        out += [f"## {name}", "", f"Source: {entry['source']}. Config: {config}. "
                f"Metric: `{entry['metric']}` = {METRICS[entry['metric']]}.", "",
                "| method | setting | ours (mean ± std) | seeds | published | diff | verdict |",
                "|---|---|---|---|---|---|---|"]
        for r in done:
            out.append(f"| {r.label} | {r.setting} | {r.mean:.2f} ± {r.std:.2f} | {len(r.values)} | "
                       f"{r.published:.2f} | {r.diff:+.2f} | {r.verdict} |")
        out.append("")
    noted = [r for r in rows if r.note and r.values]
    if noted:
        out += ["## Notes", ""] + [f"- **{r.experiment} / {r.label} / {r.setting}**: {cast(str, r.note).strip()}"
                                   for r in noted] + [""]
    if missing:
        out += ["## Not run yet", "", "No finished run for these published rows (run `cl-bench reproduce` without "
                "`--no-train`, or `cl-bench run experiment=NAME strategy=[LABEL]`):", ""]
        out += [f"- {r.experiment} / {r.label} / {r.setting} (published {r.published:.2f})" for r in missing] + [""]
    if stale:
        out += ["Result files made with another configuration than the current one (not used; re-run them): "
                + ", ".join(stale), ""]
    return "\n".join(out)
