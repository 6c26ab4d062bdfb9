"""Markdown report of an experiment (``cl-bench report RESULTS_DIR``).

From ``RESULTS_DIR/results.json`` (written by ``cl-bench run``) it writes
``README.md`` with the setup (scenario, model, protocol, seeds, library
versions), a strategy x metric table per setting (mean ± std over seeds) with the
scenario draws its spread covers (per-run draws or one fixed draw), the
accuracy-matrix heatmaps and forgetting curves per task (PNG), and the
guarantee-check verdicts; the figures come from ``cl_bench.figures``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cl_bench.figures import forgetting_figure, matrices_figure
from cl_bench.metrics import HEADLINE, METRICS, lower_is_better
from cl_bench.results import RunResult, aggregate, check_id, check_rows, draws, draws_text

VERDICTS = ("pass", "fail", "n/a")


# ------------------------------------------------------------------ loading
def load_results(results_dir: Path) -> tuple[str, list[RunResult], dict[str, Any]]:
    """(experiment name, runs, aggregate) of ``results_dir/results.json``."""
    path = Path(results_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: RESULTS_DIR must be the output.dir of a finished `cl-bench run`")
    data = json.loads(path.read_text())
    runs = [RunResult.from_dict(r) for r in data.get("runs", [])]
    if not runs:
        raise ValueError(f"{path} holds no runs")
    return str(data.get("name") or Path(results_dir).name), runs, data.get("aggregate") or aggregate(runs)


def _mean_std(mats: list[list[list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(mats, dtype=float)
    return a.mean(0), a.std(0, ddof=1) if len(a) > 1 else np.zeros_like(a[0])


def matrix_stats(runs: list[RunResult], setting: str) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per strategy label of ``setting``: (mean, std with ddof=1, n) over seeds of the accuracy matrices
    R[t][j] of the finished sequential runs (a joint run's single row is left out)."""
    groups: dict[str, list[list[list[float]]]] = {}
    for r in runs:
        if r.status == "ok" and r.setting == setting and not r.joint:
            groups.setdefault(r.label, []).append(r.acc)
    return {lb: (*_mean_std(accs), len(accs)) for lb, accs in groups.items()}


# ---------------------------------------------------------------- markdown
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: bool = False) -> str:
    """A Markdown table; ``numeric``: every column but the first right-aligned."""
    align = ["---"] + ["---:" if numeric else "---"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt_stat(stat: dict[str, Any] | None, metric: str) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    digits = 1 if metric == "time_s" else 3
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if stat.get("n", 0) > 1 else "")


def _kv(d: dict[str, Any], skip: Sequence[str] = ()) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if v is not None and k not in skip)


def metric_table(labels: list[str], stats: dict[str, dict[str, Any]], metrics: Sequence[str]) -> str:
    """Strategy x metric table of mean ± std; the best mean of each metric column in bold."""
    best: dict[str, float] = {}
    for m in metrics:
        means = [stats[lb][m]["mean"] for lb in labels if stats[lb].get(m, {}).get("mean") is not None]
        if len(means) > 1 and m != "time_s":
            best[m] = min(means) if lower_is_better(m) else max(means)
    rows = []
    for lb in labels:
        cells = []
        for m in metrics:
            text, stat = _fmt_stat(stats[lb].get(m), m), stats[lb].get(m) or {}
            cells.append(f"**{text}**" if m in best and stat.get("mean") == best[m] else text)
        n = max((s.get("n", 0) for s in stats[lb].values()), default=0)
        rows.append([lb, n, *cells])
    return _table(["strategy", "seeds", *(f"{m} ↓" if lower_is_better(m) else m for m in metrics)], rows, True)


def draws_lines(setting: str, labels: list[str], drawn: dict[str, dict[str, Any]]) -> list[str]:
    """Which scenario draws the spread of each row covers (:func:`cl_bench.results.draws_text`), one line per
    distinct answer naming its strategies."""
    by_text: dict[str, list[str]] = defaultdict(list)
    for lb in labels:
        if f"{setting}/{lb}" in drawn:
            by_text[draws_text(drawn[f"{setting}/{lb}"])].append(lb)
    lines = [f"- Scenario draws of {', '.join(lbs)}: {text}." for text, lbs in by_text.items()]
    return lines + [""] if lines else []


def verdict_table(runs: dict[str, list[RunResult]]) -> str | None:
    """Per strategy: pass / fail / n/a counts of each check over seeds and (o, t) pairs, and the
    certificate (certified pairs / pairs, certified pairs whose bound was violated)."""
    counts: dict[str, dict[str, Counter]] = {}
    cert: dict[str, Counter] = {}
    for label, rs in runs.items():
        for r in rs:
            for row in check_rows(r.checks):
                counts.setdefault(label, defaultdict(Counter))[check_id(row)][str(row.get("verdict", "n/a"))] += 1
            c = r.checks.get("certificate") if isinstance(r.checks, dict) else None
            if isinstance(c, dict):
                cert.setdefault(label, Counter()).update(
                    {k: c[k] for k in ("n_pairs", "n_certified", "n_certified_violated") if isinstance(c.get(k), int)}
                )
    if not counts:
        return None
    ids = sorted({c for per in counts.values() for c in per}, key=lambda c: (len(c), c))
    rows = []
    for label, per in counts.items():
        cells = [
            "/".join(str(per[c][v]) for v in VERDICTS) if c in per else "—" for c in ids
        ]
        cc = cert.get(label)
        cert_cell = f"{cc['n_certified']}/{cc['n_pairs']} ({cc['n_certified_violated']} violated)" if cc else "—"
        rows.append([label, cert_cell, *cells])
    return _table(["strategy", "certified pairs", *ids], rows, True)


