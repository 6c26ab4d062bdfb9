"""The experiment's dashboards: `cl-bench run` with W&B (offline), CSV and TensorBoard, read back from the
offline run files (`wandb leet inspect --json`) and compared with results.json, per run and aggregated."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from cl_bench.cli import main
from cl_bench.metrics import HEADLINE

WANDB = str(Path(sys.executable).parent / "wandb")
EXPERIMENT = [
    "name=dash", "scenario.n_tasks=2", "trainer.epochs=1", "trainer.batch_size=8", "trainer.train_loss_probe=50",
    "trainer.num_threads=1", "strategy=[naive,ewc]", "settings=[class_il]", "seeds=[0,1]", "sweep.workers=1",
    "checks.enabled=true", "checks.k=3", "checks.probe_size=200", "checks.lipschitz.enabled=false",
]


def wandb_env(mp: pytest.MonkeyPatch, root: Path) -> None:
    """Offline W&B writing under ``root`` (runs, artifact staging), no agent or credentials from outside."""
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(root))
    mp.setenv("WANDB_DATA_DIR", str(root / "wandb-data"))
    mp.setenv("WANDB_CACHE_DIR", str(root / "wandb-cache"))
    for var in ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_API_KEY"):
        mp.delenv(var, raising=False)


def inspect(run_dir: Path, *flags: str) -> str:
    """``wandb leet inspect --json`` of one offline run folder."""
    proc = subprocess.run([WANDB, "leet", "inspect", *flags, "--json", str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def read_run(run_dir: Path) -> SimpleNamespace:
    """Records, history rows, summary, run header and artifacts of one offline W&B run."""
    records = [json.loads(line) for line in inspect(run_dir).splitlines() if line.strip()]
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    return SimpleNamespace(
        dir=run_dir, records=records, run=run, summary=json.loads(inspect(run_dir, "--summary")),
        history=[r["history"]["item"] for r in records if r["type"] == "history"],
        artifacts=[r["artifact"] for r in records if r["type"] == "artifact" and r["artifact"]["type"] != "run_table"],
    )


def nested(row: dict[str, Any], key: str) -> dict[str, Any]:
    """The value object ``key`` of a history row, whose fields the run file stores as ``key.<field>``."""
    return {k[len(key) + 1:]: v for k, v in row.items() if k.startswith(key + ".")}


def table(run: SimpleNamespace, ref: dict[str, Any]) -> dict[str, Any]:
    """The JSON of a logged ``wandb.Table`` (a ``table-file`` reference in the history or summary)."""
    assert ref["_type"] == "table-file", ref
    return json.loads((run.dir / "files" / ref["path"]).read_text())


def runs_by_name(root: Path) -> dict[str, list[SimpleNamespace]]:
    """Every offline run under ``root/wandb`` that holds its run record, by display name, oldest first
    (the folder of a killed process can lack it)."""
    out: dict[str, list[SimpleNamespace]] = {}
    for run_dir in sorted((root / "wandb").glob("offline-run-*")):
        if any(json.loads(line)["type"] == "run" for line in inspect(run_dir).splitlines() if line.strip()):
            run = read_run(run_dir)
            out.setdefault(run.run["display_name"], []).append(run)
    return out


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """2 strategies x 2 seeds on digits (2 tasks, class-IL), checks on, all three loggers, through the CLI."""
    out = tmp_path_factory.mktemp("dash")
    with pytest.MonkeyPatch.context() as mp:
        wandb_env(mp, out)
        assert main(["run", *EXPERIMENT, f"output.dir={out}", "logger.use=[wandb,csv,tensorboard]",
                     "logger.wandb.log_model=true"]) == 0
    results = json.loads((out / "results.json").read_text())
    return SimpleNamespace(out=out, results=results, runs=runs_by_name(out))


@pytest.fixture(scope="module")
def summary(experiment: SimpleNamespace) -> SimpleNamespace:
    (run,) = experiment.runs["dash/summary"]
    return run


def test_summary_run_is_in_the_experiments_group(experiment: SimpleNamespace, summary: SimpleNamespace) -> None:
    assert summary.run["job_type"] == "summary" and summary.run["run_group"] == "dash"
    assert "summary" in summary.run["tags"]
    per_run = [r for name, rs in experiment.runs.items() if name != "dash/summary" for r in rs]
    assert len(per_run) == 4 and {r.run["run_group"] for r in per_run} == {"dash"}
    assert summary.summary["state"] == "finished" and summary.summary["exit_code"] == 0
    ids = json.loads((experiment.out / "logs" / "wandb" / "summary.json").read_text())
    assert ids["id"] == summary.run["run_id"]


def test_aggregate_table_and_scalars_equal_results_json(experiment: SimpleNamespace,
                                                         summary: SimpleNamespace) -> None:
    agg, s = experiment.results["aggregate"], summary.summary["summary"]
    got = table(summary, s["aggregate"])
    assert got["columns"][:3] == ["setting", "strategy", "n"]
    assert [(row[0], row[1], row[2]) for row in got["data"]] == [("class_il", "naive", 2), ("class_il", "ewc", 2)]
    n_defined = 0
    for row in got["data"]:
        stats = agg[f"{row[0]}/{row[1]}"]
        for m in HEADLINE:
            mean, std = row[got["columns"].index(f"{m}_mean")], row[got["columns"].index(f"{m}_std")]
            assert (mean, std) == (stats[m]["mean"], stats[m]["std"])
            if stats[m]["mean"] is not None:
                n_defined += 1
                assert s[f"{row[0]}/{row[1]}/{m}/mean"] == stats[m]["mean"]
                assert s[f"{row[0]}/{row[1]}/{m}/std"] == stats[m]["std"]
            else:
                assert f"{row[0]}/{row[1]}/{m}/mean" not in s
    assert n_defined >= 2 * 6  # acc, aia, forgetting, bwt, learning_acc, loss_forgetting, time_s per strategy
    # the std really is over the seeds of results.json
    accs = [r["metrics"]["acc"] for r in experiment.results["runs"] if r["label"] == "naive"]
    assert s["class_il/naive/acc/std"] == pytest.approx(float(np.std(accs, ddof=1)))


def test_mean_accuracy_matrix_table_is_the_mean_over_seeds(experiment: SimpleNamespace,
                                                           summary: SimpleNamespace) -> None:
    got = table(summary, summary.summary["summary"]["acc_matrix"])
    assert got["columns"] == ["setting", "strategy", "tasks_trained", "task", "mean", "std", "n"]
    rows = {(r[1], r[2], r[3]): r[4:] for r in got["data"]}
    assert len(rows) == 2 * 2 * 2
    for label in ("naive", "ewc"):
        mats = np.array([r["acc"] for r in experiment.results["runs"] if r["label"] == label])
        for t in range(2):
            for j in range(2):
                mean, std, n = rows[(label, t + 1, j)]
                assert mean == pytest.approx(mats[:, t, j].mean()) and n == 2
                assert std == pytest.approx(mats[:, t, j].std(ddof=1))


def test_certificate_table_has_every_pair(experiment: SimpleNamespace, summary: SimpleNamespace) -> None:
    got = table(summary, summary.summary["summary"]["certificates"])
    col = {c: i for i, c in enumerate(got["columns"])}
    want = [(r["run_id"], p["o"], p["t"], p["kind"], p["bound"], p["measured"], p["certified"])
            for r in experiment.results["runs"] for p in r["checks"]["certificate"]["pairs"]]
    assert len(want) == 4  # one (o=0, t=1) pair per run
    assert [tuple(row[col[c]] for c in ("run_id", "o", "t", "kind", "bound", "measured", "certified"))
            for row in got["data"]] == want


def test_runs_table_links_every_per_run_wandb_run(experiment: SimpleNamespace, summary: SimpleNamespace) -> None:
    got = table(summary, summary.summary["summary"]["runs"])
    col = {c: i for i, c in enumerate(got["columns"])}
    assert [row[col["run_id"]] for row in got["data"]] == [r["run_id"] for r in experiment.results["runs"]]
    for row in got["data"]:
        (run,) = experiment.runs[row[col["wandb_name"]]]
        assert run.run["run_id"] == row[col["wandb_id"]] and row[col["status"]] == "ok"
        assert run.run["display_name"] == row[col["run_id"]]


def test_summary_figures_and_artifacts(experiment: SimpleNamespace, summary: SimpleNamespace) -> None:
    from PIL import Image

    s = summary.summary["summary"]
    for key in ("heatmap/class_il", "forgetting/class_il", "predicted_vs_measured"):
        image = s[key]
        assert image["_type"] == "image-file"
        with Image.open(summary.dir / "files" / image["path"]) as png:
            assert png.format == "PNG" and png.width > 400 and png.height > 250
            # drawn, not blank: many distinct colours (matrix cells, curves, bands)
            assert len(set(png.convert("RGB").getdata())) > 50
    kinds = {a["type"]: a for a in summary.artifacts}
    assert set(kinds) == {"results", "report"}
    files = {c["path"]: c["digest"] for c in kinds["results"]["manifest"]["contents"]}
    for name in ("results.json", "config.yaml"):
        md5 = hashlib.md5((experiment.out / name).read_bytes()).digest()
        assert files[name] == base64.b64encode(md5).decode()
    report = {c["path"] for c in kinds["report"]["manifest"]["contents"]}
    assert {"README.md", "acc_matrix_class_il.png", "forgetting_class_il.png"} <= report


def test_summary_scalars_reach_csv_and_tensorboard(experiment: SimpleNamespace, summary: SimpleNamespace) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    want = {k: v for k, v in summary.summary["summary"].items() if k.startswith("class_il/")}
    assert want
    with open(experiment.out / "logs" / "csv" / "summary" / "metrics.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert {k: float(v) for k, v in row.items() if k != "step"} == pytest.approx(want)
    acc = EventAccumulator(str(experiment.out / "logs" / "tensorboard" / "summary"),
                           size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert {k: acc.Scalars(k)[0].value for k in want} == pytest.approx(want, rel=1e-6)
    assert set(acc.Tags()["images"]) == {"heatmap/class_il", "forgetting/class_il"}


@pytest.mark.filterwarnings("ignore:Experiment logs directory")  # the rewrite replaces the summary metrics.csv
def test_report_wandb_rewrites_the_same_summary_run(experiment: SimpleNamespace, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "results"
    top = {"wandb", "wandb-data", "wandb-cache"}  # the W&B folders of the first write, not logs/wandb
    shutil.copytree(experiment.out, copy, ignore=lambda d, names: top & set(names) if Path(d) == experiment.out else [])
    wandb_env(monkeypatch, copy)
    assert main(["report", str(copy), "--out", str(tmp_path / "report"), "--wandb"]) == 0
    (again,) = runs_by_name(copy)["dash/summary"]
    (first,) = experiment.runs["dash/summary"]
    assert again.run["run_id"] == first.run["run_id"] and again.run["job_type"] == "summary"
    assert table(again, again.summary["summary"]["aggregate"]) == table(first, first.summary["summary"]["aggregate"])
    report = {c["path"] for a in again.artifacts if a["type"] == "report" for c in a["manifest"]["contents"]}
    assert "README.md" in report and (tmp_path / "report" / "README.md").is_file()
    # the figures the summary run holds, rendered to PNG files for a look
    for key in ("heatmap/class_il", "forgetting/class_il"):
        src = again.dir / "files" / again.summary["summary"][key]["path"]
        shutil.copy(src, tmp_path / f"{key.replace('/', '_')}.png")
    assert (tmp_path / "forgetting_class_il.png").stat().st_size > 10_000


def test_collect_wandb_writes_the_summary_of_the_merged_folders(experiment: SimpleNamespace, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The experiment's seeds split over two folders (as two W&B agents would leave them), collected: the
    summary run of the merged folder holds the aggregate table of the experiment run as one."""
    for seed, folder in ((0, tmp_path / "a"), (1, tmp_path / "b")):
        for path in (experiment.out / "runs").glob(f"*/*/seed{seed}.json"):
            target = folder / path.relative_to(experiment.out)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
        shutil.copy(experiment.out / "config.yaml", folder / "config.yaml")
    wandb_env(monkeypatch, tmp_path / "merged")
    assert main(["collect", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "merged"),
                 "--wandb"]) == 0
    (merged,) = runs_by_name(tmp_path / "merged")["dash/summary"]
    (first,) = experiment.runs["dash/summary"]
    assert merged.run["job_type"] == "summary"
    got = table(merged, merged.summary["summary"]["aggregate"])
    want = table(first, first.summary["summary"]["aggregate"])
    assert got["columns"] == want["columns"] and sorted(got["data"]) == sorted(want["data"])  # folder order aside


