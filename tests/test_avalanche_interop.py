"""Materialising real Avalanche benchmarks (built from in-memory tensors) into a Scenario."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from cl_bench.data import TaskBatches
from cl_bench.data.avalanche_interop import experience_task_labels, scenario_from_avalanche

nc_benchmark = pytest.importorskip("avalanche.benchmarks.scenarios.deprecated.generators").nc_benchmark


def indexed_images(n: int, n_classes: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images whose first pixel is the sample index, as floats k/255 (what ToTensor gives)."""
    g = torch.Generator().manual_seed(offset)
    x8 = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    x8[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8) + offset
    y = torch.arange(n) % n_classes
    return x8, x8.float() / 255, y


@pytest.fixture(scope="module")
def benchmark():
    x8, xf, y = indexed_images(60, 6)
    x8_test, xf_test, y_test = indexed_images(30, 6, offset=100)
    bm = nc_benchmark(TensorDataset(xf, y), TensorDataset(xf_test, y_test), n_experiences=3, task_labels=False,
                      seed=1)
    return bm, (x8, y), (x8_test, y_test)


def test_class_il_experiences_become_tasks(benchmark) -> None:
    bm, (x8, y), (x8_test, y_test) = benchmark
    sc = scenario_from_avalanche(bm, "class_il", "nc-tensors")
    assert sc.name == "nc-tensors" and sc.n_tasks == 3 and sc.n_outputs == 6 and sc.input_shape == (1, 4, 4)
    for task, exp, exp_test in zip(sc.tasks, bm.train_stream, bm.test_stream):
        assert task.classes == sorted(exp.classes_in_this_experience)
        assert task.x_train.dtype == torch.uint8 and task.y_train.dtype == torch.int64
        # the first pixel names the original sample: image and label are that sample's, and the task holds
        # exactly the samples of its classes
        idx = task.x_train[:, 0, 0, 0].long()
        assert torch.equal(task.x_train, x8[idx]) and torch.equal(task.y_train, y[idx])
        assert sorted(idx.tolist()) == torch.isin(y, torch.tensor(task.classes)).nonzero().squeeze(1).tolist()
        idx_test = task.x_test[:, 0, 0, 0].long() - 100
        assert torch.equal(task.x_test, x8_test[idx_test]) and torch.equal(task.y_test, y_test[idx_test])
        assert task.n_train == len(exp.dataset) and task.n_test == len(exp_test.dataset)
    xf = x8.double() / 255
    assert sc.mean == pytest.approx((xf.mean().item(),)) and sc.std == pytest.approx((xf.std(unbiased=False).item(),))


def test_domain_il_relabels_within_experience(benchmark) -> None:
    bm = benchmark[0]
    glob = scenario_from_avalanche(bm, "class_il", "g")
    dom = scenario_from_avalanche(bm, "domain_il", "d")
    assert dom.n_outputs == 2 and dom.task_classes() == [[0, 1]] * 3
    for tg, td in zip(glob.tasks, dom.tasks):
        assert torch.equal(td.y_train, torch.tensor([tg.classes.index(v) for v in tg.y_train.tolist()]))
        assert torch.equal(td.y_test, torch.tensor([tg.classes.index(v) for v in tg.y_test.tolist()]))
    with pytest.raises(ValueError, match="setting"):
        scenario_from_avalanche(bm, "online", "x")


def test_images_outside_unit_range_stay_as_given() -> None:
    x = torch.randn(20, 1, 3, 3)  # e.g. already normalised
    y = torch.arange(20) % 4
    bm = nc_benchmark(TensorDataset(x, y), TensorDataset(x[:8], y[:8]), n_experiences=2, task_labels=True,
                      fixed_class_order=[0, 1, 2, 3])
    sc = scenario_from_avalanche(bm, "task_il", "floats")
    assert sc.mean == () and sc.std == ()
    assert sc.task_classes() == [[0, 1], [2, 3]]
    task = sc.tasks[1]
    assert task.x_train.dtype == torch.float32
    expected = x[torch.isin(y, torch.tensor([2, 3]))]
    assert sorted(map(tuple, task.x_train.flatten(1).tolist())) == sorted(map(tuple, expected.flatten(1).tolist()))
    # the batcher takes float images as already scaled
    xb, yb, tb = next(iter(TaskBatches(task.x_train, task.y_train, 1, batch_size=64, shuffle=False)))
    assert torch.equal(xb, task.x_train) and torch.equal(tb, torch.ones(10, dtype=torch.long))


def test_task_labels_become_task_ids_or_an_error_in_task_il(benchmark) -> None:
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels

    shared = benchmark[0]  # task_labels=False: every experience has task label 0
    assert experience_task_labels(shared, "class_il", "shared") == [0, 0, 0]
    with pytest.raises(ValueError, match=r"task labels \[0, 0, 0\] repeat"):
        scenario_from_avalanche(shared, "task_il", "shared")
    x8, xf, y = indexed_images(60, 6)
    own = nc_benchmark(TensorDataset(xf, y), TensorDataset(xf[:30], y[:30]), n_experiences=3, task_labels=True,
                       seed=2)
    sc = scenario_from_avalanche(own, "task_il", "own")
    assert [t.id for t in sc.tasks] == [e.task_label for e in own.train_stream] == [0, 1, 2]
    for row, exp in zip(sc.class_mask(), own.train_stream):
        assert row.nonzero().squeeze(1).tolist() == sorted(exp.classes_in_this_experience)
    tr, te = list(own.train_stream), list(own.test_stream)
    mixed = with_task_labels(benchmark_from_datasets(train=[tr[0].dataset.concat(tr[1].dataset), tr[2].dataset],
                                                     test=[te[0].dataset.concat(te[1].dataset), te[2].dataset]))
    assert experience_task_labels(mixed, "class_il", "mixed") == [None, 2]
    with pytest.raises(ValueError, match=r"train experience 0 has task labels \[0, 1\]"):
        scenario_from_avalanche(mixed, "task_il", "mixed")


def test_subsets_are_class_stratified_and_seeded(benchmark) -> None:
    bm, (x8, y), _ = benchmark
    full = scenario_from_avalanche(bm, "class_il", "full")
    sub = scenario_from_avalanche(bm, "class_il", "sub", train_subsample=10, test_subsample=4, seed=5)
    again = scenario_from_avalanche(bm, "class_il", "sub", train_subsample=10, test_subsample=4, seed=5)
    for task, whole, twin in zip(sub.tasks, full.tasks, again.tasks):
        assert task.n_train == 10 and task.n_test == 4 and task.classes == whole.classes
        idx = task.x_train[:, 0, 0, 0].long()  # the first pixel names the original sample
        assert torch.equal(task.x_train, x8[idx]) and torch.equal(task.y_train, y[idx])
        assert set(idx.tolist()) <= set(whole.x_train[:, 0, 0, 0].long().tolist())
        assert sorted(task.y_train.bincount().tolist())[-2:] == [5, 5]  # 20 samples, 10 per class -> 5 + 5
        assert torch.equal(task.x_train, twin.x_train) and torch.equal(task.x_test, twin.x_test)
