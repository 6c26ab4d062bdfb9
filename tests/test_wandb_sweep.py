"""Sweep axes, grid expansion into strategy labels, the W&B sweep spec and the command `wandb agent` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from cl_bench.cli import main
from cl_bench.config import ConfigError, build_plan, load_config
from cl_bench.results import load_result
from cl_bench.runner import result_path
from cl_bench.wandb_sweep import (
    agent_command,
    apply_grid,
    assignments,
    check_agent_plan,
    expand_grid,
    sweep_axes,
    write_wandb_sweep,
)

BASE = ["scenario.n_tasks=2", "trainer.epochs=1", "trainer.train_loss_probe=50", "settings=[class_il,task_il]"]
GRID = [*BASE, "strategy=[naive,ewc,packnet]", "strategies.ewc.lam=[1,10]", "optimizer.lr=[0.01,0.1]",
        "strategies.packnet.prune_ratios=[0.5,0.4]", "trainer.devices=[0]", "seeds=[0,1]"]


def _runs(overrides: list[str], config_file: str | None = None) -> list[Any]:
    return build_plan(load_config(overrides, config_file)).runs


def test_lists_where_scalars_are_expected_are_the_axes() -> None:
    cfg = load_config(GRID)
    # prune_ratios is list-typed and trainer.devices is Any: values, not axes; seeds/settings are the plan's own
    assert sweep_axes(cfg) == {"optimizer.lr": [0.01, 0.1], "strategies.ewc.lam": [1, 10]}
    assert expand_grid(cfg) == [
        {"optimizer.lr": lr, "strategies.ewc.lam": lam} for lr in (0.01, 0.1) for lam in (1, 10)
    ]
    assert expand_grid(load_config(BASE)) == [{}] and sweep_axes(load_config(BASE)) == {}
    per_label = sweep_axes(load_config([*BASE, "strategy=er", "strategies.er.optimizer.lr=[0.1,0.2]",
                                        "strategies.er.trainer.batch_size=[10,32]", "strategies.er.buffer_size=[50]"]))
    assert per_label == {"strategies.er.buffer_size": [50], "strategies.er.optimizer.lr": [0.1, 0.2],
                         "strategies.er.trainer.batch_size": [10, 32]}


def test_apply_grid_makes_one_label_per_grid_point_equal_to_the_scalar_config() -> None:
    cfg = load_config(GRID)
    folded = apply_grid(cfg)
    assert list(folded.strategy) == [
        "naive@optimizer.lr=0.01", "naive@optimizer.lr=0.1",
        "ewc@optimizer.lr=0.01,lam=1", "ewc@optimizer.lr=0.01,lam=10",
        "ewc@optimizer.lr=0.1,lam=1", "ewc@optimizer.lr=0.1,lam=10",
        "packnet@optimizer.lr=0.01", "packnet@optimizer.lr=0.1",
    ]
    runs = build_plan(folded).runs
    assert len(runs) == 8 * 2 * 2  # labels x settings x seeds
    # every grid point trains exactly what the same config with scalars would
    for point in expand_grid(cfg):
        for strategy in ("naive", "ewc", "packnet"):
            scalars = [f"{k}={v}" for k, v in point.items() if not k.startswith("strategies.") or strategy in k]
            (direct, *_) = _runs([*GRID[:-1], "seeds=[0]", f"strategy={strategy}", *scalars, "settings=[task_il]"])
            label = f"{strategy}@" + ",".join(s.replace("strategies.ewc.", "") for s in scalars)
            (grid,) = [r for r in runs if r.label == label and r.setting == "task_il" and r.seed == 0]
            assert grid.strategy_class == strategy
            for part in ("params", "optimizer", "trainer", "model", "scenario", "checks"):
                assert getattr(grid, part) == getattr(direct, part), (label, part)
    assert runs[0].params == {}
    assert [r for r in runs if r.strategy_class == "packnet"][0].params["prune_ratios"] == [0.5, 0.4]
    assert list(apply_grid(load_config([*BASE, "strategy=naive"])).strategy) == ["naive"]  # no axes: unchanged


def test_bad_axes_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match=r"both optimizer.lr and strategies.ewc.optimizer.lr are sweep axes"):
        apply_grid(load_config([*BASE, "strategy=ewc", "optimizer.lr=[0.1,0.2]", "strategies.ewc.optimizer.lr=[0.3]"]))
    with pytest.raises(ConfigError, match=r"strategies.ewc.lam: an empty list is no sweep axis"):
        sweep_axes(load_config([*BASE, "strategy=ewc", "strategies.ewc.lam=[]"]))
    with pytest.raises(ConfigError, match=r"strategies.ewc.lam: repeated sweep values"):
        sweep_axes(load_config([*BASE, "strategy=ewc", "strategies.ewc.lam=[1,1]"]))
    with pytest.raises(ConfigError, match=r"sweep values must be scalars"):
        sweep_axes(load_config([*BASE, "strategy=ewc", "strategies.ewc.lam=[[1,2]]"]))
    with pytest.raises(ConfigError, match=r"cannot be a strategy label"):
        apply_grid(load_config([*BASE, "strategy=er", "strategies.er.policy=[a/b,reservoir]"]))
    with pytest.raises(ConfigError, match=r"strategies.x.class"):
        sweep_axes(load_config([*BASE, "strategy=x", "strategies.x.class=nope"]))


def _written(tmp_path: Path, *extra: str) -> tuple[dict[str, Any], Path, list[str]]:
    overrides = [*BASE, "strategy=[naive,ewc]", "strategies.ewc.lam=[1,10]", "seeds=[0,1]",
                 f"output.dir={tmp_path / 'out'}", "checks.enabled=false", "scenario.val_fraction=0.1", *extra]
    path = write_wandb_sweep(load_config(overrides), tmp_path / "sweep", mode="offline")
    return yaml.safe_load(path.read_text()), tmp_path / "sweep" / "experiment.yaml", overrides


def test_wandb_spec_is_a_grid_of_single_runs(tmp_path: Path) -> None:
    spec, experiment, overrides = _written(tmp_path, "logger.wandb.project=clb", "logger.wandb.entity=lab")
    assert spec["method"] == "grid" and spec["project"] == "clb" and spec["entity"] == "lab"
    assert spec["parameters"] == {
        "strategy": {"values": ["naive", "ewc@lam=1", "ewc@lam=10"]},
        "settings": {"values": ["class_il", "task_il"]},
        "seeds": {"values": [0, 1]},
    }
    assert spec["command"] == ["${env}", "cl-bench", "run", "--config", str(experiment), "${args_no_hyphens}"]
    written = OmegaConf.load(experiment)
    assert written.logger.use == ["wandb"] and written.logger.wandb.mode == "offline"
    # each assignment's command line composes exactly one run, the same as in the whole grid's plan
    plan_runs = {r.run_id: r for r in build_plan(apply_grid(load_config(overrides))).runs}
    todo = assignments(spec)
    assert len(todo) == len(plan_runs) == 12
    for assignment in todo:
        cmd = agent_command(spec, assignment)
        assert cmd[:5] == ["/usr/bin/env", "cl-bench", "run", "--config", str(experiment)]
        assert cmd[5:] == [f"strategy={assignment['strategy']}", f"settings={assignment['settings']}",
                           f"seeds={assignment['seeds']}"]
        (run,) = _runs(cmd[5:], cmd[4])
        assert run.config_hash() == plan_runs[run.run_id].config_hash()


def _fake_agent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spec: dict[str, Any]) -> Any:
    """W&B's real Agent, without a server: ``_command_run`` is what it calls for each assignment it receives."""
    from wandb.wandb_agent import Agent

    for var, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SWEEP_ID": "sweep0",
                       "WANDB_RUN_ID": "", "WANDB_SWEEP_PARAM_PATH": ""}.items():
        monkeypatch.setenv(var, value)  # restored afterwards (the agent sets the last two)
    agent = Agent(api=None, queue=None, sweep_id="sweep0")
    agent._sweep_command = spec["command"]
    return agent


