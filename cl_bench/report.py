"""Markdown report of an experiment (``cl-bench report RESULTS_DIR``).

From ``RESULTS_DIR/results.json`` (written by ``cl-bench run``) it writes
``README.md`` with the setup (scenario, model, protocol, seeds, library
versions), a strategy x metric table per setting (mean ± std over seeds), the
accuracy-matrix heatmaps and forgetting curves per task (PNG), and the
guarantee-check verdicts. Plots use matplotlib's object API (``Figure``, drawn
by the Agg canvas); pyplot and display backends are never touched.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from cl_bench.metrics import HEADLINE, METRICS, lower_is_better
from cl_bench.results import RunResult, aggregate

VERDICTS = ("pass", "fail", "n/a")


# -------------------------------------------------------------------- plots
def draw_matrix(ax: Axes, matrix: np.ndarray, title: str, row_labels: Sequence[str] | None = None) -> AxesImage:
    """Heatmap of an accuracy matrix R[t][j] on [0, 1] with the value in every cell."""
    rows, cols = matrix.shape
    im = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task t")
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows), labels=list(row_labels) if row_labels is not None else range(rows))
    size = 9 if cols <= 6 else 7 if cols <= 10 else 0
    if size:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=size, color="black" if v > 0.6 else "white")
    return im


def acc_matrix_figure(acc: Sequence[Sequence[float]], title: str, joint: bool = False) -> Figure:
    """One run's accuracy matrix (a joint run's single row is labelled ``joint``)."""
    m = np.asarray(acc, dtype=float)
    fig = Figure(figsize=(max(4.0, 1.8 + 0.7 * m.shape[1]), max(3.0, 1.4 + 0.6 * m.shape[0])), layout="constrained")
    ax = fig.subplots()
    im = draw_matrix(ax, m, title, ["joint"] if joint else None)
    fig.colorbar(im, ax=ax, label="test accuracy", shrink=0.9)
    return fig


def matrices_figure(mats: dict[str, np.ndarray], title: str) -> Figure:
    """A grid of mean accuracy matrices, one per strategy, with one shared colour bar."""
    n, size = len(mats), next(iter(mats.values())).shape[1]
    ncols = min(n, 4)
    nrows = -(-n // ncols)
    cell = 0.55 * size + 1.3
    fig = Figure(figsize=(cell * ncols + 1.2, cell * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (label, m) in zip(axes, mats.items()):
        im = draw_matrix(ax, m, label)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.colorbar(im, ax=axes[:n].tolist(), label="test accuracy (mean over seeds)", shrink=min(0.8, 1.6 / nrows))
    fig.suptitle(title)
    return fig


def y_floor(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """Lower end of the forgetting curves' y axis: 0, or a multiple of 0.1 below every trained point's mean - std
    once all of them are >= 0.5 (task-IL curves near 1 stay readable; the pre-training parts are then clipped)."""
    lowest = min(float((m - s)[np.tri(*m.shape, dtype=bool)].min()) for m, s in curves.values())  # t >= j
    return 0.0 if lowest < 0.5 else float(np.floor(lowest * 10) / 10)


def forgetting_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, families: dict[str, str] | None = None
) -> Figure:
    """Column j: accuracy on task j after each task t (mean ± std over seeds); dotted, on grey, before
    task j is trained. One row per strategy family (``families``: label -> family), each with the
    ``baseline`` family's labels as dashed black/grey references, so no panel holds too many lines."""
    families = families or {}
    refs = [lb for lb in curves if families.get(lb) == "baseline"]
    rows = list(dict.fromkeys(families.get(lb, "") for lb in curves if lb not in refs)) or ["baseline"]
    n_tasks = next(iter(curves.values()))[0].shape[1]
    x = np.arange(1, n_tasks + 1)
    low = y_floor(curves)
    fig = Figure(figsize=(2.6 * n_tasks + 2.2, 2.4 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), n_tasks, squeeze=False, sharex=True, sharey=True)
    palette = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]  # grey is for the references
    for axrow, family in zip(axes, rows):
        own = [lb for lb in curves if families.get(lb, "") == family and lb not in refs]
        styles = {lb: {"color": str(0.45 * i), "ls": "--", "lw": 1.2, "marker": "o"} for i, lb in enumerate(refs)}
        styles.update({lb: {"color": palette[k % 9], "ls": "-", "lw": 1.5, "marker": "os^D"[k // 9 % 4]}
                       for k, lb in enumerate(own)})
        for j, ax in enumerate(axrow):
            ax.axvspan(0.5, j + 0.5, color="0.93", lw=0)  # task j not trained yet
            for label, style in styles.items():
                m, s = curves[label][0][:, j], curves[label][1][:, j]
                ax.plot(x[j:], m[j:], markersize=2.5, label=label, **style)
                if style["ls"] == "-":
                    ax.fill_between(x[j:], m[j:] - s[j:], m[j:] + s[j:], color=style["color"], alpha=0.12, lw=0)
                if j:
                    ax.plot(x[: j + 1], m[: j + 1], ls=":", lw=0.8, color=style["color"], alpha=0.5)
            ax.set_title(f"task {j}", fontsize=9)
            ax.set_xticks(x)
            ax.set_xlim(0.5, n_tasks + 0.5)
            ax.set_ylim(low - 0.02 * (1 - low), 1 + 0.02 * (1 - low))
            ax.grid(alpha=0.3)
        axrow[0].set_ylabel(f"{family}\ntest accuracy" if family else "test accuracy")
        axrow[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)
    for ax in axes[-1]:
        ax.set_xlabel("tasks trained")
    fig.suptitle(title)
    return fig


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


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


def check_rows(checks: Any) -> list[dict[str, Any]]:
    """Guarantee-check records: a list of dicts, or the ``records`` of a ``GeometryTracker.summary()``."""
    rows = checks.get("records", []) if isinstance(checks, dict) else checks or []
    return [r for r in rows if isinstance(r, dict)]


def check_id(row: dict[str, Any]) -> str:
    return str(row.get("id", row.get("name", "check")))


def _mean_std(mats: list[list[list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(mats, dtype=float)
    return a.mean(0), a.std(0, ddof=1) if len(a) > 1 else np.zeros_like(a[0])


# ---------------------------------------------------------------- markdown
def _table(header: Sequence[str], rows: list[Sequence[Any]], numeric: bool = False) -> str:
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
            _kv({k: opt.get(k) for k in ("name", "lr", "momentum", "weight_decay")}), tr.get("epochs"), tr.get("batch_size"),
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
    undefined: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in ok:
        for k, why in r.metrics_undefined.items():
            if r.label not in undefined[(k, why)]:
                undefined[(k, why)].append(r.label)
    md += [f"- {'every metric but acc' if k == '*' else f'`{k}`'} undefined for {', '.join(lbs)}: {why}"
           for (k, why), lbs in undefined.items()] + ([""] if undefined else [])
    groups = {lb: [r.acc for r in ok if r.label == lb and not r.joint] for lb in labels}
    stats = {lb: _mean_std(accs) for lb, accs in groups.items() if accs}
    if stats:
        heat, curves = f"acc_matrix_{setting}.png", f"forgetting_{setting}.png"
        matrices_figure({lb: s[0] for lb, s in stats.items()},
                        f"{name} — {setting}: accuracy matrices R[t][j] (mean over seeds)").savefig(out_dir / heat, dpi=110)
        forgetting_figure(stats, f"{name} — {setting}: accuracy on each task as tasks are trained (mean ± std over "
                          "seeds)", {r.label: r.family for r in ok}).savefig(out_dir / curves, dpi=110)
        md += [f"![accuracy matrices, {setting}]({heat})", "", f"![forgetting curves, {setting}]({curves})", ""]
        if len(stats) < len(labels):
            md += ["(joint training has a single evaluation row and is left out of the plots.)", ""]
    checks = verdict_table({lb: [r for r in ok if r.label == lb] for lb in labels})
    if checks:
        from cl_bench.geometry.certificate import ASSUMPTIONS

        md += [f"### Guarantee checks ({setting})", "", "Cells: pass/fail/n/a over seeds and (past task o, later "
               f"task t) pairs; a pair is certified when {', '.join(ASSUMPTIONS)} pass (GEOMETRY.md).", "", checks, ""]
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
