"""Scenario builders on the embedded digits data (fast, no files)."""

from __future__ import annotations

import pytest
import torch

from cl_bench.data import SCENARIO_KINDS, build_scenario, load_source
from cl_bench.data.batching import Augment, TaskBatches
from cl_bench.data.scenarios import parse_scenario_cfg, rotate, rotation_angles, task_permutations

SPLIT = {"kind": "split", "source": "digits", "setting": "class_il", "n_tasks": 5, "classes_per_task": 2}


def rows(x: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in x.flatten(1).tolist()}


def test_kinds_are_described() -> None:
    assert set(SCENARIO_KINDS) == {"split", "permuted", "rotated", "avalanche"}


def test_split_natural_order_takes_every_sample_of_its_classes() -> None:
    src = load_source("digits")
    sc = build_scenario(SPLIT)
    assert sc.name == "split-digits" and sc.n_tasks == 5 and sc.n_outputs == 10
    assert sc.input_shape == (1, 8, 8) and sc.mean == src.mean and sc.std == src.std
    assert sc.task_classes() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    for task in sc.tasks:
        in_task = torch.isin(src.y_train, torch.tensor(task.classes))
        assert task.n_train == int(in_task.sum()) and task.x_val is None
        assert torch.equal(task.x_train, src.x_train[in_task]) and torch.equal(task.y_train, src.y_train[in_task])
        assert set(task.y_test.tolist()) == set(task.classes)
        assert task.n_test == int(torch.isin(src.y_test, torch.tensor(task.classes)).sum())


def test_normalize_false_keeps_pixels_in_unit_range() -> None:
    """``normalize: false`` (the DER repository's ToTensor-only MNIST protocol): no mean/std, batches in [0, 1]."""
    sc = build_scenario({**SPLIT, "normalize": False})
    assert sc.mean == () and sc.std == ()
    x, _, _ = next(iter(TaskBatches(sc.tasks[0].x_train, sc.tasks[0].y_train, torch.zeros(sc.tasks[0].n_train,
                                    dtype=torch.long), 64, device="cpu", seed=0, mean=sc.mean, std=sc.std)))
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    torch.testing.assert_close(x * 255, (x * 255).round())  # pixel / 255, no shift