def _assign(agent: Any, run_id: str, assignment: dict[str, Any]) -> Any:
    agent._command_run({"run_id": run_id, "program": "cl-bench",
                        "args": {k: {"value": v} for k, v in assignment.items()}})
    return agent._run_processes[run_id]


def test_the_wandb_agent_runs_the_command_we_document(tmp_path: Path, monkeypatch) -> None:
    spec, _, _ = _written(tmp_path)
    agent = _fake_agent(monkeypatch, tmp_path, spec)
    assignment = {"strategy": "ewc@lam=10", "settings": "task_il", "seeds": 1}
    proc = _assign(agent, "run0001", assignment)
    try:
        assert proc._popen.args == agent_command(spec, assignment)
        assert proc._popen.args[-3:] == ["strategy=ewc@lam=10", "settings=task_il", "seeds=1"]
    finally:
        proc.kill()
        proc.wait()
    params = yaml.safe_load((tmp_path / "wandb" / "sweep-sweep0" / "config-run0001.yaml").read_text())
    assert params["strategy"] == {"value": "ewc@lam=10"}  # what wandb.init in the run reads as its config


def test_an_assignment_run_again_reuses_its_result(tmp_path: Path, monkeypatch) -> None:
    spec, _, _ = _written(tmp_path)
    cmd = agent_command(spec, {"strategy": "ewc@lam=10", "settings": "class_il", "seeds": 0})
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    assert main(cmd[2:]) == 0  # `cl-bench run ...` in this process
    (spec_run,) = _runs(cmd[5:], cmd[4])
    path = result_path(tmp_path / "out", spec_run)
    first, content = load_result(path), path.read_bytes()
    assert first.label == "ewc@lam=10" and first.config["params"]["lam"] == 10.0
    assert main(cmd[2:]) == 0  # the agent re-running the assignment: nothing re-trained
    assert path.read_bytes() == content  # same timings (a re-training would differ), same matrices


