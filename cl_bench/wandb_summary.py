"""The experiment-level W&B run (``job_type=summary``, the group of the per-run runs).

Written from ``RESULTS_DIR/results.json`` when ``cl-bench run`` finishes with the W&B logger on, and
again by ``cl-bench report RESULTS_DIR --wandb``. It holds, per setting:

- ``aggregate``: mean ± std (ddof=1) over seeds of every :data:`~cl_bench.metrics.HEADLINE` metric per
  strategy (the ``aggregate`` of results.json), also as summary scalars ``<setting>/<label>/<metric>/mean``;
- ``acc_matrix``: the mean and std over seeds of R[t][j] in long form (one row per strategy, t, j; the
  forgetting curve of task j is its rows with ``task == j``), and as images the heatmaps
  (``heatmap/<setting>``) and the forgetting curves with ±std bands (``forgetting/<setting>``);
- ``certificates``: one row per (run, past task o, later task t): the certificate kind, bound and measured
  E = L_o(theta_t) - L_o(theta_o*) (docs/guarantees.md), and the C2 predicted-vs-measured plot;
- ``runs``: every per-run W&B run (name, id, project, url) with its status;
- artifacts: ``results`` (results.json, config.yaml) and ``report`` (the Markdown report folder).

The summary run's id is kept in ``<output.dir>/logs/wandb/summary.json``, so a rewrite continues the same
run. The CSV and TensorBoard loggers, when on, get the same scalars (TensorBoard also the figures) under
``<dir>/summary``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from cl_bench.figures import forgetting_figure, matrices_figure, png_bytes
from cl_bench.loggers import LoggerConfig, artifact_name, flat_table, logger_config, run_link_path, summary_id_path
from cl_bench.metrics import HEADLINE
from cl_bench.report import load_results, matrix_stats, write_report
from cl_bench.results import RunResult, write_json_atomic

#: the columns of the certificate table, read from each pair of ``checks.certificate.pairs``
CERTIFICATE_COLUMNS = ("o", "t", "certified", "kind", "bound", "measured", "prediction", "ratio", "violated",
                       "reason")


# --------------------------------------------------------------- the tables
def aggregate_table(agg: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows): one row per ``setting/label`` of results.json's aggregate; ``<m>_mean``, ``<m>_std``
    per headline metric (None where undefined) and n (the most seeds any metric had)."""
    columns = ["setting", "strategy", "n", *(f"{m}_{s}" for m in HEADLINE for s in ("mean", "std"))]
    rows = []
    for key, stats in agg.items():
        setting, label = key.split("/", 1)
        n = max((int(s.get("n") or 0) for s in stats.values()), default=0)
        cells = [stats.get(m, {}).get(s) for m in HEADLINE for s in ("mean", "std")]
        rows.append([setting, label, n, *cells])
    return columns, rows


def aggregate_scalars(agg: dict[str, Any]) -> dict[str, float]:
    """``<setting>/<label>/<metric>/mean`` and ``/std`` of every defined headline metric."""
    out: dict[str, float] = {}
    for key, stats in agg.items():
        for m in HEADLINE:
            stat = stats.get(m) or {}
            if stat.get("mean") is not None:
                out[f"{key}/{m}/mean"] = float(stat["mean"])
                out[f"{key}/{m}/std"] = float(stat["std"])
    return out


