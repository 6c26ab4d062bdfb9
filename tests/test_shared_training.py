"""One training per distinct training: class-IL and task-IL runs with unmasked training train once."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import Tensor

from cl_bench.config import build_plan, load_config
from cl_bench.module import ContinualModule, SettingReadInSharedTraining, Step
from cl_bench.registry import _REGISTRY, register, strategy_names
from cl_bench.runner import checkpoint_path, execute, load_scenario, result_path, run_one

FAST = ["output.checkpoint_every_s=0",  # a checkpoint after every task
        "scenario.n_tasks=3", "trainer.epochs=1", "trainer.train_loss_probe=100", "settings=[class_il,task_il]",
        "sweep.workers=1", "trainer.num_threads=1"]


class Interrupt(Exception):
    """Stands for a kill after a task."""


def plan_for(out: Path, *overrides: str):
    return build_plan(load_config([*FAST, f"output.dir={out}", *overrides]))


def checked(result) -> list:
    return [(r["id"], r["o"], r["t"], r["verdict"], r["values"]) for r in result.checks.get("records", [])]


def same(a, b) -> bool:
    return (a.acc, a.loss, a.train_loss, a.acc_init, a.metrics, checked(a)) == \
        (b.acc, b.loss, b.train_loss, b.acc_init, b.metrics, checked(b))


def test_shared_training_gives_each_setting_its_separate_result(tmp_path: Path) -> None:
    """Checks on: the evaluation, the checks and the C5 leakage callback of each setting see one training."""
    plan = plan_for(tmp_path, "strategy=[naive,er,packnet,hat,ogd]", "checks.probe_size=200",
                    "checks.which=[C0,C1,C2,C5]")
    modules: dict[str, ContinualModule] = {}
    grouped = {r.run_id: r for r in execute(plan, on_task_end=lambda s, t, m: modules.setdefault(s.run_id, m))}
    for spec in plan.runs:
        alone = run_one(spec, load_scenario(spec))
        assert same(grouped[spec.run_id], alone), spec.run_id
        assert alone.shared_training == []
        assert result_path(plan.output_dir, spec).exists()
    for label in ("naive", "er", "packnet"):  # unmasked training: one module served both settings
        ci, ti = f"class_il/{label}/seed0", f"task_il/{label}/seed0"
        assert modules[ci] is modules[ti]
        assert grouped[ci].shared_training == [ti] and grouped[ti].shared_training == [ci]
        assert grouped[ci].acc != grouped[ti].acc  # evaluated differently
    for label in ("hat", "ogd"):  # HAT masks task-IL training; OGD stores the setting's output gradients
        assert modules[f"class_il/{label}/seed0"] is not modules[f"task_il/{label}/seed0"]
        assert grouped[f"task_il/{label}/seed0"].shared_training == []


def test_masked_training_trains_task_il_separately(tmp_path: Path) -> None:
    results = list(execute(plan_for(tmp_path, "strategy=naive", "trainer.mask_train_logits=true",
                                    "checks.enabled=false")))
    assert [r.shared_training for r in results] == [[], []]


def test_runs_differing_only_in_evaluation_share_and_others_do_not(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text("strategy: [naive, wide_eval, slower]\nstrategies:\n"
                   "  wide_eval: {class: naive, trainer: {eval_batch_size: 7}}\n"
                   "  slower: {class: naive, optimizer: {lr: 0.01}}\n")
    plan = build_plan(load_config([*FAST, "settings=[class_il]", "checks.enabled=false",
                                   f"output.dir={tmp_path / 'out'}"], str(exp)))
    results = {r.label: r for r in execute(plan)}
    assert results["naive"].shared_training == ["class_il/wide_eval/seed0"]
    assert results["slower"].shared_training == []
    assert results["wide_eval"].acc == results["naive"].acc


def test_interrupted_group_resumes_to_the_uninterrupted_results(tmp_path: Path) -> None:
    """Killed after task 1; the task-IL checkpoint is then lost: task-IL retrains from scratch while
    class-IL, ahead, only records its missing row, and both equal the uninterrupted runs."""
    reference = {r.run_id: r for r in execute(plan_for(tmp_path / "ref", "strategy=er", "checks.enabled=false"))}
    plan = plan_for(tmp_path / "cut", "strategy=er", "checks.enabled=false")

    def kill_after_task_1(spec, task_id, module) -> None:
        if task_id == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        list(execute(plan, on_task_end=kill_after_task_1))
    ci, ti = plan.runs
    assert checkpoint_path(plan.output_dir, ci).exists() and checkpoint_path(plan.output_dir, ti).exists()
    checkpoint_path(plan.output_dir, ti).unlink()
    trained: list[tuple[str, int]] = []
    resumed = {r.run_id: r for r in execute(plan, on_task_end=lambda s, t, m: trained.append((s.setting, t)))}
    assert [t for s, t in trained if s == "task_il"] == [0, 1, 2]
    for run_id, ref in reference.items():
        assert same(resumed[run_id], ref), run_id
    assert not list((plan.output_dir / "checkpoints").rglob("*.pt"))


class ReadsSetting(ContinualModule):
    """Weighs its loss by the setting: a training that depends on it, not declared."""

    def task_loss(self, step: Step) -> Tensor:
        return super().task_loss(step) * (2.0 if self.setting == "task_il" else 1.0)


def test_undeclared_setting_read_in_shared_training_is_one_clear_error(tmp_path: Path) -> None:
    strategy_names()  # the built-in strategies are loaded before the registry is saved
    saved = dict(_REGISTRY)
    try:
        register("test_reads_setting")(ReadsSetting)
        with pytest.raises(SettingReadInSharedTraining, match="setting_in_training = True"):
            list(execute(plan_for(tmp_path, "strategy=test_reads_setting", "checks.enabled=false")))
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)
