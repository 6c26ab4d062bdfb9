"""Chunked steps: one Lightning ``training_step`` runs ``trainer.steps_per_call`` optimiser steps, and
the result does not depend on how many."""

from __future__ import annotations

from pathlib import Path

import pytest

from cl_bench.config import ConfigError, TrainerConfig, build_plan, load_config
from cl_bench.data.batching import Chunks
from cl_bench.registry import _REGISTRY, register, strategy_names
from cl_bench.runner import load_scenario, run_one
from strategies.local import EWC

FAST = ["scenario.n_tasks=3", "trainer.epochs=2", "trainer.train_loss_probe=100", "trainer.num_threads=1",
        "sweep.workers=1", "checks.probe_size=100", "checks.which=[C0,C2,C5]"]


def result_with(tmp_path: Path, strategy: str, k: int, *extra: str):
    plan = build_plan(load_config([*FAST, f"strategy={strategy}", f"trainer.steps_per_call={k}",
                                   f"output.dir={tmp_path / str(k)}", *extra]))
    spec = plan.runs[0]
    return run_one(spec, load_scenario(spec))


def checked(result) -> list:
    return [(r["id"], r["o"], r["t"], r["verdict"], r["values"]) for r in result.checks.get("records", [])]


@pytest.mark.parametrize("strategy,extra", [
    ("naive", ()), ("er", ()), ("ewc", ()), ("si", ()), ("agem", ()), ("derpp", ()), ("gdumb", ()),
    ("ogd", ()), ("hat", ("settings=[task_il]",)), ("packnet", ("settings=[task_il]",)),
])
def test_results_are_bit_identical_for_one_and_for_sixteen_steps_per_call(tmp_path: Path, strategy: str,
                                                                         extra: tuple[str, ...]) -> None:
    """Same samples in the same order, same random draws: the matrices, the steps taken and the
    per-step leakage check (C5) agree exactly for K = 1, 16 and 5 (which divides no epoch)."""
    one = result_with(tmp_path, strategy, 1, *extra)
    for k in (16, 5):
        other = result_with(tmp_path, strategy, k, *extra)
        assert other.acc == one.acc and other.loss == one.loss and other.train_loss == one.train_loss
        assert other.steps == one.steps
        assert checked(other) == checked(one)


def test_max_steps_is_exact_inside_a_chunk(tmp_path: Path) -> None:
    """max_steps = 7 with 16 steps per call: each task stops after exactly 7 optimiser steps."""
    result = result_with(tmp_path, "er", 16, "trainer.max_steps=7", "checks.enabled=false")
    assert result.steps == [7, 7, 7]
    assert result.acc == result_with(tmp_path, "er", 1, "trainer.max_steps=7", "checks.enabled=false").acc


def test_chunks_group_in_order_and_keep_the_short_last_group() -> None:
    chunks = Chunks(list(range(10)), 4)
    assert len(chunks) == 3 and list(chunks) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_steps_per_call_auto_is_one_step_per_call_when_loggers_record_every_step() -> None:
    assert TrainerConfig().chunk_size() == 16
    assert TrainerConfig().chunk_size(logged=True) == 1
    assert TrainerConfig(steps_per_call=3).chunk_size(logged=True) == 3


@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5"])
def test_a_bad_steps_per_call_is_one_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="steps_per_call"):
        build_plan(load_config([f"trainer.steps_per_call={bad}"]))


class HookedEWC(EWC):
    """EWC with Lightning's backward hook overridden: its backward goes through Lightning's wrapper."""

    backwards = 0

    def on_after_backward(self) -> None:
        HookedEWC.backwards += 1


def test_a_backward_that_skips_lightning_wrapper_is_the_same_arithmetic(tmp_path: Path) -> None:
    """Without a backward-hook listener a step calls loss.backward() directly; with one (a module that
    overrides on_after_backward) it goes through Lightning, which calls the hook every step; same results."""
    strategy_names()
    saved = dict(_REGISTRY)
    try:
        register("test_hooked_ewc")(HookedEWC)
        direct = result_with(tmp_path / "direct", "ewc", 16, "checks.enabled=false")
        hooked = result_with(tmp_path / "hooked", "test_hooked_ewc", 16, "checks.enabled=false")
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)
    assert HookedEWC.backwards == sum(hooked.steps) > 0
    assert hooked.acc == direct.acc and hooked.loss == direct.loss and hooked.train_loss == direct.train_loss
