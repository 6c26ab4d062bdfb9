"""The isolation strategies through the real runner on the embedded digits: task-IL PackNet and HAT
forget exactly nothing (accuracy, test loss, training loss) with momentum and weight decay on, and the
guarantee checks confirm it (curvature energy 0, per-step leakage ~0); every strategy runs in
class-IL and reports its memory; an interrupted run resumes to the uninterrupted result."""

from __future__ import annotations

from pathlib import Path

import pytest

from cl_bench.config import build_plan, load_config
from cl_bench.runner import execute

FAST = ["output.checkpoint_every_s=0",  # a checkpoint after every task
        "scenario.n_tasks=3", "trainer.epochs=1", "trainer.train_loss_probe=100", "checks.enabled=false"]
SMALL = ["strategies.ogd.samples=50", "strategies.gpm.samples=100", "strategies.orthogonal_sgd.k=5",
         "strategies.orthogonal_sgd.samples=200", "strategies.orthogonal_sgd.lanczos_iters=30"]
ALL = "strategy=[packnet,hat,ogd,gpm,orthogonal_sgd]"


def plan_for(out: Path, *overrides: str):
    return build_plan(load_config([*FAST, *SMALL, f"output.dir={out}", *overrides]))


@pytest.mark.parametrize("strategy", ["packnet", "hat"])
def test_task_il_split_digits_forgets_exactly_nothing_and_the_checks_confirm_it(tmp_path: Path, strategy: str) -> None:
    (res,) = execute(plan_for(
        tmp_path, f"strategy={strategy}", "settings=[task_il]", "scenario.n_tasks=5", "trainer.epochs=3",
        "optimizer.momentum=0.9", "optimizer.weight_decay=0.001", "checks.enabled=true", "checks.which=[C3,C5]",
        "checks.k=5", "checks.probe_size=200", "checks.lipschitz.enabled=false",
    ))
    assert res.status == "ok"
    for t in range(5):
        for j in range(t + 1):  # bit-identical rows: accuracy, test loss and training loss of every past task
            assert res.acc[t][j] == res.acc[j][j]
            assert res.loss[t][j] == res.loss[j][j]
            assert res.train_loss[t][j] == res.train_loss[j][j]
    assert res.metrics["forgetting"] == 0.0 and res.metrics["loss_forgetting"] == 0.0
    assert res.metrics["learning_acc"] > 0.75
    records = res.checks["records"]
    c3 = [r["values"]["rho"] for r in records if r["id"] == "C3"]
    c5 = [r["values"]["mean"] for r in records if r["id"] == "C5"]
    assert len(c3) == len(c5) == 10  # every pair o < t
    assert max(abs(rho) for rho in c3) < 1e-9  # past Hessians see none of the coordinates that moved
    assert max(c5) < 1e-3  # steps into past top-k eigenvectors: Lanczos round-off only (random: ~3e-2)


def test_every_isolation_strategy_runs_in_class_il_and_reports_its_memory(tmp_path: Path) -> None:
    results = list(execute(plan_for(tmp_path, ALL, "settings=[class_il]")))
    by_name = {r.strategy: r for r in results}
    assert all(r.status == "ok" and r.family == "isolation" for r in results)
    assert all(r.acc[0][0] > 0.6 for r in results)  # (later class-IL tasks: the methods' known weakness)
    mem = {name: r.strategy_memory_bytes for name, r in by_name.items()}
    assert all(len(m) == 3 and m[0] > 0 for m in mem.values())
    assert mem["packnet"][0] == mem["packnet"][-1]  # int8 owners: constant in the number of tasks
    assert mem["hat"][0] == mem["hat"][-1]  # embeddings of every task exist from the start
    for name in ("ogd", "gpm", "orthogonal_sgd"):  # bases grow task by task
        assert mem[name][0] < mem[name][1] <= mem[name][2], name


class Interrupt(Exception):
    """Stands for a kill after task 1."""


@pytest.mark.parametrize("strategy", ["packnet", "hat", "ogd", "gpm", "orthogonal_sgd"])
def test_resume_after_interrupt_equals_uninterrupted(tmp_path: Path, strategy: str) -> None:
    overrides = (f"strategy={strategy}", "settings=[task_il]", "optimizer.momentum=0.9")
    (reference,) = execute(plan_for(tmp_path / "ref", *overrides))
    plan = plan_for(tmp_path / "cut", *overrides)

    def kill(spec, task_id, module) -> None:
        if task_id == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        list(execute(plan, on_task_end=kill))
    (resumed,) = execute(plan)  # a fresh module loads the checkpoint: grown bases are resized first
    assert resumed.acc == reference.acc and resumed.loss == reference.loss
    assert resumed.strategy_memory_bytes == reference.strategy_memory_bytes
