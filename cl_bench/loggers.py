"""W&B / CSV / TensorBoard logging of one run through Lightning's logger interface (config key ``logger``).

One :class:`RunLogger` per (strategy, setting, seed) run. Its Lightning loggers are
passed to every task's ``Trainer(logger=...)``, so the per-step training loss
(``train/loss_task{t}``, logged by ``ContinualModule.log_step``) of all tasks lands
in ONE W&B run (grouped by experiment), one CSV file and one TensorBoard folder.

Steps: every task has its own Trainer, whose step counter restarts at 0. The
loggers add ``steps_before`` (optimizer steps of the finished tasks, advanced by
:meth:`RunLogger.log_task_end`), so every x-axis is the run's cumulative step.
Per-task evaluation (``eval/acc_task{j}``, ``eval/loss_task{j}``) is plotted in
W&B against ``tasks_trained`` (``define_metric``), so the forgetting curve of
task j is one chart. ``wandb`` is imported only when a W&B logger is built.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, cast

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, ListConfig

from cl_bench.config import RunSpec, to_dataclass
from cl_bench.results import RunResult, write_json_atomic

LOGGERS = ("wandb", "csv", "tensorboard")
WANDB_MODES = ("offline", "online", "disabled")
#: ``logger.confusion=null`` records the confusion matrices when the scenario has at most this many classes
CONFUSION_MAX_CLASSES = 20


# ------------------------------------------------------------------- config
@dataclass
class WandbConfig:
    """W&B run settings; ``mode=online`` needs credentials (``wandb login`` or ``WANDB_API_KEY``)."""

    mode: str = "offline"
    project: str = "cl-bench"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: the experiment name
    tags: list[str] = field(default_factory=list)
    dir: Optional[str] = None  # null: $WANDB_DIR, else output.dir (runs go to <dir>/wandb/)
    log_model: bool = False  # the final model's state_dict as a W&B artifact (type model)

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"wandb.mode={self.mode!r}; valid: {', '.join(WANDB_MODES)}")


@dataclass
class CSVConfig:
    """CSV logger settings: the folder of the per-run ``metrics.csv`` files."""

    dir: Optional[str] = None  # null: <output.dir>/logs/csv; files <dir>/<setting>/<label>/seed<k>/metrics.csv


@dataclass
class TensorBoardConfig:
    """TensorBoard logger settings: the folder of the event files."""

    dir: Optional[str] = None  # null: <output.dir>/logs/tensorboard; events in <dir>/<setting>/<label>/seed<k>/


@dataclass
class LoggerConfig:
    """Which loggers every run gets (``logger.use``) and their settings."""

    use: list[str] = field(default_factory=list)
    log_every_n_steps: int = 10  # training-loss logging period, for the Trainer
    confusion: Optional[bool] = None  # per-class accuracy and confusion matrices; null: on up to 20 classes
    wandb: WandbConfig = field(default_factory=WandbConfig)
    csv: CSVConfig = field(default_factory=CSVConfig)
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)

    def __post_init__(self) -> None:
        unknown = [u for u in self.use if u not in LOGGERS]
        if unknown:
            raise ValueError(f"use: unknown logger(s) {unknown}; valid: {', '.join(LOGGERS)}")
        if len(set(self.use)) != len(self.use):
            raise ValueError(f"use: a logger is listed twice in {list(self.use)}")
        if self.log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1, got {self.log_every_n_steps}")

    def records_confusion(self, n_classes: int) -> bool:
        """Whether runs record per-class confusion matrices (``confusion``; null: n_classes <= 20)."""
        return n_classes <= CONFUSION_MAX_CLASSES if self.confusion is None else self.confusion


def logger_config(node: Any) -> LoggerConfig:
    """The ``logger`` config: a mapping, or a name / list of names as shorthand for ``logger.use``."""
    if node is None:
        node = {}
    elif isinstance(node, str):
        node = {"use": [node]}
    elif isinstance(node, (list, ListConfig)):
        node = {"use": list(node)}
    elif not isinstance(node, (dict, DictConfig)):
        raise ValueError(f"logger must be a mapping or a list of {list(LOGGERS)}, got {node!r}")
    return to_dataclass(LoggerConfig, node, "logger")


# ------------------------------------------------------ Lightning loggers
class _TaskSteps:
    """Mixin for a Lightning logger shared by the per-task Trainers of one run:
    logged step = ``steps_before`` (optimizer steps of finished tasks) + the Trainer's step."""

    steps_before: int = 0

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, None if step is None else self.steps_before + step)  # type: ignore[misc]