def _setup_section(runs: list[RunResult]) -> list[str]:
    """Scenario, model, settings, seeds, device, library versions, the strategies' protocol, failed runs."""
    first = runs[0]
    cfg, sizes = first.config, first.task_sizes
    versions: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        for k, v in r.versions.items():
            versions[k].add(str(v))
    setup = [
        ["scenario", _kv(cfg.get("scenario", {}), skip=("setting",))],
        ["samples per task", f"train {sizes.get('train')}, test {sizes.get('test')}"],
        ["model", _kv(cfg.get("model", {}))],
        ["settings", ", ".join(dict.fromkeys(r.setting for r in runs))],
        ["seeds", ", ".join(map(str, sorted({r.seed for r in runs})))],
        ["device", _kv({k: first.device.get(k) for k in ("device", "cpu", "gpu", "cpu_count", "torch_threads")})],
        ["libraries", ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in versions.items())],
    ]
    rows = []
    for label in dict.fromkeys(r.label for r in runs):
        r = next(x for x in runs if x.label == label)
        tr, opt = r.config.get("trainer", {}), r.config.get("optimizer", {})
        rows.append([
            label, r.strategy, r.family, _kv(r.config.get("params", {})) or "—",
            _kv({k: opt.get(k) for k in ("name", "lr", "momentum", "weight_decay")}),
            tr.get("epochs"), tr.get("batch_size"),
        ])
    md = ["## Setup", "", _table(["", ""], setup), "", "### Strategies", ""]
    md += [_table(["label", "strategy", "family", "hyper-parameters", "optimizer", "epochs", "batch"], rows), ""]
    failed = [r for r in runs if r.status != "ok"]
    return md + (["Failed runs:", ""] + [f"- `{r.run_id}`: {r.error}" for r in failed] + [""] if failed else [])


def _setting_section(
    name: str, setting: str, runs: list[RunResult], agg: dict[str, Any], metrics: list[str], out_dir: Path
) -> list[str]:
    """Metric table, undefined metrics, heatmaps and forgetting curves (PNGs written to ``out_dir``), check verdicts."""
    ok = [r for r in runs if r.status == "ok" and r.setting == setting]
    labels = [lb for lb in dict.fromkeys(r.label for r in runs) if f"{setting}/{lb}" in agg]
    md = [f"## {setting}", "", "Mean ± std over seeds; ↓ = lower is better; best in bold.", ""]
    md += [metric_table(labels, {lb: agg[f"{setting}/{lb}"] for lb in labels}, metrics), ""]
    md += draws_lines(setting, labels, draws(runs))
    undefined: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in ok:
        for k, why in r.metrics_undefined.items():
            if r.label not in undefined[(k, why)]:
                undefined[(k, why)].append(r.label)
    md += [f"- {'every metric but acc' if k == '*' else f'`{k}`'} undefined for {', '.join(lbs)}: {why}"
           for (k, why), lbs in undefined.items()] + ([""] if undefined else [])
    stats = {lb: (m, s) for lb, (m, s, _) in matrix_stats(runs, setting).items()}
    if stats:
        heat, curves = f"acc_matrix_{setting}.png", f"forgetting_{setting}.png"
        matrices_figure({lb: s[0] for lb, s in stats.items()},
                        f"{name} — {setting}: accuracy matrices R[t][j] (mean over seeds)"
                        ).savefig(out_dir / heat, dpi=110)
        forgetting_figure(stats, f"{name} — {setting}: accuracy on each task as tasks are trained (mean ± std over "
                          "seeds)", {r.label: r.family for r in ok}).savefig(out_dir / curves, dpi=110)
        md += [f"![accuracy matrices, {setting}]({heat})", "", f"![forgetting curves, {setting}]({curves})", ""]
        if len(stats) < len(labels):
            md += ["(joint training has a single evaluation row and is left out of the plots.)", ""]
    checks = verdict_table({lb: [r for r in ok if r.label == lb] for lb in labels})
    if checks:
        from cl_bench.geometry.certificate import KINDS

        md += [f"### Guarantee checks ({setting})", "", "Cells: pass/fail/n/a over seeds and (past task o, later "
               f"task t) pairs; a pair is certified by one of {', '.join(KINDS)} (docs/guarantees.md).", "",
               checks, ""]
    return md


def write_report(results_dir: Path, out_dir: Path) -> Path:
    """Write ``out_dir/README.md`` and its PNG plots from ``results_dir/results.json``; return the README path."""
    name, runs, agg = load_results(Path(results_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = sum(r.status != "ok" for r in runs)
    md = [f"# {name}", "", f"Generated by `cl-bench report` from `{Path(results_dir) / 'results.json'}` "
          f"({len(runs)} runs, {failed} failed).", ""]
    md += _setup_section(runs)
    metrics = [m for m in HEADLINE if any(m in s for s in agg.values())]
    for setting in dict.fromkeys(r.setting for r in runs):
        md += _setting_section(name, setting, runs, agg, metrics, out_dir)
    md += ["## Metrics", ""] + [f"- `{m}`: {METRICS[m].doc}" for m in metrics] + [""]
    config_yaml = Path(results_dir) / "config.yaml"
    if config_yaml.is_file():
        md += ["<details><summary>Composed configuration (config.yaml)</summary>", "", "```yaml",
               config_yaml.read_text().rstrip(), "```", "", "</details>", ""]
    readme = out_dir / "README.md"
    readme.write_text("\n".join(md))
    return readme