def test_report_wandb_on_a_folder_without_results_is_one_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path), "--wandb"]) == 2
    assert "results.json not found" in capsys.readouterr().err
    assert not (tmp_path / "wandb").exists()


# ------------------------------------------------------------------ per run
def per_run(experiment: SimpleNamespace) -> list[tuple[dict[str, Any], SimpleNamespace]]:
    """(results.json entry, its W&B run) for every run of the experiment."""
    out = []
    for r in experiment.results["runs"]:
        (run,) = experiment.runs[r["run_id"]]
        out.append((r, run))
    return out


def class_acc(confusion: list[list[list[int]]]) -> dict[str, float]:
    """``eval/acc_class{y}`` recomputed with numpy from one row of results.json's confusion matrices."""
    c = np.asarray(confusion).sum(axis=0)  # over the tasks' test sets
    n = c.sum(axis=1)
    return {f"eval/acc_class{y}": float(c[y, y] / n[y]) for y in range(len(n)) if n[y]}


def test_confusion_matrices_in_results_json_agree_with_the_accuracy_matrix(experiment: SimpleNamespace) -> None:
    for r in experiment.results["runs"]:
        conf = np.asarray(r["confusion"])
        assert conf.shape == (2, 2, 10, 10)  # [t][j][label][predicted], digits: 10 classes
        for t in range(2):
            for j in range(2):
                assert conf[t, j].sum() == r["task_sizes"]["test"][j]
                assert np.trace(conf[t, j]) / conf[t, j].sum() == pytest.approx(r["acc"][t][j])
        # task 0 holds classes 0, 1 only; class-IL naive after task 1 predicts the new classes 2, 3
        assert conf[:, 0, 2:].sum() == 0 and conf[1, 0][:, 2:4].sum() > 0.5 * conf[1, 0].sum()