class TaskWandbLogger(_TaskSteps, WandbLogger):
    """``WandbLogger`` whose steps continue across the tasks of a run; every row it logs is also appended
    to ``journal`` (JSON lines, tables as their columns and data), which a resumed run replays."""

    journal: Any = None  # an open text file, or None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.journal is not None and step is not None:
            self.journal.write(json.dumps({"step": self.steps_before + step, "metrics": _encode(metrics)}) + "\n")
            self.journal.flush()  # in the OS's hands now: a killed process loses none of it
        super().log_metrics(metrics, step)

    def replay(self, journal: Path, until_step: int) -> None:
        """Log again the journal's rows up to ``until_step`` (the finished tasks of a resumed run; the
        interrupted task's later rows are dropped) and keep only those in the journal."""
        rows = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()] \
            if journal.is_file() else []
        rows = [row for row in rows if row["step"] <= until_step]
        journal.write_text("".join(json.dumps(row) + "\n" for row in rows))
        for row in rows:
            WandbLogger.log_metrics(self, _decode(row["metrics"]), row["step"])


class TaskCSVLogger(_TaskSteps, CSVLogger):
    """``CSVLogger`` whose steps continue across the tasks of a run."""


class TaskTensorBoardLogger(_TaskSteps, TensorBoardLogger):
    """``TensorBoardLogger`` whose steps continue across the tasks of a run."""


