"""The task loop end to end on the embedded digits: matrices, determinism, NaN, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cl_bench.config import build_plan, load_config
from cl_bench.results import load_result
from cl_bench.runner import execute, result_path

FAST = ["scenario.n_tasks=3", "trainer.epochs=1", "trainer.train_loss_probe=100", "settings=[class_il]"]


def run(tmp_path: Path, *overrides: str):
    plan = build_plan(load_config([*FAST, f"output.dir={tmp_path}", *overrides]))
    return plan, list(execute(plan))


def test_matrices_have_a_row_per_task_and_the_untrained_row(tmp_path: Path) -> None:
    plan, (res,) = run(tmp_path, "strategy=naive")
    assert res.status == "ok"
    assert len(res.acc) == 3 and all(len(row) == 3 for row in res.acc)
    assert len(res.loss) == 3 and len(res.train_loss) == 3 and len(res.acc_init) == 3
    # fine-tuning on 2-class tasks learns the current task and forgets the previous ones in class-IL
    assert res.acc[0][0] > 0.9 and res.acc[2][2] > 0.9 and res.acc[2][0] < 0.2
    assert len(res.task_sizes["test"]) == 3 and min(res.task_sizes["test"]) > 50  # ~36 test digits per class
    assert res.metrics["acc"] == pytest.approx(sum(res.acc[-1]) / 3)
    stored = load_result(result_path(plan.output_dir, plan.runs[0]))
    assert stored.acc == res.acc and stored.config_hash == plan.runs[0].config_hash()
    assert set(res.versions) >= {"torch", "lightning", "python"} and res.device["device"] == "cpu"
    assert len(res.timings["fit"]) == 3 and res.peak_memory["cpu_max_rss_bytes"] > 0


def test_same_seed_gives_identical_matrices_and_other_seed_differs(tmp_path: Path) -> None:
    _, (a,) = run(tmp_path / "a", "strategy=naive", "seeds=[3]")
    _, (b,) = run(tmp_path / "b", "strategy=naive", "seeds=[3]")
    _, (c,) = run(tmp_path / "c", "strategy=naive", "seeds=[4]")
    assert a.acc == b.acc and a.loss == b.loss and a.train_loss == b.train_loss
    assert a.loss != c.loss


def test_joint_has_one_row_and_gives_intransigence(tmp_path: Path) -> None:
    from cl_bench.runner import add_intransigence

    _, results = run(tmp_path, "strategy=[naive,joint]", "trainer.epochs=5")
    naive, joint = results
    assert len(joint.acc) == 1 and joint.metrics["acc"] > 0.7 and joint.metrics["acc"] > naive.metrics["acc"] + 0.3
    assert naive.metrics["intransigence"] is None
    add_intransigence(results)
    expected = sum(joint.acc[0][j] - naive.acc[j][j] for j in range(3)) / 3
    assert naive.metrics["intransigence"] == pytest.approx(expected)


def test_nan_loss_stops_that_run_and_the_others_go_on(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text("strategy: [diverge, naive]\nstrategies:\n  diverge: {class: naive, optimizer: {lr: 1.0e+30}}\n")
    plan = build_plan(load_config([*FAST, f"output.dir={tmp_path / 'out'}"], str(exp)))
    diverged, ok = list(execute(plan))
    assert diverged.status == "failed" and "non-finite loss" in diverged.error
    assert "task 0" in diverged.error and "step" in diverged.error
    assert ok.status == "ok" and ok.metrics["acc"] > 0
    assert json.loads(result_path(plan.output_dir, plan.runs[0]).read_text())["status"] == "failed"


def test_finished_runs_are_reused_not_retrained(tmp_path: Path) -> None:
    plan, (first,) = run(tmp_path, "strategy=naive")
    path = result_path(plan.output_dir, plan.runs[0])
    mtime = path.stat().st_mtime_ns
    _, (again,) = run(tmp_path, "strategy=naive")
    assert path.stat().st_mtime_ns == mtime and again.timings == first.timings
    _, (changed,) = run(tmp_path, "strategy=naive", "optimizer.lr=0.01")  # new config -> new training
    assert changed.config_hash != first.config_hash and path.stat().st_mtime_ns != mtime


def test_missing_dataset_is_one_clear_error_before_training(tmp_path: Path, monkeypatch) -> None:
    from cl_bench.config import ConfigError
    from cl_bench.runner import prepare

    monkeypatch.delenv("CL_BENCH_DATA", raising=False)
    plan = build_plan(load_config(["scenario=split_cifar10", f"data.root={tmp_path / 'nowhere'}", "strategy=naive"]))
    with pytest.raises((ConfigError, FileNotFoundError)) as err:
        prepare(plan)
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "CL_BENCH_DATA" in msg
    assert not (tmp_path / "nowhere").exists() or not any((tmp_path / "nowhere").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CL_BENCH_DATA"), reason="needs CL_BENCH_DATA with MNIST")
def test_split_mnist_finetuning_and_joint_match_the_known_behaviour(tmp_path: Path) -> None:
    """`cl-bench run scenario=split_mnist strategy=[naive,joint]` with the defaults: fine-tuning forgets
    everything but the last task in class-IL (ACC ~ 0.2) and little in task-IL; joint training does not."""
    plan = build_plan(load_config(["scenario=split_mnist", "strategy=[naive,joint]", f"output.dir={tmp_path}"]))
    assert plan.runs[0].model["widths"] == [100, 100]  # the scenario's suggested (DER-paper) MLP
    acc = {(r.setting, r.label): r.metrics["acc"] for r in execute(plan)}
    assert 0.18 <= acc[("class_il", "naive")] <= 0.21
    assert acc[("task_il", "naive")] > 0.9
    assert acc[("class_il", "joint")] > 0.9


def test_gpu_accelerator_without_a_gpu_is_one_clear_error_before_training(tmp_path: Path) -> None:
    import torch

    from cl_bench.config import ConfigError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    plan = build_plan(load_config([*FAST, "strategy=[naive,ewc]", "trainer.accelerator=gpu",
                                   f"output.dir={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"trainer.accelerator=gpu but no CUDA device is visible"):
        list(execute(plan))
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.pt"))  # nothing trained or written


def test_the_device_is_the_trainers_root_device() -> None:
    from cl_bench.config import ConfigError, TrainerConfig
    from cl_bench.runner import resolve_device

    assert resolve_device(TrainerConfig()) == "cpu"
    with pytest.raises(ConfigError, match=r"trainer.devices=\[3\]"):  # an index the CPU accelerator cannot take
        resolve_device(TrainerConfig(accelerator="cpu", devices=[3]))
