"""Avalanche benchmarks by configuration (``scenario.kind: avalanche``): the tasks are the benchmark's own
experiences (real ``avalanche.benchmarks.classic.SplitMNIST`` on real MNIST), their task labels are kept in
task-IL, the recorded configuration describes the benchmark, and bad input is one ConfigError naming the key."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from cl_bench.config import ConfigError, build_plan, load_config
from cl_bench.data.cache import cacheable
from cl_bench.runner import execute, identify_run, load_scenario

REAL_MNIST = Path(os.environ.get("CL_BENCH_DATA") or "/nonexistent")  # the folder holding MNIST/raw
needs_mnist = pytest.mark.skipif(not (REAL_MNIST / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file(),
                                 reason="needs CL_BENCH_DATA with MNIST/raw")
ROUTE = ["scenario=avalanche_split_mnist", "strategy=naive", "settings=[task_il]", "checks.enabled=false",
         "trainer.epochs=1", "trainer.train_loss_probe=50"]
ARGS = {"n_experiences": 5, "seed": 0, "return_task_id": True}


def plan_of(*overrides: str):
    return build_plan(load_config([*ROUTE, *overrides]))


# ---------------------------------------------------------------- without Avalanche: the keys
def test_keys_of_other_kinds_are_refused_before_anything_is_loaded() -> None:
    with pytest.raises(ConfigError, match="scenario.source: does not apply to kind=avalanche"):
        plan_of("scenario.source=mnist")
    with pytest.raises(ConfigError, match="scenario.classes_per_task: does not apply to kind=avalanche"):
        plan_of("scenario.classes_per_task=2")
    with pytest.raises(ConfigError, match="scenario.benchmark is required for kind=avalanche"):
        plan_of("scenario.benchmark=null")
    with pytest.raises(ConfigError, match="scenario.benchmark: applies only to kind=avalanche, not kind=split"):
        build_plan(load_config(["scenario.benchmark=SplitMNIST", "strategy=naive"]))
    assert not cacheable({"kind": "avalanche", "benchmark": "SplitMNIST"}) and cacheable({"kind": "split"})


# ---------------------------------------------------------------- real Avalanche, real MNIST
@pytest.fixture(scope="module")
def direct():
    """SplitMNIST built by Avalanche itself (images as the dataset gives them: floats k/255)."""
    from avalanche.benchmarks.classic import SplitMNIST

    return SplitMNIST(**ARGS, train_transform=None, eval_transform=None, dataset_root=str(REAL_MNIST))


@pytest.fixture(scope="module")
def routed():
    """The same benchmark through the config route, every sample."""
    return load_scenario(plan_of().runs[0])


@pytest.mark.slow
@needs_mnist
def test_the_tasks_are_the_benchmarks_experiences_with_their_task_labels(direct, routed) -> None:
    train, test = list(direct.train_stream), list(direct.test_stream)
    assert routed.n_tasks == len(train) == 5 and routed.setting == "task_il"
    assert routed.n_outputs == 10 and routed.input_shape == (1, 28, 28)
    for task, exp, exp_test in zip(routed.tasks, train, test):
        assert task.classes == sorted(exp.classes_in_this_experience) and len(task.classes) == 2
        assert task.id == exp.task_label == exp_test.task_label  # SplitMNIST(return_task_id=True): 0, 1, ..., 4
        assert task.n_train == len(exp.dataset) and task.n_test == len(exp_test.dataset)
        assert task.x_train.dtype == torch.uint8
        for i in (0, 1, task.n_train // 2, task.n_train - 1):
            x, y, t = exp.dataset[i]
            assert torch.equal(task.x_train[i], x.mul(255).round().to(torch.uint8)) and int(task.y_train[i]) == y
            assert t == task.id
        x, y, _ = exp_test.dataset[task.n_test - 1]
        assert torch.equal(task.x_test[-1], x.mul(255).round().to(torch.uint8)) and int(task.y_test[-1]) == y
        assert set(task.y_train.tolist()) == set(task.classes) and set(task.y_test.tolist()) <= set(task.classes)
    mask = routed.class_mask()
    for exp in train:  # task-IL: row (task id = task label) of the class mask = the experience's classes
        assert mask[exp.task_label].nonzero().squeeze(1).tolist() == sorted(exp.classes_in_this_experience)
    assert sum(t.n_train for t in routed.tasks) == 60000 and sum(t.n_test for t in routed.tasks) == 10000
    all_x = torch.cat([t.x_train for t in routed.tasks]).double() / 255
    assert routed.mean == pytest.approx((all_x.mean().item(),)) and routed.std[0] == pytest.approx(
        all_x.std(unbiased=False).item())


@pytest.mark.slow
@needs_mnist
def test_subsets_are_stratified_draws_of_each_experience(routed) -> None:
    sub = load_scenario(plan_of("scenario.train_subsample=100", "scenario.test_subsample=40",
                                "scenario.seed=3").runs[0])
    again = load_scenario(plan_of("scenario.train_subsample=100", "scenario.test_subsample=40",
                                  "scenario.seed=3").runs[0])
    other = load_scenario(plan_of("scenario.train_subsample=100", "scenario.seed=4").runs[0])
    for t, (s, full) in enumerate(zip(sub.tasks, routed.tasks)):
        assert s.n_train == 100 and s.n_test == 40 and s.classes == full.classes
        counts = Counter(s.y_train.tolist())
        share = (full.y_train == full.classes[0]).double().mean().item()
        assert abs(counts[full.classes[0]] - 100 * share) <= 1  # class proportions kept
        rows = {r.numpy().tobytes(): int(y) for r, y in zip(full.x_train, full.y_train)}
        assert all(rows[x.numpy().tobytes()] == int(y) for x, y in zip(s.x_train, s.y_train))
        assert torch.equal(s.x_train, again.tasks[t].x_train) and torch.equal(s.y_test, again.tasks[t].y_test)
        assert not torch.equal(s.x_train, other.tasks[t].x_train)


@pytest.mark.slow
@needs_mnist
def test_a_short_run_records_the_benchmark(direct, tmp_path, scenario_cache) -> None:
    cached = set(scenario_cache.rglob("*"))
    plan = plan_of("scenario.train_subsample=200", "scenario.test_subsample=100", "trainer.epochs=6",
                   f"output.dir={tmp_path / 'out'}")
    (result,) = list(execute(plan))
    assert result.status == "ok", result.error
    assert len(result.acc) == 5 and all(len(row) == 5 for row in result.acc)
    assert min(result.acc[t][t] for t in range(5)) > 0.9  # task-IL, two classes per task, just trained
    source = result.config["data"]["source"]
    assert source["benchmark"] == "SplitMNIST" and source["benchmark_args"] == ARGS
    assert source["task_labels"] == [[0], [1], [2], [3], [4]] and source["experiences"] == 5
    assert source["classes"] == [sorted(e.classes_in_this_experience) for e in direct.train_stream]
    assert source["n_train"] == [len(e.dataset) for e in direct.train_stream]
    assert source["image"] == [1, 28, 28] and source["avalanche"]
    # the digest of the data the run used: that of a fresh build of its scenario, another for another subset
    from cl_bench.data.avalanche_benchmarks import data_digest

    assert source["sha256"] == data_digest(load_scenario(plan.runs[0]))
    other = plan_of("scenario.train_subsample=200", "scenario.test_subsample=100", "scenario.seed=1").runs[0]
    identify_run(other)
    assert other.data["source"]["sha256"] != source["sha256"]
    assert other.data["source"]["sha256"] == data_digest(load_scenario(other))
    assert other.config_hash() != plan.runs[0].config_hash()
    assert result.data_root == str(REAL_MNIST.resolve())
    assert result.task_sizes == {"train": [200] * 5, "test": [100] * 5}
    assert result.config["scenario"]["benchmark"] == "SplitMNIST"
    assert set(scenario_cache.rglob("*")) == cached  # an Avalanche scenario is not put in the disk cache


@pytest.mark.slow
@needs_mnist
def test_bad_input_is_one_config_error_naming_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match="scenario.benchmark: 'SplitMNST' is not a benchmark of avalanche"):
        plan_of("scenario.benchmark=SplitMNST")
    with pytest.raises(ConfigError, match="scenario.benchmark_args: got an unexpected keyword argument 'n_tasks'"):
        plan_of("scenario.benchmark_args.n_tasks=5")
    with pytest.raises(ConfigError, match="scenario.benchmark_args.dataset_root: is set by cl-bench"):
        plan_of(f"scenario.benchmark_args.dataset_root={tmp_path}")
    with pytest.raises(ConfigError, match=r"scenario.benchmark_args: SplitMNIST\(n_experiences=3.*\) failed"):
        plan_of("scenario.n_tasks=3")
    with pytest.raises(ConfigError, match="scenario.n_tasks: 4, but SplitMNIST .* has 5 experiences"):
        plan_of("scenario.n_tasks=4", "scenario.benchmark_args.n_experiences=5")
    with pytest.raises(ConfigError, match=r"scenario.benchmark_args: .*task labels \[0, 0, 0, 0, 0\] repeat"):
        plan_of("scenario.benchmark_args.return_task_id=false")
    plan_of("scenario.benchmark_args.return_task_id=false", "settings=[class_il]")  # class-IL needs no labels
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"scenario.benchmark=SplitMNIST: its data are not under .*empty and "
                                          r"SplitMNIST\(.*\) wanted to download them"):
        plan_of(f"data.root={empty}")
    assert not [p for p in empty.rglob("*") if p.is_file()]  # nothing was downloaded