# ------------------------------------------------------------- run logger
class RunLogger:
    """The loggers of one (strategy, setting, seed) run and the run-level records.

    Protocol (the runner): ``loggers = run_logger.lightning_loggers()`` -> for each
    task t: ``Trainer(logger=loggers).fit(...)``, evaluate, ``log_task_end(t, acc_row,
    loss_row, steps=trainer.global_step)`` -> ``log_result(result)`` -> ``close()``.
    ``state`` (from :meth:`state`, e.g. kept in a checkpoint) continues the same W&B
    run and step count after an interruption. Under ``wandb agent`` the W&B run id
    is the agent's (``WANDB_RUN_ID``), so the sweep sees the run.
    """

    def __init__(
        self, cfg: LoggerConfig, spec: RunSpec, experiment: str, output_dir: Path, state: dict[str, Any] | None = None
    ) -> None:
        self.cfg, self.spec, self.experiment = cfg, spec, experiment
        self.output_dir = Path(output_dir)
        self.steps = int((state or {}).get("steps", 0))
        self.wandb: TaskWandbLogger | None = None
        self.csv: TaskCSVLogger | None = None
        self.tensorboard: TaskTensorBoardLogger | None = None
        self._status = "ok"
        sub = (f"{spec.setting}/{spec.label}", f"seed{spec.seed}")  # (name, version) -> <dir>/<name>/<version>
        if "csv" in cfg.use:
            root = self._dir(cfg.csv.dir, "logs/csv")
            kept = _csv_rows(Path(root, *sub, "metrics.csv"), self.steps) if state else []
            self.csv = TaskCSVLogger(root, name=sub[0], version=sub[1])  # replaces an existing metrics.csv
            for row in kept:  # a resumed run keeps the rows of its finished tasks
                self.csv.experiment.log_metrics(row, int(row.pop("step")))
            self.csv.save()
        if "tensorboard" in cfg.use:
            self.tensorboard = TaskTensorBoardLogger(
                self._dir(cfg.tensorboard.dir, "logs/tensorboard"), name=sub[0], version=sub[1], default_hp_metric=False
            )
        if "wandb" in cfg.use:
            self.wandb = self._build_wandb((state or {}).get("wandb_id"))
            journal = self._journal_path()
            if state:  # the rows of the finished tasks, which a killed process's W&B service may not have written
                self.wandb.replay(journal, self.steps)
            else:
                journal.unlink(missing_ok=True)
            self.wandb.journal = open(journal, "a")
        for lg in self.loggers:
            cast(_TaskSteps, lg).steps_before = self.steps
            lg.log_hyperparams(self.config())

    def _journal_path(self) -> Path:
        spec = self.spec
        return run_link_path(self.output_dir, spec.setting, spec.label, spec.seed).with_suffix(".rows.jsonl")

    def _dir(self, configured: str | None, default: str) -> str:
        path = Path(configured) if configured else self.output_dir / default
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def config(self) -> dict[str, Any]:
        """What the loggers record as the run's configuration."""
        spec = self.spec
        return {"experiment": self.experiment, "run_id": spec.run_id, "config_hash": spec.config_hash(), **asdict(spec)}

    def _build_wandb(self, resume_id: str | None) -> TaskWandbLogger:
        import wandb

        w, spec = self.cfg.wandb, self.spec
        run_id = os.environ.get("WANDB_RUN_ID") or resume_id  # `wandb agent`'s run first; None: a new id
        lg = TaskWandbLogger(
            name=spec.run_id, id=run_id, resume="allow", project=w.project, entity=w.entity,
            group=w.group or self.experiment, job_type=spec.setting,
            tags=list(dict.fromkeys([*w.tags, spec.strategy_class, spec.setting])), mode=w.mode,
            save_dir=self._dir(w.dir or os.environ.get("WANDB_DIR"), "."), settings=wandb.Settings(quiet=True),
        )
        try:
            run = lg.experiment  # starts the run now: credential errors surface before training
        except wandb.errors.Error as err:
            raise ValueError(
                f"logger.wandb.mode={w.mode}: {err} (or set WANDB_API_KEY, or use logger.wandb.mode=offline)"
            ) from err
        write_json_atomic(run_link_path(self.output_dir, spec.setting, spec.label, spec.seed),
                          {"name": run.name, "id": run.id, "project": w.project, "entity": w.entity,
                           "group": w.group or self.experiment, "url": run.url})
        # forgetting curves: every evaluation key against the number of tasks trained
        run.define_metric("tasks_trained")
        for key in self._eval_keys(int(spec.scenario["n_tasks"])):
            run.define_metric(key, step_metric="tasks_trained")
        run.define_metric("eval/acc_class*", step_metric="tasks_trained")
        return lg

    @staticmethod
    def _eval_keys(n_tasks: int) -> list[str]:
        return ["eval/acc_seen"] + [f"eval/{m}_task{j}" for m in ("acc", "loss") for j in range(n_tasks)]

    @property
    def loggers(self) -> list[Logger]:
        return [lg for lg in (self.wandb, self.csv, self.tensorboard) if lg is not None]

    def lightning_loggers(self) -> list[Logger]:
        """The loggers to pass to every task's ``Trainer(logger=...)`` (the same objects each time)."""
        return self.loggers

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to continue this one's W&B run and step count."""
        return {"wandb_id": self.wandb.version if self.wandb else None, "steps": self.steps}

    def _log_scalars(self, scalars: dict[str, float], loggers: list[Logger] | None = None) -> None:
        for lg in self.loggers if loggers is None else loggers:
            lg.log_metrics(scalars, step=0)  # step 0 after the offset = the cumulative step count now
            lg.save()

    # ----------------------------------------------------------- per task
    def log_task_end(self, t: int, acc_row: list[float], loss_row: list[float], steps: int,
                     confusion: list[list[list[int]]] | None = None) -> None:
        """Row t of the accuracy / loss matrices after training task t for ``steps`` optimizer steps.

        ``eval/acc_seen`` = mean_{j<=t} acc_row[j] (average accuracy on the tasks trained so far).
        ``confusion[j][y][p]`` (test samples of task j, label y, predicted p) adds ``eval/acc_class{y}``
        = sum_j confusion[j][y][y] / sum_j sum_p confusion[j][y][p] to every logger, and to W&B the tables
        ``eval/per_class`` (:func:`per_class_table`) and ``eval/confusion`` (:func:`confusion_table`).
        """
        if len(acc_row) != len(loss_row):
            raise ValueError(f"log_task_end: acc_row has {len(acc_row)} entries, loss_row {len(loss_row)}")
        if not 0 <= t < len(acc_row):
            raise ValueError(f"log_task_end: task index t={t} outside 0..{len(acc_row) - 1}")
        self.steps += int(steps)
        for lg in self.loggers:
            cast(_TaskSteps, lg).steps_before = self.steps
        scalars: dict[str, float] = {"tasks_trained": t + 1, "eval/acc_seen": sum(acc_row[: t + 1]) / (t + 1)}
        scalars.update({f"eval/acc_task{j}": float(a) for j, a in enumerate(acc_row)})
        scalars.update({f"eval/loss_task{j}": float(v) for j, v in enumerate(loss_row)})
        if confusion:
            scalars.update({f"eval/acc_class{y}": a for y, a in class_accuracy(confusion).items()})
        self._log_scalars(scalars, [lg for lg in self.loggers if lg is not self.wandb])
        if self.wandb is not None:
            import wandb

            logged: dict[str, Any] = dict(scalars)
            if confusion:
                logged["eval/per_class"] = wandb.Table(*per_class_table(t + 1, confusion))  # type: ignore[arg-type]
                logged["eval/confusion"] = wandb.Table(*confusion_table(t + 1, confusion))  # type: ignore[arg-type]
            self.wandb.log_metrics(logged, step=0)

    # ------------------------------------------------------------ per run
    def log_result(self, result: RunResult) -> None:
        """The run's record: its summary scalars (:func:`result_scalars`) to every logger (W&B: into the
        run summary), and the accuracy-matrix heatmap to W&B and TensorBoard; W&B also gets the accuracy
        and loss matrices, per-task timings / memory and the guarantee checks as tables."""
        from cl_bench.figures import acc_matrix_figure, png_bytes
        from cl_bench.results import check_rows

        self._status = result.status
        scalars = result_scalars(result)
        self._log_scalars(scalars, [lg for lg in self.loggers if lg is not self.wandb])
        joint = result.joint
        title = f"{result.label}: {result.setting}, seed {result.seed}"
        drawn = result.acc and (self.wandb is not None or self.tensorboard is not None)
        heatmap = png_bytes(acc_matrix_figure(result.acc, title, joint)) if drawn else None
        if self.tensorboard is not None and heatmap is not None:
            self.tensorboard.experiment.add_image("acc_matrix", png_array(heatmap), self.steps, dataformats="HWC")
            self.tensorboard.experiment.flush()
        if self.wandb is None:
            return
        import wandb
        from PIL import Image

        run = self.wandb.experiment
        run.summary.update({**scalars, "status": result.status, "error": result.error or ""})
        run.summary.update({f"metrics_undefined/{k}": why for k, why in result.metrics_undefined.items()})
        # wandb.Table types its columns as an invariant list[str | int], so a list[str] needs ignore[arg-type]
        tables: dict[str, Any] = {}
        if heatmap is not None:
            tables["acc_matrix"] = wandb.Table(*matrix_table(result.acc, joint))  # type: ignore[arg-type]
            tables["loss_matrix"] = wandb.Table(*matrix_table(result.loss, joint))  # type: ignore[arg-type]
            tables["acc_matrix_heatmap"] = wandb.Image(Image.open(io.BytesIO(heatmap)), caption="accuracy matrix")
            tables["timings"] = wandb.Table(*timings_table(result))  # type: ignore[arg-type]
        rows = check_rows(result.checks)
        if rows:
            tables["checks"] = wandb.Table(*flat_table(rows))  # type: ignore[arg-type]
        if tables:
            run.log(tables)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "result.json"
            path.write_text(json.dumps(result.to_dict(), indent=1))
            self._log_artifact(run, "result", "run-result", path)

    def log_model(self, module: Any) -> None:
        """The final model's ``state_dict`` as a W&B artifact of type ``model`` (``logger.wandb.log_model``)."""
        if self.wandb is None or not self.cfg.wandb.log_model:
            return
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt"
            torch.save(module.state_dict(), path)
            self._log_artifact(self.wandb.experiment, "model", "model", path)

    def _log_artifact(self, run: Any, kind: str, artifact_type: str, path: Path) -> None:
        """``path`` as the artifact ``<kind>-<setting>-<label>-seed<k>`` of ``run`` (W&B copies it at once)."""
        import wandb

        spec = self.spec
        artifact = wandb.Artifact(artifact_name(f"{kind}-{spec.setting}-{spec.label}-seed{spec.seed}"),
                                  type=artifact_type, metadata={"run_id": spec.run_id,
                                                                "config_hash": spec.config_hash()})
        artifact.add_file(str(path))
        run.log_artifact(artifact)

    def close(self, interrupted: bool = False) -> None:
        """Finish the W&B run (exit code 1 if the run failed) and flush CSV / TensorBoard; the W&B row
        journal is removed unless the run was ``interrupted`` (its checkpoint stays for a resume)."""
        if self.csv is not None:
            self.csv.save()
        if self.tensorboard is not None:
            self.tensorboard.finalize("success")
        if self.wandb is not None:
            if self.wandb.journal is not None:
                self.wandb.journal.close()
                self.wandb.journal = None
                if not interrupted:
                    self._journal_path().unlink(missing_ok=True)
            self.wandb.experiment.finish(exit_code=0 if self._status == "ok" else 1)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self._status = "failed"
        self.close(interrupted=exc_type is not None)


