"""``scenario.seed: per_run``: each training seed trains on its own scenario draw, recorded in its result."""

from __future__ import annotations

import gc
import json
import warnings
import weakref
from pathlib import Path

import pytest

from cl_bench import runner
from cl_bench.cli import main
from cl_bench.config import ConfigError, RunSpec, ScenarioDrawWarning, build_plan, load_config
from cl_bench.data import Scenario
from cl_bench.data.scenarios import build_scenario
from cl_bench.report import write_report
from cl_bench.results import aggregate
from cl_bench.runner import execute

TINY = ["strategy=naive", "settings=[class_il]", "trainer.epochs=1", "checks.enabled=false", "sweep.workers=1",
        "scenario.n_tasks=2", "scenario.class_order=random"]


def test_per_run_gives_each_seed_its_own_draw_recorded_in_its_result(tmp_path: Path) -> None:
    cfg = load_config([*TINY, "seeds=[3,4]", "scenario.seed=per_run", f"output.dir={tmp_path}"])
    plan = build_plan(cfg)
    assert [s.scenario["seed"] for s in plan.runs] == [3, 4]
    results = sorted(execute(plan), key=lambda r: r.seed)
    assert [r.scenario_seed for r in results] == [3, 4]
    assert [r.config["scenario"]["seed"] for r in results] == [3, 4]
    for r in results:  # the classes each run trained on are the draw of its own seed
        drawn = build_scenario({**r.config["scenario"]})
        assert r.task_sizes["train"] == [t.n_train for t in drawn.tasks]
    orders = [build_scenario({**r.config["scenario"]}).task_classes() for r in results]
    assert orders[0] != orders[1]
    assert aggregate(results)["class_il/naive"]["acc"]["n"] == 2  # one aggregate over both draws


def test_fixed_seed_keeps_one_draw_for_every_training_seed() -> None:
    plan = build_plan(load_config([*TINY, "seeds=[3,4]", "scenario.seed=5"]))
    assert [s.scenario["seed"] for s in plan.runs] == [5, 5]


@pytest.mark.parametrize("kind", ["permuted", "rotated"])
def test_several_seeds_on_one_draw_of_a_redrawn_kind_warn(kind: str) -> None:
    base = ["strategy=naive", "settings=[domain_il]", f"scenario={kind}_mnist", "seeds=[0,1]"]
    with pytest.warns(ScenarioDrawWarning, match=r"scenario\.seed=0: all 2 seeds train on one draw.*per_run"):
        build_plan(load_config(base))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScenarioDrawWarning)
        build_plan(load_config([*base, "scenario.seed=per_run"]))
        build_plan(load_config([*base[:-1], "seeds=[0]"]))  # one seed: nothing to spread over
        build_plan(load_config(TINY + ["seeds=[0,1]"]))  # split draws no transform


def test_a_misspelt_per_run_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"scenario\.seed: must be an integer >= 0 or per_run"):
        build_plan(load_config([*TINY, "scenario.seed=perrun"]))


@pytest.mark.parametrize(("draw", "scenario_seeds", "said"), [
    ("per_run", [3, 4], "Scenario draws of naive: per-run draws: seeds [3, 4], scenario seeds [3, 4]."),
    ("5", [5, 5], "Scenario draws of naive: one fixed draw (scenario seed 5) for seeds [3, 4]."),
])
def test_results_and_report_name_the_draws_of_each_aggregate(tmp_path: Path, draw: str, scenario_seeds: list[int],
                                                              said: str) -> None:
    out = tmp_path / "results"
    assert main(["run", *TINY, "seeds=[3,4]", f"scenario.seed={draw}", f"output.dir={out}"]) == 0
    stored = json.loads((out / "results.json").read_text())
    assert stored["draws"] == {"class_il/naive": {"seeds": [3, 4], "scenario_seeds": scenario_seeds,
                                                  "per_run_draws": draw == "per_run"}}
    assert sorted(r["scenario_seed"] for r in stored["runs"]) == scenario_seeds
    assert len(set(stored["draws"]["class_il/naive"]["scenario_seeds"])) == (2 if draw == "per_run" else 1)
    text = write_report(out, tmp_path / "report").read_text()
    assert said in text.split("## class_il", 1)[1]  # under the setting's table


def _per_run_plan(tmp_path: Path, *overrides: str):
    return build_plan(load_config([*TINY[1:], "strategy=[naive,l2]", "seeds=[0,1,2]", "scenario.seed=per_run",
                                   f"output.dir={tmp_path / 'out'}", f"sweep.cache_dir={tmp_path / 'cache'}",
                                   *overrides]))


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, weakref.ref]]:
    """Every scenario :func:`cl_bench.runner.load_scenario` returns from now on: (its seed, a weak reference)."""
    loaded: list[tuple[int, weakref.ref]] = []
    real = runner.load_scenario

    def counting(spec: RunSpec, cache_dir: Path | None = None) -> Scenario:
        scenario = real(spec, cache_dir)
        loaded.append((runner.draw_seed(spec), weakref.ref(scenario)))
        return scenario

    monkeypatch.setattr(runner, "load_scenario", counting)
    return loaded


def _alive(loaded: list[tuple[int, weakref.ref]]) -> list[int]:
    gc.collect()
    return sorted(seed for seed, ref in loaded if ref() is not None)


def test_a_per_run_plan_holds_one_draw_at_a_time_and_trains_each_run_as_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    loaded = _count_loads(monkeypatch)
    plan = _per_run_plan(tmp_path)
    prepared = runner.prepare(plan)
    assert set(prepared.scenarios) == {2} and _alive(loaded) == [2]  # the draws of seeds 0 and 1 were released
    del prepared
    held: list[tuple[int, list[int]]] = []
    results = list(execute(plan, on_task_end=lambda spec, task, module: held.append((spec.seed, _alive(loaded)))))
    assert len(held) == 6 * 2 and all(alive == [seed] for seed, alive in held)  # only the draw in training
    assert capfd.readouterr().err.count(": built in ") == 3  # each draw built once, then loaded from the cache
    assert len(loaded) == 3 + 3 + 6  # the first prepare, execute's prepare, one load per training
    for spec, result in zip(plan.runs, results):
        alone = runner.run_one(spec, build_scenario({k: v for k, v in spec.scenario.items() if k != "augment"}))
        assert result.run_id == alone.run_id and result.scenario_seed == spec.seed
        assert (result.acc, result.loss, result.train_loss) == (alone.acc, alone.loss, alone.train_loss)


@pytest.mark.slow
def test_the_main_process_holds_no_draw_while_the_pool_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _count_loads(monkeypatch)
    real_pool = runner._execute_pool
    alive_at_start: list[list[int]] = []

    def pool(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        alive_at_start.append(_alive(loaded))
        yield from real_pool(*args, **kwargs)

    monkeypatch.setattr(runner, "_execute_pool", pool)
    pooled = sorted(execute(_per_run_plan(tmp_path, "sweep.workers=2"), workers=2), key=lambda r: r.run_id)
    assert alive_at_start == [[]] and len(loaded) == 3
    alone = sorted(execute(_per_run_plan(tmp_path / "alone")), key=lambda r: r.run_id)
    assert [(r.run_id, r.acc, r.loss) for r in pooled] == [(r.run_id, r.acc, r.loss) for r in alone]