@pytest.mark.slow  # two fresh `cl-bench` processes: ~30-70 s on a busy machine
def test_the_agent_launched_process_trains_and_a_second_agent_reuses(tmp_path: Path, monkeypatch) -> None:
    spec, _, overrides = _written(tmp_path)
    agent = _fake_agent(monkeypatch, tmp_path, spec)
    assignment = {"strategy": "naive", "settings": "class_il", "seeds": 1}
    assert _assign(agent, "run1", assignment).wait() == 0
    (run,) = _runs(agent_command(spec, assignment)[5:], str(tmp_path / "sweep" / "experiment.yaml"))
    path = result_path(tmp_path / "out", run)
    content = path.read_bytes()
    assert load_result(path).status == "ok"
    assert _assign(agent, "run2", assignment).wait() == 0
    assert path.read_bytes() == content  # reused, not re-trained


def test_under_an_agent_a_run_must_be_single(monkeypatch) -> None:
    plan = build_plan(load_config([*BASE, "strategy=naive", "seeds=[0,1]"]))
    check_agent_plan(plan)  # fine outside an agent
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
    with pytest.raises(ConfigError, match=r"single run, got 4"):
        check_agent_plan(plan)
    check_agent_plan(build_plan(load_config([*BASE, "strategy=naive", "settings=[class_il]"])))


def test_cli_sweep_writes_the_spec(tmp_path: Path, capsys) -> None:
    out = tmp_path / "spec"
    assert main(["sweep", "--wandb", "--out", str(out), *BASE, "strategy=[naive,ewc]",
                 "strategies.ewc.lam=[1,10]", "scenario.val_fraction=0.1"]) == 0
    assert yaml.safe_load((out / "sweep.yaml").read_text())["parameters"]["strategy"]["values"][1] == "ewc@lam=1"
    assert "wandb agent" in (out / "README.md").read_text()
    assert main(["sweep", *BASE, "strategy=ewc", "strategies.ewc.lam=[1,2,3]"]) == 0
    assert "ewc@lam=3" in capsys.readouterr().out
    assert main(["sweep", *BASE, "strategy=ewc", "strategies.ewc.lam=[]"]) == 2