def artifact_name(name: str) -> str:
    """A W&B artifact name (letters, digits, ``-``, ``_``, ``.``): other characters become ``-``."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def run_link_path(output_dir: Path, setting: str, label: str, seed: int) -> Path:
    """Where a run's W&B identity (name, id, project, url) is kept for the summary run's links."""
    return Path(output_dir) / "logs" / "wandb" / setting / label / f"seed{seed}.json"


def summary_id_path(output_dir: Path) -> Path:
    """Where the summary W&B run's identity is kept, so a rewrite continues the same run."""
    return Path(output_dir) / "logs" / "wandb" / "summary.json"


# ----------------------------------------------------------- run records
def result_scalars(result: RunResult) -> dict[str, float]:
    """Flat scalars of a result: ``metrics/*`` (defined ones), ``time/*_s`` (per-task lists summed),
    ``memory/*``, ``checks/<id>/<verdict>`` counts and the certificate's ``checks/n_*``."""
    out: dict[str, float] = {f"metrics/{k}": float(v) for k, v in result.metrics.items() if v is not None}
    for key, value in result.timings.items():
        out[f"time/{key}_s"] = float(sum(value) if isinstance(value, list) else value)
    out.update({f"memory/{k}": float(v) for k, v in result.peak_memory.items()})
    if result.strategy_memory_bytes:
        out["memory/strategy_bytes"] = float(result.strategy_memory_bytes[-1])
    from cl_bench.results import check_id, check_rows

    rows = check_rows(result.checks)
    for (check, verdict), n in sorted(Counter((check_id(r), str(r.get("verdict"))) for r in rows).items()):
        out[f"checks/{check}/{verdict.replace('/', '')}"] = float(n)  # n/a -> na: "/" nests W&B keys
    cert = result.checks.get("certificate") if isinstance(result.checks, dict) else None
    if isinstance(cert, dict):
        out.update({f"checks/{k}": float(v) for k, v in cert.items() if k.startswith("n_") and isinstance(v, int)})
    return out