def test_every_per_run_scalar_and_table_equals_results_json(experiment: SimpleNamespace) -> None:
    for r, run in per_run(experiment):
        evals = [h for h in run.history if "tasks_trained" in h]
        assert [h["tasks_trained"] for h in evals] == [1, 2]
        for t, h in enumerate(evals):
            assert [h[f"eval/acc_task{j}"] for j in range(2)] == r["acc"][t]
            assert [h[f"eval/loss_task{j}"] for j in range(2)] == pytest.approx(r["loss"][t])
            assert {k: v for k, v in h.items() if k.startswith("eval/acc_class")} == pytest.approx(
                class_acc(r["confusion"][t]))
            per_class = table(run, nested(h, "eval/per_class"))
            assert per_class["columns"] == ["tasks_trained", "task", "class", "n", "correct", "acc"]
            conf = r["confusion"][t]
            assert [row[:5] for row in per_class["data"]] == [
                [t + 1, j, y, sum(conf[j][y]), conf[j][y][y]] for j in range(2) for y in range(10) if sum(conf[j][y])]
            confusion = table(run, nested(h, "eval/confusion"))
            dense = np.zeros((2, 10, 10), dtype=int)
            for tasks_trained, j, y, p, n in confusion["data"]:
                assert tasks_trained == t + 1 and n > 0
                dense[j, y, p] = n
            assert dense.tolist() == conf
        summary = run.summary["summary"]
        assert {k[len("metrics/"):]: v for k, v in summary.items() if k.startswith("metrics/")} == pytest.approx(
            {k: v for k, v in r["metrics"].items() if v is not None})
        assert table(run, summary["acc_matrix"])["data"] == [[t + 1, *row] for t, row in enumerate(r["acc"])]
        assert table(run, summary["loss_matrix"])["data"] == [[t + 1, *row] for t, row in enumerate(r["loss"])]
        assert summary["time/total_s"] == pytest.approx(r["timings"]["total"])
        checks = table(run, summary["checks"])
        assert [row[checks["columns"].index("verdict")] for row in checks["data"]] == [
            c["verdict"] for c in r["checks"]["records"]]
        assert summary["checks/n_pairs"] == r["checks"]["certificate"]["n_pairs"] == 1


