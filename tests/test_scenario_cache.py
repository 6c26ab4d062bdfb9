"""The scenario disk cache: built once, then loaded by pool workers, re-runs and concurrent builders."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch

from cl_bench.config import build_plan, load_config
from cl_bench.data import build_scenario
from cl_bench.data.cache import ScenarioCache, from_record, scenario_digest, to_record
from cl_bench.runner import execute, load_scenario

DIGITS = {"kind": "split", "source": "digits", "setting": "class_il", "n_tasks": 3, "classes_per_task": 2,
          "class_order": "random", "seed": 4, "val_fraction": 0.2}


def plan_of(tmp_path: Path, *overrides: str):
    return build_plan(load_config(["strategy=[naive,l2]", "settings=[class_il]", "scenario.n_tasks=2",
                                   "trainer.epochs=1", "checks.enabled=false", f"output.dir={tmp_path / 'out'}",
                                   f"sweep.cache_dir={tmp_path / 'cache'}", *overrides]))


@pytest.mark.slow
def test_two_pool_workers_and_a_rerun_load_the_scenario_built_once(tmp_path: Path,
                                                                     capfd: pytest.CaptureFixture) -> None:
    plan = plan_of(tmp_path, "sweep.workers=2")
    results = list(execute(plan, workers=2))
    assert len(results) == 2 and all(r.status == "ok" for r in results)
    err = capfd.readouterr().err
    assert err.count(": built in ") == 1  # by the main process, before the pool starts
    assert 1 <= err.count(": loaded from ") <= 2  # once in each worker that ran a training (one may run both)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    list(execute(plan_of(tmp_path, "sweep.workers=2"), resume=False, workers=2))  # a re-run: nothing built
    err = capfd.readouterr().err
    assert err.count(": built in ") == 0 and 2 <= err.count(": loaded from ") <= 3  # the main process too


def test_a_cached_scenario_equals_the_built_one_and_the_key_follows_the_config(tmp_path: Path) -> None:
    built = build_scenario(DIGITS)
    cache = ScenarioCache(tmp_path)
    assert cache.get(DIGITS, None, lambda: built) is built
    loaded = cache.get(DIGITS, None, lambda: pytest.fail("a cached scenario must not be rebuilt"))
    assert loaded is not built and loaded.task_classes() == built.task_classes()
    for a, b in zip(loaded.tasks, built.tasks):
        for name in ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val"):
            assert torch.equal(getattr(a, name), getattr(b, name))
    assert (loaded.name, loaded.n_outputs, loaded.input_shape, loaded.mean) == \
        (built.name, built.n_outputs, built.input_shape, built.mean)
    assert scenario_digest({**DIGITS, "seed": 5}, None) != scenario_digest(DIGITS, None)
    assert scenario_digest({**DIGITS, "augment": {"padding": 2}}, None) == scenario_digest(DIGITS, None)
    assert from_record(to_record(built)).task_classes() == built.task_classes()


def test_a_damaged_cache_file_is_rebuilt(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    cache = ScenarioCache(tmp_path)
    cache.path(scenario_digest(DIGITS, None)).write_bytes(b"not a torch file")
    rebuilt = cache.get(DIGITS, None, lambda: build_scenario(DIGITS))
    assert rebuilt.n_tasks == 3 and "unreadable" in capfd.readouterr().err
    assert cache.get(DIGITS, None, lambda: pytest.fail("rebuilt twice")).n_tasks == 3


def _load_in_worker(folder: str, start: multiprocessing.synchronize.Event) -> list[int]:
    plan = build_plan(load_config(["strategy=naive", "settings=[class_il]", "scenario.class_order=random",
                                   f"sweep.cache_dir={folder}"]))
    start.wait()
    scenario = load_scenario(plan.runs[0], plan.cache_dir)
    return [c for t in scenario.tasks for c in t.classes]


@pytest.mark.slow
def test_concurrent_builders_of_one_key_build_it_once(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Manager().Event()
    with ctx.Pool(2) as pool:
        pending = [pool.apply_async(_load_in_worker, (str(tmp_path), start)) for _ in range(2)]
        start.set()
        classes = [p.get(timeout=900) for p in pending]
    assert classes[0] == classes[1]
    err = capfd.readouterr().err
    assert err.count(": built in ") == 1 and err.count(": loaded from ") == 1
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