def test_split_random_and_explicit_class_order() -> None:
    a = build_scenario({**SPLIT, "class_order": "random", "seed": 3}).task_classes()
    b = build_scenario({**SPLIT, "class_order": "random", "seed": 3}).task_classes()
    c = build_scenario({**SPLIT, "class_order": "random", "seed": 4}).task_classes()
    assert a == b and a != c
    assert sorted(sum(a, [])) == list(range(10)) and a != [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    order = [9, 3, 0, 7, 1, 2, 8, 4, 6, 5]
    sc = build_scenario({**SPLIT, "class_order": order, "n_tasks": 3, "classes_per_task": 3})
    assert sc.task_classes() == [[9, 3, 0], [7, 1, 2], [8, 4, 6]]
    assert sc.n_outputs == 10  # class-IL keeps global ids even when a class is unused
    assert set(sc.tasks[1].y_train.tolist()) == {7, 1, 2}


def test_domain_il_relabels_to_position_within_task() -> None:
    order = [9, 3, 0, 7, 1, 2, 8, 4, 6, 5]
    glob = build_scenario({**SPLIT, "class_order": order})
    dom = build_scenario({**SPLIT, "class_order": order, "setting": "domain_il"})
    assert dom.n_outputs == 2 and dom.task_classes() == [[0, 1]] * 5
    for tg, td in zip(glob.tasks, dom.tasks):
        assert torch.equal(tg.x_train, td.x_train)
        # y_domain = position of the global label in the task's class list
        expected = torch.tensor([tg.classes.index(v) for v in tg.y_train.tolist()])
        assert torch.equal(td.y_train, expected)
        assert torch.equal(td.y_test, torch.tensor([tg.classes.index(v) for v in tg.y_test.tolist()]))


def test_task_il_keeps_global_labels_and_class_mask() -> None:
    sc = build_scenario({**SPLIT, "setting": "task_il", "class_order": [4, 8, 0, 1, 2, 3, 5, 6, 7, 9]})
    mask = sc.class_mask()
    expected = torch.zeros(5, 10, dtype=torch.bool)
    for t, classes in enumerate([[4, 8], [0, 1], [2, 3], [5, 6], [7, 9]]):
        for c in classes:
            expected[t, c] = True
    assert torch.equal(mask, expected)
    assert set(sc.tasks[0].y_train.tolist()) == {4, 8}


def test_permuted_tasks_fixed_by_scenario_seed() -> None:
    src = load_source("digits")
    cfg = {"kind": "permuted", "source": "digits", "setting": "domain_il", "n_tasks": 3, "seed": 7}
    a, b = build_scenario(cfg), build_scenario(cfg)
    other = build_scenario({**cfg, "seed": 8})
    perms = task_permutations(7, 3, 64)
    assert sorted(perms[0].tolist()) == list(range(64))
    assert not torch.equal(perms[0], torch.arange(64)) and not torch.equal(perms[0], perms[1])
    for t in range(3):
        assert torch.equal(a.tasks[t].x_train, b.tasks[t].x_train)
        assert not torch.equal(a.tasks[t].x_train, other.tasks[t].x_train)
        assert a.tasks[t].classes == list(range(10)) and torch.equal(a.tasks[t].y_train, src.y_train)
        # pixel j of every permuted image is pixel perm[j] of the source image, in train and test alike
        for x_task, x_src in ((a.tasks[t].x_train, src.x_train), (a.tasks[t].x_test, src.x_test)):
            flat_task, flat_src = x_task.flatten(1), x_src.flatten(1)
            for j in range(64):
                assert torch.equal(flat_task[:, j], flat_src[:, int(perms[t, j])])
    assert a.n_outputs == 10
    first = build_scenario({**cfg, "first_identity": True})
    assert torch.equal(first.tasks[0].x_train, src.x_train) and torch.equal(first.tasks[1].x_train, a.tasks[1].x_train)
    # tasks own their tensors: nothing aliases the cached source
    for tensor, source in ((first.tasks[0].x_train, src.x_train), (first.tasks[0].y_train, src.y_train)):
        assert tensor.data_ptr() != source.data_ptr()


def test_rotated_angles_in_range_and_fixed() -> None:
    src = load_source("digits")
    angles = rotation_angles(5, 50, (10.0, 40.0))
    assert all(10.0 <= a < 40.0 for a in angles) and len(set(angles)) == 50
    assert angles == rotation_angles(5, 50, (10.0, 40.0)) and angles != rotation_angles(6, 50, (10.0, 40.0))
    cfg = {"kind": "rotated", "source": "digits", "setting": "domain_il", "n_tasks": 3, "seed": 5,
           "angle_range": [10.0, 40.0]}
    sc = build_scenario(cfg)
    for t, angle in enumerate(rotation_angles(5, 3, (10.0, 40.0))):
        assert torch.equal(sc.tasks[t].x_train, rotate(src.x_train, angle))
        assert torch.equal(sc.tasks[t].x_test, rotate(src.x_test, angle))
    # independent reference: a 90-degree rotation is an exact counter-clockwise quarter turn
    quarter = build_scenario({**cfg, "angle_range": [90, 90], "n_tasks": 2})
    for task in quarter.tasks:
        assert torch.equal(task.x_train, torch.rot90(src.x_train, 1, dims=(2, 3)))


def test_validation_split_and_subsampling() -> None:
    full = build_scenario(SPLIT)
    sc = build_scenario({**SPLIT, "val_fraction": 0.2, "seed": 1})
    again = build_scenario({**SPLIT, "val_fraction": 0.2, "seed": 1})
    for tf, t, t2 in zip(full.tasks, sc.tasks, again.tasks):
        n = tf.n_train
        assert t.x_val.shape[0] == round(0.2 * n) and t.n_train == n - round(0.2 * n)
        # disjoint and together exactly the task's training data (as a multiset of (image, label))
        joint = torch.cat([t.x_train.flatten(1), t.y_train[:, None]], 1)
        joint_val = torch.cat([t.x_val.flatten(1), t.y_val[:, None]], 1)
        ref = torch.cat([tf.x_train.flatten(1), tf.y_train[:, None]], 1)
        assert sorted(map(tuple, torch.cat([joint, joint_val]).tolist())) == sorted(map(tuple, ref.tolist()))
        for c in t.classes:  # stratified: each class's validation share is within one sample of 20 %
            assert abs(int((t.y_val == c).sum()) - 0.2 * int((tf.y_train == c).sum())) < 1
        assert torch.equal(t.x_val, t2.x_val)
    sub = build_scenario({**SPLIT, "train_subsample": 40, "test_subsample": 10})
    for t, tf in zip(sub.tasks, full.tasks):
        assert t.n_train == 40 and t.n_test == 10
        assert torch.bincount(t.y_train, minlength=10)[t.classes].tolist() == [20, 20]
        assert rows(t.x_train) <= rows(tf.x_train)


def test_augment_key_is_parsed_not_applied() -> None:
    spec = parse_scenario_cfg({**SPLIT, "augment": {"padding": 2, "flip": False}})
    assert spec.augment == Augment(padding=2, flip=False)
    assert parse_scenario_cfg(SPLIT).augment is None


@pytest.mark.parametrize("patch, exc, key", [
    ({"kind": "shuffled"}, ValueError, "scenario.kind"),
    ({"setting": "instance_il"}, ValueError, "scenario.setting"),
    ({"source": "svhn"}, ValueError, "scenario.source"),
    ({"n_tasks": 6}, ValueError, "scenario.classes_per_task"),
    ({"n_tasks": 0}, ValueError, "scenario.n_tasks"),
    ({"n_tasks": 2.5}, ValueError, "scenario.n_tasks"),
    ({"classes_per_task": None}, KeyError, "scenario.classes_per_task"),
    ({"class_order": [0, 1, 2]}, ValueError, "scenario.class_order"),
    ({"class_order": [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]}, ValueError, "scenario.class_order"),
    ({"class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]}, ValueError, "scenario.class_order"),
    ({"class_order": "sorted"}, ValueError, "scenario.class_order"),
    ({"seed": -1}, ValueError, "scenario.seed"),
    ({"val_fraction": 1.0}, ValueError, "scenario.val_fraction"),
    ({"train_subsample": 0}, ValueError, "scenario.train_subsample"),
    ({"angle_range": [0, 90]}, ValueError, "scenario.angle_range"),
    ({"first_identity": True}, ValueError, "scenario.first_identity"),
    ({"augment": {"padding": -1}}, ValueError, "scenario.augment"),
    ({"normalize": "no"}, ValueError, "scenario.normalize"),
    ({"n_task": 5}, KeyError, "n_task"),
])
def test_config_errors_name_the_key(patch: dict, exc: type, key: str) -> None:
    with pytest.raises(exc, match=key.replace(".", r"\.")):
        build_scenario({**SPLIT, **patch})


@pytest.mark.parametrize("cfg, key", [
    ({"kind": "rotated", "angle_range": [50, 10]}, "scenario.angle_range"),
    ({"kind": "permuted", "classes_per_task": 2}, "scenario.classes_per_task"),
    ({"kind": "permuted", "class_order": "random"}, "scenario.class_order"),
])
def test_config_errors_for_permuted_and_rotated(cfg: dict, key: str) -> None:
    base = {"source": "digits", "setting": "domain_il", "n_tasks": 2}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        parse_scenario_cfg({**base, **cfg})