def test_per_class_scalars_reach_csv_and_tensorboard(experiment: SimpleNamespace) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r, run = per_run(experiment)[0]
    folder = Path("logs", r["setting"], r["label"], f"seed{r['seed']}")
    with open(experiment.out / str(folder).replace("logs", "logs/csv", 1) / "metrics.csv", newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row["tasks_trained"]]
    tb = EventAccumulator(str(experiment.out / str(folder).replace("logs", "logs/tensorboard", 1)),
                          size_guidance={"scalars": 0})
    tb.Reload()
    for t, row in enumerate(rows):
        want = class_acc(r["confusion"][t])
        assert {k: float(row[k]) for k in want} == pytest.approx(want)
        assert {k: tb.Scalars(k)[t].value for k in want} == pytest.approx(want, abs=1e-6)


def test_per_run_artifacts_hold_the_result_and_the_final_model(experiment: SimpleNamespace) -> None:
    import torch

    from cl_bench.config import RunSpec
    from cl_bench.runner import Evaluator, build_module, load_scenario

    for i, (r, run) in enumerate(per_run(experiment)):
        kinds = {a["type"]: a for a in run.artifacts}
        assert set(kinds) == {"run-result", "model"}
        (result,) = kinds["run-result"]["manifest"]["contents"]
        assert json.loads(Path(result["local_path"]).read_text()) == r
        if i:
            continue  # one model reloaded and evaluated is enough
        (model,) = kinds["model"]["manifest"]["contents"]
        spec = RunSpec(**{k: r["config"][k] for k in RunSpec.__dataclass_fields__})
        scenario = load_scenario(spec)
        module = build_module(spec, scenario)
        module.load_state_dict(torch.load(model["local_path"], weights_only=True))
        trainer = r["config"]["trainer"]
        assert Evaluator(scenario, "cpu", trainer["eval_batch_size"], 0)(module).acc == r["acc"][-1]


