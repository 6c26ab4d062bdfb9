"""The compiled step (``trainer.compile``): the SGD update it fuses, its results against eager steps,
and the strategies it leaves eager, with the reason said."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cl_bench.compiled import AUTO_MIN_STEPS, CompiledStep, why_not_compiled
from cl_bench.config import ConfigError, TrainerConfig, build_plan, load_config
from cl_bench.module import Step
from cl_bench.runner import build_module, load_scenario, run_one, wants_compile

FAST = ["scenario.n_tasks=2", "trainer.epochs=1", "trainer.num_threads=1", "sweep.workers=1",
        "checks.enabled=false", "optimizer.momentum=0.9", "optimizer.weight_decay=0.001"]


def spec_for(tmp_path: Path, *overrides: str):
    return build_plan(load_config([*FAST, f"output.dir={tmp_path}", *overrides])).runs[0]


def test_a_compiled_step_is_torch_sgd_with_momentum_and_weight_decay(tmp_path: Path) -> None:
    """Three compiled steps against three torch.optim.SGD steps from the same weights (float32 rounding)."""
    spec = spec_for(tmp_path, "strategy=naive")
    scenario = load_scenario(spec)
    torch.manual_seed(0)
    eager, compiled = build_module(spec, scenario), build_module(spec, scenario)
    compiled.load_state_dict(eager.state_dict())
    task = scenario.tasks[0]
    x = task.x_train[:16].float() / 16  # Split-Digits pixels are 0..16
    y, t = task.y_train[:16], torch.zeros(16, dtype=torch.long)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.05, momentum=0.9, weight_decay=0.001)
    opt_c = torch.optim.SGD(compiled.parameters(), lr=0.05, momentum=0.9, weight_decay=0.001)
    step = CompiledStep(compiled, opt_c)
    for _ in range(3):
        opt_e.zero_grad()
        expected = F.cross_entropy(eager(x, t), y)
        expected.backward()
        opt_e.step()
        loss, terms, logits = step(Step(x, y, t))
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
        assert set(terms) == {"task_loss"} and logits is not None and logits.shape == (16, scenario.n_outputs)
    for pe, pc in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(pc, pe, rtol=1e-5, atol=1e-6)
    for pe, pc in zip(eager.parameters(), compiled.parameters()):  # the momentum lives in the torch optimiser
        torch.testing.assert_close(opt_c.state[pc]["momentum_buffer"], opt_e.state[pe]["momentum_buffer"],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_compiled_run_matches_the_eager_run_and_records_its_compile_time(tmp_path: Path) -> None:
    eager = run_one(spec_for(tmp_path / "e", "strategy=naive", "trainer.compile=false"),
                    load_scenario(spec_for(tmp_path / "e", "strategy=naive")))
    spec = spec_for(tmp_path / "c", "strategy=naive", "trainer.compile=true")
    compiled = run_one(spec, load_scenario(spec))
    assert compiled.status == "ok" and compiled.steps == eager.steps
    torch.testing.assert_close(torch.tensor(compiled.loss), torch.tensor(eager.loss), rtol=1e-4, atol=1e-5)
    diff = (torch.tensor(compiled.acc) - torch.tensor(eager.acc)).abs().max()
    assert float(diff) <= 1 / 70  # at most one test sample of a task (>= 70 of them) flips
    assert len(compiled.timings["compile"]) == 2 and compiled.timings["compile"][0] > 0  # one per task's fit
    assert "compile" not in eager.timings


@pytest.mark.slow
def test_a_strategy_that_cannot_be_compiled_trains_eagerly_and_says_why(tmp_path: Path, caplog) -> None:
    spec = spec_for(tmp_path / "c", "strategy=agem", "trainer.compile=true")
    with caplog.at_level(logging.WARNING, logger="cl_bench.module"):
        refused = run_one(spec, load_scenario(spec))
    said = [r.getMessage() for r in caplog.records if "trainer.compile" in r.getMessage()]
    assert said == ["trainer.compile: agem overrides transform_gradients (work outside its loss terms); "
                    "training eagerly"]
    spec_e = spec_for(tmp_path / "e", "strategy=agem", "trainer.compile=false")
    assert refused.acc == run_one(spec_e, load_scenario(spec_e)).acc
    module = build_module(spec, load_scenario(spec))
    assert "change shape" in str(why_not_compiled(build_module(spec_for(tmp_path, "strategy=er"),
                                                                 load_scenario(spec)),
                                                    torch.optim.SGD(module.parameters(), lr=0.1)))
    assert "SGD only" in str(why_not_compiled(build_module(spec_for(tmp_path, "strategy=naive"), load_scenario(spec)),
                                              torch.optim.Adam(module.parameters())))


@pytest.mark.slow
def test_terms_that_break_the_graph_fall_back_to_eager_steps_before_any_update(tmp_path: Path, caplog) -> None:
    """LwF branches on a tensor's value: tracing fails at the first step, which then runs eagerly."""
    spec = spec_for(tmp_path / "c", "strategy=lwf", "trainer.compile=true")
    with caplog.at_level(logging.WARNING, logger="cl_bench.module"):
        fallback = run_one(spec, load_scenario(spec))
    said = [r.getMessage() for r in caplog.records if "trainer.compile" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("trainer.compile: lwf's terms break the graph (")
    spec_e = spec_for(tmp_path / "e", "strategy=lwf", "trainer.compile=false")
    eager = run_one(spec_e, load_scenario(spec_e))
    assert (fallback.acc, fallback.loss) == (eager.acc, eager.loss)


def test_auto_compiles_only_runs_long_enough_to_repay_the_compile_time(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, "strategy=naive")
    schedule = build_module(spec, load_scenario(spec)).training_tasks(load_scenario(spec))
    per_epoch = sum(-(-task.n_train // 32) for task, _ in schedule)
    epochs_needed = -(-AUTO_MIN_STEPS // per_epoch)
    assert not wants_compile(TrainerConfig(epochs=epochs_needed - 1, compile="auto"), schedule)
    assert wants_compile(TrainerConfig(epochs=epochs_needed, compile="auto"), schedule)
    assert not wants_compile(TrainerConfig(epochs=epochs_needed, max_steps=1, compile="auto"), schedule)
    assert not wants_compile(TrainerConfig(epochs=epochs_needed), schedule)  # the default: eager
    assert wants_compile(TrainerConfig(compile=True), schedule) and not wants_compile(TrainerConfig(compile=False),
                                                                                       schedule)


def test_a_bad_compile_value_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="compile"):
        build_plan(load_config(["trainer.compile=sometimes"]))
