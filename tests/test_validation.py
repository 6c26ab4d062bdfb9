"""Validation protocol: scenario.val_fraction gives per-task validation accuracy matrices; selection
(`cl-bench best`, W&B sweeps) uses validation metrics only and reports the selected label's test metrics."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from cl_bench.cli import main
from cl_bench.config import ConfigError, build_plan, load_config
from cl_bench.metrics import validation_metrics
from cl_bench.runner import load_scenario, run_one
from cl_bench.wandb_sweep import write_wandb_sweep

FAST = ["scenario.n_tasks=3", "trainer.epochs=1", "checks.enabled=false", "trainer.train_loss_probe=50",
        "scenario.val_fraction=0.2"]


def test_the_validation_matrix_is_each_tasks_held_out_accuracy() -> None:
    plan = build_plan(load_config([*FAST, "strategy=naive", "settings=[task_il]"]))
    spec = plan.runs[0]
    scenario = load_scenario(spec)
    assert all(t.x_val is not None and t.y_val is not None and len(t.y_val) > 0 for t in scenario.tasks)
    mean, std = torch.tensor(scenario.mean).view(1, -1, 1, 1), torch.tensor(scenario.std).view(1, -1, 1, 1)
    by_hand: list[list[float]] = []

    def score(s, task_id, module) -> None:  # task-IL: the argmax over the task's own classes
        module.select_setting("task_il")
        row = []
        for t in scenario.tasks:
            x = (t.x_val.float() / 255 - mean) / std
            logits = module.backbone(x, torch.full((len(x),), t.id))[:, t.classes]
            pred = torch.tensor(t.classes)[logits.argmax(1)]
            row.append(float((pred == t.y_val).double().mean()))
        by_hand.append(row)

    result = run_one(spec, scenario, on_task_end=score)
    assert len(result.val_acc) == 3 and all(len(r) == 3 for r in result.val_acc)
    for ours, theirs in zip(result.val_acc, by_hand):
        assert ours == pytest.approx(theirs, abs=1e-12)
    assert result.metrics["val/acc"] == pytest.approx(sum(by_hand[-1]) / 3)
    assert result.val_acc != result.acc  # other samples than the test sets


def test_validation_metrics_by_hand() -> None:
    V = [[0.9, 0.1, 0.0], [0.6, 0.8, 0.2], [0.5, 0.7, 0.9]]
    m = validation_metrics(V)
    assert m["val/acc"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert m["val/forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert validation_metrics([[0.4, 0.6]]) == {"val/acc": 0.5, "val/forgetting": None}


def test_best_selects_on_validation_and_prints_the_test_metrics(tmp_path, capsys) -> None:
    out = tmp_path / "grid"
    assert main(["run", *FAST, "strategy=ewc", "strategies.ewc.lam=[1,30]", "settings=[class_il]",
                 "sweep.workers=1", f"output.dir={out}"]) == 0
    capsys.readouterr()
    runs = json.loads((out / "results.json").read_text())
    val = {r["label"]: r["metrics"]["val/acc"] for r in runs["runs"]}
    assert len(val) == 2 and len(set(val.values())) == 2
    chosen = max(val, key=val.__getitem__)
    assert main(["best", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "selected on val/acc (validation splits; test metrics are reported, never used to select)" in printed
    assert f"selected: {chosen} (strategy ewc, params {{" in printed
    acc = runs["aggregate"][f"class_il/{chosen}"]["acc"]["mean"]
    assert f"test metrics: acc {acc:.3f}" in printed
    assert main(["best", str(out), "--metric", "acc"]) == 2
    assert "selection uses a validation metric only" in capsys.readouterr().err


def test_sweeps_optimise_the_validation_metric(tmp_path) -> None:
    base = [*FAST, "strategy=ewc", "strategies.ewc.lam=[1,10]", f"output.dir={tmp_path / 'o'}"]
    path = write_wandb_sweep(load_config(base), tmp_path / "sweep", mode="offline")
    assert yaml.safe_load(path.read_text())["metric"] == {"name": "metrics/val/acc", "goal": "maximize"}
    assert "never a test metric" in (tmp_path / "sweep" / "README.md").read_text()
    with pytest.raises(ConfigError, match="set scenario.val_fraction"):
        write_wandb_sweep(load_config([*base, "scenario.val_fraction=0"]), tmp_path / "s2", mode="offline")