def class_accuracy(confusion: list[list[list[int]]]) -> dict[int, float]:
    """Accuracy of every class y with test samples, over all tasks' test sets:
    sum_j C[j][y][y] / sum_j sum_p C[j][y][p]."""
    out: dict[int, float] = {}
    for y in range(len(confusion[0])):
        n = sum(sum(c[y]) for c in confusion)
        if n:
            out[y] = sum(c[y][y] for c in confusion) / n
    return out


def per_class_table(tasks_trained: int, confusion: list[list[list[int]]]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows): per (task j, class y) with test samples: n = sum_p C[j][y][p], correct = C[j][y][y],
    acc = correct / n."""
    rows = [[tasks_trained, j, y, sum(row), row[y], row[y] / sum(row)]
            for j, c in enumerate(confusion) for y, row in enumerate(c) if sum(row)]
    return ["tasks_trained", "task", "class", "n", "correct", "acc"], rows


def confusion_table(tasks_trained: int, confusion: list[list[list[int]]]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows): the non-zero counts C[j][y][p] (task j's test samples of label y predicted as p)."""
    rows = [[tasks_trained, j, y, p, n] for j, c in enumerate(confusion) for y, row in enumerate(c)
            for p, n in enumerate(row) if n]
    return ["tasks_trained", "task", "label", "predicted", "count"], rows