def acc_matrix_table(runs: list[RunResult]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the mean / std over seeds of R[t][j]: one row per (setting, strategy, t, j)."""
    columns = ["setting", "strategy", "tasks_trained", "task", "mean", "std", "n"]
    rows = []
    for setting in dict.fromkeys(r.setting for r in runs):
        for label, (mean, std, n) in matrix_stats(runs, setting).items():
            for t in range(mean.shape[0]):
                rows += [[setting, label, t + 1, j, float(mean[t, j]), float(std[t, j]), n]
                         for j in range(mean.shape[1])]
    return columns, rows


def certificate_table(runs: list[RunResult]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows): one row per certificate pair (o, t) of every run with checks."""
    rows = []
    for r in runs:
        cert = r.checks.get("certificate") if isinstance(r.checks, dict) else None
        for pair in (cert or {}).get("pairs", []):
            rows.append({"run_id": r.run_id, "setting": r.setting, "strategy": r.label, "seed": r.seed,
                         **{c: pair.get(c) for c in CERTIFICATE_COLUMNS}})
    return flat_table(rows) if rows else ([], [])


def runs_table(results_dir: Path, runs: list[RunResult]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows): every run with the W&B run its RunLogger wrote (empty cells: logged without W&B)."""
    columns = ["run_id", "setting", "strategy", "seed", "status", "wandb_name", "wandb_id", "project", "url"]
    rows = []
    for r in runs:
        path = run_link_path(results_dir, r.setting, r.label, r.seed)
        link = json.loads(path.read_text()) if path.is_file() else {}
        rows.append([r.run_id, r.setting, r.label, r.seed, r.status, link.get("name"), link.get("id"),
                     link.get("project"), link.get("url")])
    return columns, rows


def summary_figures(name: str, runs: list[RunResult]) -> dict[str, bytes]:
    """PNG bytes of ``heatmap/<setting>`` (mean accuracy matrices) and ``forgetting/<setting>`` (accuracy
    on each task as tasks are trained, mean ± std over seeds) of every setting with sequential runs."""
    out: dict[str, bytes] = {}
    families = {r.label: r.family for r in runs}
    for setting in dict.fromkeys(r.setting for r in runs):
        stats = matrix_stats(runs, setting)
        if not stats:
            continue
        out[f"heatmap/{setting}"] = png_bytes(matrices_figure(
            {lb: m for lb, (m, _, _) in stats.items()}, f"{name} — {setting}: accuracy matrices (mean over seeds)"))
        out[f"forgetting/{setting}"] = png_bytes(forgetting_figure(
            {lb: (m, s) for lb, (m, s, _) in stats.items()},
            f"{name} — {setting}: accuracy on each task (mean ± std over seeds)", families))
    return out


# ------------------------------------------------------------------ writing
def summary_logger_config(results_dir: Path) -> LoggerConfig:
    """The ``logger`` section of ``results_dir/config.yaml`` (the run's W&B project, group, mode) with
    ``wandb`` added to ``use``; the defaults when the folder has no config.yaml."""
    from omegaconf import DictConfig, OmegaConf

    path = Path(results_dir) / "config.yaml"
    composed = OmegaConf.load(path) if path.is_file() else None
    node = composed.get("logger") if isinstance(composed, DictConfig) else None
    cfg = logger_config(node)
    if "wandb" not in cfg.use:
        cfg.use = [*cfg.use, "wandb"]
    return cfg


def write_summary_run(results_dir: Path, cfg: LoggerConfig, report_dir: Path | None = None) -> str | None:
    """Write (or continue) the summary W&B run of ``results_dir`` and the CSV / TensorBoard summaries of
    ``cfg.use``; ``report_dir``: the report folder to attach (default: written to ``results_dir/report``).
    Returns the W&B run id (None without the W&B logger)."""
    from cl_bench.geometry.plots import plot_predicted_vs_measured

    results_dir = Path(results_dir)
    name, runs, agg = load_results(results_dir)
    scalars = aggregate_scalars(agg)
    figures = summary_figures(name, runs) if {"wandb", "tensorboard"} & set(cfg.use) else {}
    _write_csv_tensorboard(results_dir, cfg, scalars, figures)
    if "wandb" not in cfg.use:
        return None
    import wandb
    from PIL import Image

    if report_dir is None:
        report_dir = results_dir / "report"
        write_report(results_dir, report_dir)
    w = cfg.wandb
    id_path = summary_id_path(results_dir)
    previous = json.loads(id_path.read_text()).get("id") if id_path.is_file() else None
    save_dir = Path(w.dir or os.environ.get("WANDB_DIR") or results_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    with _outside_an_agent():
        run = wandb.init(
            project=w.project, entity=w.entity, group=w.group or name, job_type="summary", name=f"{name}/summary",
            id=previous, resume="allow", mode=cast(Any, w.mode),  # a WANDB_MODES string; init types it as literals
            tags=list(dict.fromkeys([*w.tags, "summary"])),
            dir=str(save_dir), config={"experiment": name, "n_runs": len(runs),
                                       "settings": list(dict.fromkeys(r.setting for r in runs))},
            settings=wandb.Settings(quiet=True),
        )
    try:
        write_json_atomic(id_path, {"id": run.id, "name": run.name, "project": w.project, "url": run.url})
        logged: dict[str, Any] = {
            "aggregate": wandb.Table(*aggregate_table(agg)),  # type: ignore[arg-type]
            "acc_matrix": wandb.Table(*acc_matrix_table(runs)),  # type: ignore[arg-type]
            "runs": wandb.Table(*runs_table(results_dir, runs)),  # type: ignore[arg-type]
        }
        cert = certificate_table(runs)
        if cert[0]:
            logged["certificates"] = wandb.Table(*cert)  # type: ignore[arg-type]
        for key, png in figures.items():
            logged[key] = wandb.Image(Image.open(io.BytesIO(png)), caption=key)
        if any(r.checks for r in runs):
            with tempfile.TemporaryDirectory() as tmp:
                path = plot_predicted_vs_measured(runs, Path(tmp) / "predicted_vs_measured.png")
                logged["predicted_vs_measured"] = wandb.Image(Image.open(path), caption="C2: E vs E_hat")
        run.log(logged)
        run.summary.update(scalars)
        results = wandb.Artifact(f"{artifact_name(name)}-results", type="results")
        for file in ("results.json", "config.yaml"):
            if (results_dir / file).is_file():
                results.add_file(str(results_dir / file))
        run.log_artifact(results)
        report = wandb.Artifact(f"{artifact_name(name)}-report", type="report")
        report.add_dir(str(report_dir))
        run.log_artifact(report)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    return str(run.id)


@contextlib.contextmanager
def _outside_an_agent() -> Iterator[None]:
    """Without ``WANDB_RUN_ID`` / ``WANDB_SWEEP_ID``: under ``wandb agent`` they name the agent's run, which
    ``wandb.init`` would take over the summary run's own id."""
    saved = {k: os.environ.pop(k) for k in ("WANDB_RUN_ID", "WANDB_SWEEP_ID") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _write_csv_tensorboard(results_dir: Path, cfg: LoggerConfig, scalars: dict[str, float],
                           figures: dict[str, bytes]) -> None:
    """The aggregate scalars to ``<csv dir>/summary/metrics.csv``; scalars and figures to TensorBoard."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from cl_bench.loggers import png_array

    if "csv" in cfg.use:
        csv = CSVLogger(cfg.csv.dir or str(results_dir / "logs" / "csv"), name="", version="summary")
        csv.log_metrics(dict(scalars), step=0)
        csv.save()
    if "tensorboard" in cfg.use:
        tb = TensorBoardLogger(cfg.tensorboard.dir or str(results_dir / "logs" / "tensorboard"), name="",
                               version="summary", default_hp_metric=False)
        tb.log_metrics(scalars, step=0)
        for key, png in figures.items():
            tb.experiment.add_image(key, png_array(png), 0, dataformats="HWC")
        tb.finalize("success")
