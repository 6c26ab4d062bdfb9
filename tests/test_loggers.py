"""W&B (offline, read back with `wandb leet inspect --json`), CSV and TensorBoard logging of a real run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from cl_bench.config import ConfigError, build_plan, load_config
from cl_bench.loggers import RunLogger, flat_table, logger_config, matrix_table
from cl_bench.results import check_rows
from cl_bench.runner import execute

WANDB = str(Path(sys.executable).parent / "wandb")
TINY = [
    "scenario.n_tasks=2", "trainer.epochs=1", "trainer.batch_size=8", "trainer.train_loss_probe=50",
    "strategy=naive", "settings=[class_il]", "seeds=[0]",
    "checks.enabled=true", "checks.k=3", "checks.probe_size=200", "checks.lipschitz.enabled=false",
]


def _wandb_env(mp: pytest.MonkeyPatch, root: Path) -> None:
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(root))
    for var in ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_API_KEY"):
        mp.delenv(var, raising=False)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """digits, 2 tasks, naive, one seed, run by the runner with W&B + CSV + TensorBoard attached."""
    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        _wandb_env(mp, out)
        plan = build_plan(load_config([
            *TINY, f"output.dir={out}", "logger.use=[wandb,csv,tensorboard]", "logger.wandb.tags=[unit-test]",
        ]))
        spec = plan.runs[0]
        steps: list[int] = []
        (result,) = execute(plan, on_task_end=lambda _s, _t, module: steps.append(module.trainer.global_step))
    cumulative = [sum(steps[: t + 1]) for t in range(len(steps))]
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    return SimpleNamespace(out=out, plan=plan, spec=spec, result=result, steps=steps,
                           cumulative=cumulative, wandb_id=run_dir.name.rsplit("-", 1)[1])


def test_the_run_logged_every_task(logged: SimpleNamespace) -> None:
    r = logged.result
    assert r.status == "ok" and len(r.acc) == 2
    assert all(s > 10 for s in logged.steps)  # ~287 samples / batch 8 -> 36 steps, losses logged every 10
    assert check_rows(r.checks), "the run's guarantee checks should have produced records"


# ----------------------------------------------------------------------- W&B
def _inspect(run_dir: Path, *flags: str) -> str:
    proc = subprocess.run([WANDB, "leet", "inspect", *flags, "--json", str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def wandb_run(logged: SimpleNamespace) -> SimpleNamespace:
    (run_dir,) = (logged.out / "wandb").glob(f"offline-run-*-{logged.wandb_id}")
    records = [json.loads(line) for line in _inspect(run_dir).splitlines() if line.strip()]
    summary = json.loads(_inspect(run_dir, "--summary"))
    return SimpleNamespace(dir=run_dir, records=records, summary=summary,
                           history=[r["history"]["item"] for r in records if r["type"] == "history"])


def test_wandb_run_holds_config_group_and_tags(logged: SimpleNamespace, wandb_run: SimpleNamespace) -> None:
    config, spec = wandb_run.summary["config"], logged.spec
    assert config["experiment"] == logged.plan.name and config["config_hash"] == spec.config_hash()
    assert config["label"] == "naive" and config["setting"] == "class_il" and config["seed"] == 0
    assert config["trainer"]["batch_size"] == 8 and config["scenario"]["n_tasks"] == 2
    (run,) = [r["run"] for r in wandb_run.records if r["type"] == "run"]
    assert run["run_group"] == logged.plan.name and run["display_name"] == "class_il/naive/seed0"
    assert {"unit-test", "naive", "class_il"} <= set(run["tags"])
    assert wandb_run.summary["state"] == "finished" and wandb_run.summary["exit_code"] == 0


def test_wandb_eval_curves_use_tasks_trained_and_steps_are_monotone(
    logged: SimpleNamespace, wandb_run: SimpleNamespace
) -> None:
    acc, loss = logged.result.acc, logged.result.loss
    evals = [h for h in wandb_run.history if "eval/acc_task0" in h]
    assert [h["tasks_trained"] for h in evals] == [1, 2]
    for t, h in enumerate(evals):
        assert [h[f"eval/acc_task{j}"] for j in range(2)] == acc[t]
        assert [h[f"eval/loss_task{j}"] for j in range(2)] == pytest.approx(loss[t])
        assert h["eval/acc_seen"] == pytest.approx(sum(acc[t][: t + 1]) / (t + 1))
        assert h["trainer/global_step"] == logged.cumulative[t]
    defined = {r["metric"].get("name"): r["metric"].get("step_metric")
               for r in wandb_run.records if r["type"] == "metric"}
    assert defined["eval/acc_task0"] == defined["eval/loss_task1"] == defined["eval/acc_seen"] == "tasks_trained"
    # training loss of both tasks in one run, on one increasing step axis
    train = [(h["trainer/global_step"], k) for h in wandb_run.history for k in h if k.startswith("train/loss_task")]
    steps = [s for s, _ in train]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    task0 = [s for s, k in train if k == "train/loss_task0"]
    task1 = [s for s, k in train if k == "train/loss_task1"]
    assert task0 and task1 and max(task0) < logged.cumulative[0] <= min(task1) < logged.cumulative[1]


def test_wandb_summary_tables_and_heatmap(logged: SimpleNamespace, wandb_run: SimpleNamespace) -> None:
    r, summary = logged.result, wandb_run.summary["summary"]
    for name in ("acc", "forgetting", "bwt", "aia"):
        assert summary[f"metrics/{name}"] == pytest.approx(r.metrics[name])
    assert summary["time/total_s"] == pytest.approx(r.timings["total"])
    assert summary["time/fit_s"] == pytest.approx(sum(r.timings["fit"]))
    assert summary["memory/cpu_max_rss_bytes"] == r.peak_memory["cpu_max_rss_bytes"]
    verdicts = Counter((row["id"], row["verdict"].replace("/", "")) for row in check_rows(r.checks))
    assert {k: v for k, v in summary.items() if k.startswith("checks/C")} == {
        f"checks/{c}/{v}": n for (c, v), n in verdicts.items()
    }
    assert summary["checks/n_pairs"] == r.checks["certificate"]["n_pairs"]

    def table(key: str) -> dict[str, Any]:
        assert summary[key]["_type"] == "table-file"
        return json.loads((wandb_run.dir / "files" / summary[key]["path"]).read_text())

    acc_table = table("acc_matrix")
    assert acc_table["columns"] == ["tasks_trained", "task0", "task1"]
    assert acc_table["data"] == [[1, *r.acc[0]], [2, *r.acc[1]]]
    checks = table("checks")
    col = checks["columns"].index("verdict")
    assert [row[col] for row in checks["data"]] == [row["verdict"] for row in check_rows(r.checks)]
    assert "values.forgetting" in checks["columns"]  # nested values flattened into columns
    timings = table("timings")
    assert [row[timings["columns"].index("fit_s")] for row in timings["data"]] == pytest.approx(r.timings["fit"])
    image = summary["acc_matrix_heatmap"]
    png = (wandb_run.dir / "files" / image["path"]).read_bytes()
    assert image["_type"] == "image-file" and png[:8] == b"\x89PNG\r\n\x1a\n" and image["width"] > 200


# ----------------------------------------------------------------- CSV / TB
def _log_dir(logged: SimpleNamespace, kind: str) -> Path:
    return logged.out / "logs" / kind / "class_il" / "naive" / "seed0"


def test_csv_has_the_same_scalars(logged: SimpleNamespace, wandb_run: SimpleNamespace) -> None:
    with open(_log_dir(logged, "csv") / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    steps = [int(row["step"]) for row in rows]
    assert steps == sorted(steps)
    train = [(int(row["step"]), float(row["train/loss_task0"] or row["train/loss_task1"]))
             for row in rows if row["train/loss_task0"] or row["train/loss_task1"]]
    wb_train = [(h["trainer/global_step"], v) for h in wandb_run.history for k, v in h.items()
                if k.startswith("train/loss_task")]
    assert train == wb_train and len(train) == 6  # 3 logged losses per task of 36 steps
    evals = [row for row in rows if row["tasks_trained"]]
    assert [int(row["step"]) for row in evals] == logged.cumulative
    for t, row in enumerate(evals):
        assert [float(row[f"eval/acc_task{j}"]) for j in range(2)] == logged.result.acc[t]
    (final,) = [row for row in rows if row["metrics/acc"]]
    assert float(final["metrics/acc"]) == pytest.approx(logged.result.metrics["acc"])
    hparams = yaml.safe_load((_log_dir(logged, "csv") / "hparams.yaml").read_text())
    assert hparams["config_hash"] == logged.spec.config_hash() and hparams["experiment"] == logged.plan.name


def test_tensorboard_has_the_same_scalars_and_the_heatmap(logged: SimpleNamespace) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(_log_dir(logged, "tensorboard")), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    for j in range(2):
        events = acc.Scalars(f"eval/acc_task{j}")
        assert [e.step for e in events] == logged.cumulative
        assert [e.value for e in events] == pytest.approx([row[j] for row in logged.result.acc], abs=1e-6)
    task0 = [e.step for e in acc.Scalars("train/loss_task0")]
    task1 = [e.step for e in acc.Scalars("train/loss_task1")]
    assert task0 and task1 and max(task0) < min(task1)
    (final,) = acc.Scalars("metrics/acc")
    assert final.value == pytest.approx(logged.result.metrics["acc"], abs=1e-6)
    (image,) = acc.Images("acc_matrix")
    assert image.width > 200 and image.height > 150 and image.encoded_image_string[:4] == b"\x89PNG"


# ------------------------------------------------------------------ resume
@pytest.mark.filterwarnings("ignore:Experiment logs directory")  # the resumed run re-opens its CSV folder
def test_resumed_and_agent_runs_keep_their_wandb_id_and_step_count(tmp_path: Path, monkeypatch) -> None:
    _wandb_env(monkeypatch, tmp_path)
    plan = build_plan(load_config([*TINY, f"output.dir={tmp_path}"]))
    cfg = logger_config(["wandb", "csv"])
    first = RunLogger(cfg, plan.runs[0], plan.name, tmp_path)
    first.log_task_end(0, [0.9, 0.1], [0.2, 3.0], steps=50)
    state = first.state()
    first.csv.log_metrics({"train/loss_task1": 1.5}, step=7)  # the interrupted task: step 57, after the state
    first.close()
    with RunLogger(cfg, plan.runs[0], plan.name, tmp_path, state=state) as rl:  # resumed from a checkpoint
        assert rl.wandb.experiment.id == state["wandb_id"]
        rl.log_task_end(1, [0.5, 0.75], [1.0, 0.5], steps=20)
        assert rl.state() == {"wandb_id": state["wandb_id"], "steps": 70}
    with open(tmp_path / "logs" / "csv" / "class_il" / "naive" / "seed0" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # the finished task's row is kept, the interrupted task's (step 57) dropped, the resumed one appended
    assert [(int(r["step"]), float(r["tasks_trained"])) for r in rows] == [(50, 1.0), (70, 2.0)]
    assert float(rows[0]["eval/acc_task0"]) == 0.9 and float(rows[1]["eval/acc_seen"]) == 0.625
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun7")  # set by `wandb agent` for the run it launches
    with RunLogger(cfg, plan.runs[0], plan.name, tmp_path, state=state) as rl:
        assert rl.wandb.experiment.id == "agentrun7"


# ------------------------------------------------------------------ config
def test_logger_config_shorthands_and_errors() -> None:
    assert logger_config(None).use == [] and logger_config("csv").use == ["csv"]
    cfg = logger_config(["wandb", "tensorboard"])
    assert cfg.use == ["wandb", "tensorboard"] and cfg.wandb.mode == "offline" and cfg.wandb.project == "cl-bench"
    assert logger_config({"use": ["wandb"], "wandb": {"mode": "online", "tags": ["a"]}}).wandb.tags == ["a"]
    with pytest.raises(ConfigError, match=r"logger: use: unknown logger\(s\) \['wandbb'\]; valid: wandb, csv"):
        logger_config(["wandbb"])
    with pytest.raises(ConfigError, match=r"wandb.mode='onlin'; valid: offline, online, disabled"):
        logger_config({"wandb": {"mode": "onlin"}})
    with pytest.raises(ConfigError, match=r"logger.wandb.projekt"):
        logger_config({"wandb": {"projekt": "x"}})
    with pytest.raises(ConfigError, match="listed twice"):
        logger_config(["csv", "csv"])


def test_online_without_credentials_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    _wandb_env(monkeypatch, tmp_path)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    plan = build_plan(load_config([*TINY, f"output.dir={tmp_path}"]))
    with pytest.raises(ValueError, match=r"logger.wandb.mode=online: .*API key.*logger.wandb.mode=offline"):
        RunLogger(logger_config({"use": ["wandb"], "wandb": {"mode": "online"}}), plan.runs[0], plan.name, tmp_path)


@pytest.mark.slow  # a fresh interpreter importing torch + lightning: ~10-30 s on a busy machine
def test_importing_the_loggers_does_not_import_wandb() -> None:
    code = "import sys, cl_bench.loggers; print('wandb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.stdout.strip() == "False", out.stderr


def test_flat_table_keeps_one_type_per_column() -> None:
    rows = [
        {"id": "C0", "verdict": "pass", "values": {"ratio": 0.5, "ok": True}, "threshold": 0.1},
        {"id": "C2", "verdict": "n/a", "values": {"ratio": None, "ok": False}, "threshold": {"max": 2}},
    ]
    columns, data = flat_table(rows)
    assert columns == ["id", "verdict", "values.ratio", "values.ok", "threshold", "threshold.max"]
    assert data == [["C0", "pass", 0.5, True, 0.1, None], ["C2", "n/a", None, False, None, 2]]
    columns, data = flat_table([{"x": 1}, {"x": "two"}, {"x": [3]}])
    assert data == [["1"], ["two"], ["[3]"]]


def test_matrix_table_rows_count_the_tasks_trained() -> None:
    assert matrix_table([[0.9, 0.1, 0.0], [0.5, 0.8, 0.1]]) == (
        ["tasks_trained", "task0", "task1", "task2"], [[1, 0.9, 0.1, 0.0], [2, 0.5, 0.8, 0.1]])
    assert matrix_table([[0.9, 0.8, 0.7]], joint=True)[1] == [[3, 0.9, 0.8, 0.7]]  # joint: after all tasks
    assert matrix_table([[0.9, 0.1, 0.0]])[1] == [[1, 0.9, 0.1, 0.0]]  # a run that failed in task 1