def matrix_table(matrix: list[list[float]], joint: bool = False) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of an accuracy or loss matrix: one row per evaluation, ``tasks_trained`` first
    (a joint run's single row counts every task as trained)."""
    n = len(matrix[0])
    trained = [n] if joint else list(range(1, len(matrix) + 1))
    columns = ["tasks_trained", *(f"task{j}" for j in range(n))]
    return columns, [[k, *map(float, row)] for k, row in zip(trained, matrix)]


def timings_table(result: RunResult) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows): per-task seconds of fit / after_task / eval and the strategy's memory."""
    parts = [k for k in ("fit", "after_task", "eval") if isinstance(result.timings.get(k), list)]
    mem = result.strategy_memory_bytes
    rows = [
        [i, *(float(result.timings[k][i]) for k in parts), int(mem[i]) if i < len(mem) else None]
        for i in range(len(result.timings[parts[0]]) if parts else 0)
    ]
    return ["phase", *(f"{k}_s" for k in parts), "strategy_memory_bytes"], rows


def flat_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of arbitrary dicts: nested dicts flattened to ``a.b`` columns; a column whose
    values are not all numbers, all booleans or all strings is rendered as text (one type per column)."""
    flat = [_flatten(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    data = [[r.get(c) for c in columns] for r in flat]
    for i in range(len(columns)):
        kinds = {_kind(row[i]) for row in data if row[i] is not None}
        if len(kinds) > 1 or kinds == {"json"}:
            for row in data:
                if row[i] is not None and not isinstance(row[i], str):
                    row[i] = json.dumps(row[i], default=str)
    return columns, data


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "text" if isinstance(value, str) else "json"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _encode(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A logged row as JSON: numbers as they are, a ``wandb.Table`` as ``{"__table__": [columns, data]}``."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if hasattr(v, "columns") and hasattr(v, "data"):
            out[k] = {"__table__": [list(v.columns), v.data]}
        else:
            out[k] = float(v) if not isinstance(v, (int, float, str)) else v
    return out


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`_encode`."""
    import wandb

    return {k: wandb.Table(*v["__table__"]) if isinstance(v, dict) else v for k, v in row.items()}


def _csv_rows(path: Path, until_step: int) -> list[dict[str, float]]:
    """Rows of a CSVLogger file up to ``until_step`` (later ones belong to an interrupted task)."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]
    return [r for r in rows if r["step"] <= until_step]


def png_array(png: bytes) -> Any:
    """A PNG as an RGB ``uint8`` array [H, W, 3] (TensorBoard's ``add_image(dataformats="HWC")``)."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