def test_confusion_switch_with_and_without_loggers(tmp_path: Path) -> None:
    from cl_bench.config import build_plan, load_config
    from cl_bench.loggers import logger_config
    from cl_bench.runner import execute

    tiny = [*EXPERIMENT[1:6], "strategy=naive", "settings=[class_il]", "seeds=[0]", "checks.enabled=false"]
    (default,) = execute(build_plan(load_config([*tiny, f"output.dir={tmp_path / 'a'}"])))
    assert np.asarray(default.confusion).shape == (2, 2, 10, 10)  # no logger attached: logger.confusion=null
    (off,) = execute(build_plan(load_config([*tiny, f"output.dir={tmp_path / 'b'}", "logger.confusion=false"])))
    assert off.confusion == [] and off.acc == default.acc
    assert json.loads((tmp_path / "b" / "runs" / "class_il" / "naive" / "seed0.json").read_text())["confusion"] == []
    cfg = logger_config(None)
    assert cfg.records_confusion(20) and not cfg.records_confusion(21)  # null: on up to 20 classes
    assert logger_config({"confusion": True}).records_confusion(100)


# ------------------------------------------------------------------ kill -9 and resume
@pytest.mark.filterwarnings("ignore:Experiment logs directory")  # the resumed run re-opens its CSV folder
def test_kill_9_then_rerun_continues_the_wandb_run_with_every_row_once(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`cl-bench run` in a subprocess, SIGKILLed by PID once its first checkpoint exists (task 1 is then
    training), re-run to the end: the W&B run id continues, and the resumed run's offline folder holds every
    row of results.json and every training-loss row of the finished tasks exactly once. W&B's service
    exits at once when its parent is killed, so the killed folder keeps little or nothing: hence the replay."""
    import os
    import signal
    import time

    wandb_env(monkeypatch, tmp_path)
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # each process its own W&B service, as from a shell
    cmd = [str(Path(sys.executable).parent / "cl-bench"), "run", "name=cut", "scenario.n_tasks=3",
           "trainer.epochs=2", "trainer.batch_size=8", "trainer.train_loss_probe=50", "trainer.num_threads=1",
           "strategy=naive", "settings=[class_il]", "seeds=[0]", "checks.enabled=false",
           f"output.dir={tmp_path}", "logger.use=[wandb,csv]", "output.checkpoint_every_s=0"]
    ckpt = tmp_path / "checkpoints" / "class_il" / "naive" / "seed0.pt"
    journal = tmp_path / "logs" / "wandb" / "class_il" / "naive" / "seed0.rows.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ckpt.exists(), proc.stderr.read() if proc.stderr else "no checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    assert not (tmp_path / "results.json").exists() and journal.is_file()
    (killed,) = (tmp_path / "wandb").glob("offline-run-*")
    killed_rows = [json.loads(line) for line in journal.read_text().splitlines()]
    task0_steps = next(row["step"] for row in killed_rows if "tasks_trained" in row["metrics"])

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not journal.exists()  # a finished run needs no replay
    r = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    (resumed,) = runs_by_name(tmp_path)["class_il/naive/seed0"]
    assert resumed.dir != killed and resumed.dir.name.endswith(killed.name.rsplit("-", 1)[1])
    assert resumed.run.get("resume") is True  # the same W&B run id, continued
    evals = [h for h in resumed.history if "tasks_trained" in h]
    assert [h["tasks_trained"] for h in evals] == [1, 2, 3]  # every row of results.json once, in order
    for t, h in enumerate(evals):
        assert [h[f"eval/acc_task{j}"] for j in range(3)] == r["acc"][t]
        assert [h[f"eval/loss_task{j}"] for j in range(3)] == pytest.approx(r["loss"][t])
        assert {k: v for k, v in h.items() if k.startswith("eval/acc_class")} == pytest.approx(
            class_acc(r["confusion"][t]))
        dense = np.zeros((3, 10, 10), dtype=int)
        for _, j, y, p, n in table(resumed, nested(h, "eval/confusion"))["data"]:
            dense[j, y, p] = n
        assert dense.tolist() == r["confusion"][t]
    assert evals[0]["trainer/global_step"] == task0_steps
    # training losses: task 0's rows (replayed from before the kill) and the re-trained tasks', each step once
    train = [(h["trainer/global_step"], k) for h in resumed.history for k in h if k.startswith("train/loss_task")]
    steps = [step for step, _ in train]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert [st for st, k in train if k == "train/loss_task0"] == [
        row["step"] for row in killed_rows if "train/loss_task0" in row["metrics"]]
    assert {k for _, k in train} == {"train/loss_task0", "train/loss_task1", "train/loss_task2"}
    assert resumed.summary["summary"]["metrics/acc"] == pytest.approx(r["metrics"]["acc"])
    assert resumed.summary["state"] == "finished"


def test_under_a_wandb_agent_the_summary_waits_for_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent's assignment is one run (the agent's W&B run id); the summary run comes from
    `cl-bench report --wandb` and never takes the agent's id."""
    wandb_env(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun7")
    tiny = [*EXPERIMENT[:6], "strategy=naive", "seeds=[0]", "settings=[class_il]", "checks.enabled=false"]
    assert main(["run", *tiny, f"output.dir={tmp_path}", "logger.use=[wandb]"]) == 0
    assert list(runs_by_name(tmp_path)) == ["class_il/naive/seed0"]
    assert runs_by_name(tmp_path)["class_il/naive/seed0"][0].run["run_id"] == "agentrun7"
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # a fresh process, as from the agent's shell
    report = subprocess.run([str(Path(sys.executable).parent / "cl-bench"), "report", str(tmp_path), "--out",
                             str(tmp_path / "report"), "--wandb"], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    (summary,) = runs_by_name(tmp_path)["dash/summary"]
    assert summary.run["run_id"] != "agentrun7" and summary.run["job_type"] == "summary"


def test_every_loss_term_and_the_projected_share_reach_the_loggers(tmp_path: Path) -> None:
    """CSV rows (the same scalars as W&B): per logged step, the total loss is the sum of the strategy's terms
    (EWC+ER: the task loss over [x; replay draw] plus the penalty; DER: the task loss plus the logit replay);
    OGD's removed gradient share lies in (0, 1] once it has a basis."""
    out = tmp_path / "terms"
    assert main(["run", "scenario.n_tasks=2", "trainer.epochs=1", "trainer.batch_size=8", "trainer.num_threads=1",
                 "strategy=[ewc+er,der,ogd]", "settings=[class_il]", "seeds=[0]", "sweep.workers=1",
                 "checks.enabled=false", "logger.use=[csv]", "logger.log_every_n_steps=5",
                 f"output.dir={out}"]) == 0
    def rows(label: str) -> list[dict[str, float]]:
        (path,) = (out / "logs" / "csv" / "class_il" / label / "seed0").rglob("metrics.csv")
        with open(path, newline="") as fh:
            return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]

    for label, terms in (("ewc+er", ("task_loss", "penalty")), ("der", ("task_loss", "replay_loss"))):
        logged = [r for r in rows(label) if "train/loss_task1" in r]
        assert len(logged) >= 3
        for r in logged:
            assert set(k for k in r if k.startswith("train/") and k.endswith("_task1")) == {
                "train/loss_task1", *(f"train/{t}_task1" for t in terms)}
            total = sum(r[f"train/{t}_task1"] for t in terms)
            assert r["train/loss_task1"] == pytest.approx(total, rel=1e-5)
            assert r[f"train/{terms[1]}_task1"] > 0
    ogd = rows("ogd")
    assert not any("train/projection_removed_task0" in r for r in ogd)  # no basis during task 0
    removed = [r["train/projection_removed_task1"] for r in ogd if "train/projection_removed_task1" in r]
    assert removed and all(0 < v <= 1 for v in removed)


def test_the_wandb_history_holds_each_term_summing_to_the_loss(experiment: SimpleNamespace) -> None:
    (run,) = experiment.runs["class_il/ewc/seed0"]
    rows = [r for r in run.history if "train/loss_task1" in r]
    assert rows
    for r in rows:
        assert r["train/loss_task1"] == pytest.approx(r["train/task_loss_task1"] + r["train/penalty_task1"], rel=1e-5)
    (naive,) = experiment.runs["class_il/naive/seed0"]
    assert not any("train/penalty_task1" in r for r in naive.history)  # naive has no penalty term
