"""Naive rehearsal: each task's training set is its data plus k_t copies of a memory of earlier tasks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cl_bench.config import ConfigError, build_plan, load_config
from cl_bench.data import build_scenario
from cl_bench.runner import build_module, execute

DIGITS = {"kind": "split", "source": "digits", "setting": "class_il", "n_tasks": 3, "classes_per_task": 2}


def schedule(memory: int, ratio: float | None):
    plan = build_plan(load_config(["strategy=rehearsal", "settings=[class_il]", "scenario.n_tasks=3",
                                   f"strategies.rehearsal.memory={memory}",
                                   f"strategies.rehearsal.ratio={'null' if ratio is None else ratio}"]))
    scenario = build_scenario(plan.runs[0].scenario)
    torch.manual_seed(0)
    return scenario, build_module(plan.runs[0], scenario).training_tasks(scenario)


def rows_of(x: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """For every image of ``x`` its index in ``pool`` (each must be there)."""
    eq = (x.flatten(1)[:, None, :] == pool.flatten(1)[None, :, :]).all(2)
    assert eq.any(1).all()
    return eq.float().argmax(1)


@pytest.mark.parametrize("ratio", [1.0, None])
def test_each_task_trains_on_its_data_and_copies_of_an_equal_share_memory(ratio: float | None) -> None:
    memory = 40
    scenario, tasks = schedule(memory, ratio)
    n = [t.n_train for t in scenario.tasks]
    assert torch.equal(tasks[0][0].x_train, scenario.tasks[0].x_train) and torch.equal(tasks[0][1], torch.zeros(n[0]))
    shares = {}
    for i in (1, 2):
        task, ids = tasks[i]
        m = min(n[0], memory // i)
        copies = max(1, math.floor(ratio * n[i] / memory)) if ratio is not None else 1
        assert task.n_train == n[i] + copies * i * m
        assert torch.equal(task.x_train[:n[i]], scenario.tasks[i].x_train) and (ids[:n[i]] == i).all()
        old = task.x_train[n[i]:].view(copies, i * m, *task.x_train.shape[1:])
        assert all(torch.equal(old[c], old[0]) for c in range(copies))  # k_t identical copies
        for j in range(i):  # each old task's share, with its own labels and task id
            rows = old[0][j * m:(j + 1) * m]
            idx = rows_of(rows, scenario.tasks[j].x_train)
            assert idx.unique().numel() == m
            assert torch.equal(task.y_train[n[i] + j * m:n[i] + (j + 1) * m], scenario.tasks[j].y_train[idx])
            assert (ids[n[i] + j * m:n[i] + (j + 1) * m] == j).all()
            shares.setdefault(j, []).append(idx)
    assert torch.equal(shares[0][1], shares[0][0][:len(shares[0][1])])  # a shrinking share keeps a prefix
    if ratio is not None:
        assert max(1, math.floor(ratio * n[1] / memory)) > 1  # the ratio rule did repeat the memory


def test_rehearsal_remembers_what_fine_tuning_forgets(tmp_path: Path) -> None:
    plan = build_plan(load_config(["strategy=[naive,rehearsal]", "settings=[class_il]", "scenario.n_tasks=3",
                                   "trainer.epochs=3", "checks.enabled=false", "sweep.workers=1",
                                   "strategies.rehearsal.memory=100", f"output.dir={tmp_path}"]))
    final = {r.label: r.acc[-1] for r in execute(plan)}
    assert final["naive"][0] < 0.1  # class-IL fine-tuning: task 0 is overwritten
    assert final["rehearsal"][0] > 0.6 and final["rehearsal"][1] > 0.6


@pytest.mark.parametrize(("override", "match"), [
    ("strategies.rehearsal.memory=0", r"strategies\.rehearsal: memory must be >= 1"),
    ("strategies.rehearsal.ratio=-1.0", r"strategies\.rehearsal: ratio must be > 0"),
])
def test_bad_rehearsal_parameters_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_plan(load_config(["strategy=rehearsal", override]))


def test_checks_probe_each_task_on_its_own_data_not_the_mixed_schedule(tmp_path: Path) -> None:
    """Task 1 trains on its data plus task 0's memory; its task-IL snapshot is still of task 1 alone."""
    plan = build_plan(load_config(["strategy=rehearsal", "settings=[task_il]", "scenario.n_tasks=2",
                                   "trainer.epochs=1", "sweep.workers=1", "strategies.rehearsal.memory=50",
                                   f"output.dir={tmp_path}"]))
    (result,) = execute(plan)
    assert result.status == "ok", result.error
    assert result.checks["certificate"]["n_pairs"] == 1  # (o=0, t=1), checked against task 0's snapshot
