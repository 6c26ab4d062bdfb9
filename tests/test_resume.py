"""Interrupted sweeps resume to the same result; finished runs are never re-trained."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cl_bench.config import build_plan, load_config
from cl_bench.runner import checkpoint_path, execute, result_path

FAST = ["output.checkpoint_every_s=0",  # a checkpoint after every task
        "scenario.n_tasks=3", "trainer.epochs=1", "trainer.train_loss_probe=100", "settings=[class_il]",
        "checks.enabled=false"]


class Interrupt(Exception):
    """Stands for a kill after task k."""


def plan_for(out: Path, *overrides: str):
    return build_plan(load_config([*FAST, f"output.dir={out}", *overrides]))


@pytest.mark.parametrize("strategy", ["naive"])
def test_resume_after_interrupt_equals_uninterrupted(tmp_path: Path, strategy: str) -> None:
    (reference,) = execute(plan_for(tmp_path / "ref", f"strategy={strategy}"))

    plan = plan_for(tmp_path / "cut", f"strategy={strategy}")

    def kill_after_task_1(spec, task_id, module) -> None:
        if task_id == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        list(execute(plan, on_task_end=kill_after_task_1))
    spec = plan.runs[0]
    assert checkpoint_path(plan.output_dir, spec).exists()
    assert not result_path(plan.output_dir, spec).exists()  # nothing half-written
    assert not list(plan.output_dir.rglob("*.tmp"))

    trained: list[int] = []
    (resumed,) = execute(plan, on_task_end=lambda s, t, m: trained.append(t))
    assert trained == [2]  # only the task after the checkpoint is trained again
    assert resumed.acc == reference.acc and resumed.loss == reference.loss
    assert resumed.train_loss == reference.train_loss and resumed.metrics == reference.metrics
    assert not checkpoint_path(plan.output_dir, spec).exists()


def test_a_run_checkpoints_once_enough_of_its_work_is_unsaved(tmp_path: Path) -> None:
    """``output.checkpoint_every_s``: within the interval no checkpoint is written (the rerun trains every
    task again); once the interval has passed since the run opened, the next task end writes one."""
    (reference,) = execute(plan_for(tmp_path / "ref", "strategy=naive"))

    def kill_after_task_1(spec, task_id, module) -> None:
        if task_id == 1:
            raise Interrupt

    plan = plan_for(tmp_path / "long", "strategy=naive", "output.checkpoint_every_s=3600")
    with pytest.raises(Interrupt):
        list(execute(plan, on_task_end=kill_after_task_1))
    assert not checkpoint_path(plan.output_dir, plan.runs[0]).exists()
    trained: list[int] = []
    (again,) = execute(plan, on_task_end=lambda s, t, m: trained.append(t))
    assert trained == [0, 1, 2] and again.acc == reference.acc and again.loss == reference.loss

    def wait_then_kill(spec, task_id, module) -> None:
        if task_id == 0:
            time.sleep(0.6)  # the work of task 0 is now older than the interval
        kill_after_task_1(spec, task_id, module)

    plan = plan_for(tmp_path / "short", "strategy=naive", "output.checkpoint_every_s=0.5")
    with pytest.raises(Interrupt):
        list(execute(plan, on_task_end=wait_then_kill))
    assert checkpoint_path(plan.output_dir, plan.runs[0]).exists()
    trained.clear()
    (resumed,) = execute(plan, on_task_end=lambda s, t, m: trained.append(t))
    assert trained == [2] and resumed.acc == reference.acc and resumed.loss == reference.loss


def test_resume_restores_the_geometry_snapshots(tmp_path: Path) -> None:
    """With checks on, the resumed run checks past tasks against the snapshots taken before the cut."""
    on = ["checks.enabled=true", "checks.which=[C0,C1,C2,C3,C4,C5]", "checks.probe_size=200", "strategy=naive"]
    (reference,) = execute(plan_for(tmp_path / "ref", *on))
    plan = plan_for(tmp_path / "cut", *on)

    def kill(spec, task_id, module) -> None:
        if task_id == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        list(execute(plan, on_task_end=kill))
    (resumed,) = execute(plan)

    def numbers(result) -> list:
        return [(r["id"], r["o"], r["t"], r["verdict"], r["values"]) for r in result.checks["records"]]

    assert numbers(resumed) == numbers(reference) and len(numbers(reference)) > 0
    assert {(r["o"], r["t"]) for r in reference.checks["records"] if r["id"] == "C2"} == {(0, 1), (0, 2), (1, 2)}


def test_sweep_skips_finished_runs_and_pool_matches_sequential(tmp_path: Path) -> None:
    seq = {r.run_id: r.acc for r in execute(plan_for(tmp_path / "seq", "strategy=naive", "seeds=[0,1]"))}
    plan = plan_for(tmp_path / "pool", "strategy=naive", "seeds=[0,1]", "sweep.workers=2")
    pooled = {r.run_id: r.acc for r in execute(plan, workers=plan.workers)}
    assert pooled == seq
    mtimes = {p: p.stat().st_mtime_ns for p in plan.output_dir.rglob("seed*.json")}
    trained: list[str] = []
    again = list(execute(plan, on_task_end=lambda s, t, m: trained.append(s.run_id)))
    assert trained == [] and {r.run_id: r.acc for r in again} == seq
    assert {p: p.stat().st_mtime_ns for p in plan.output_dir.rglob("seed*.json")} == mtimes
