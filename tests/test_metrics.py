"""Metrics against numbers worked out by hand from each formula."""

from __future__ import annotations

import numpy as np
import pytest

from cl_bench.metrics import MATRIX_METRICS, MetricReport, compute_metrics, forgetting_per_task

# R[t][j]: accuracy on task j after task t. Chosen so the three forgetting
# definitions disagree: task 0 peaks *after* it was learnt (R[1][0] > R[0][0]:
# Chaudhry != Avalanche), task 1 ends above its earlier best (R[2][1] > R[1][1]:
# Chaudhry != Mammoth), and R[0][1] = 0.99 sits above the diagonal (must be
# ignored by every max, since task 1 was not yet learnt).
R = [
    [0.90, 0.99, 0.05],
    [0.95, 0.80, 0.10],
    [0.60, 0.85, 0.70],
]
B = [0.10, 0.50, 0.20]
SIZES = [100, 300, 600]
LTR = [
    [0.1, 2.0, 2.5],
    [0.9, 0.2, 2.2],
    [1.5, 0.6, 0.3],
]
JOINT = [0.97, 0.90, 0.75]


def report(setting: str = "task_il", **kw) -> MetricReport:
    args = dict(acc=R, acc_init=B, test_sizes=SIZES, setting=setting, train_loss=LTR, joint_acc=JOINT)
    args.update(kw)
    return compute_metrics(**args)


def test_hand_computed_values():
    r = report()
    v, p = r.values, r.per_task
    assert v["acc"] == pytest.approx((0.60 + 0.85 + 0.70) / 3)
    assert v["acc_sample_weighted"] == pytest.approx((100 * 0.60 + 300 * 0.85 + 600 * 0.70) / 1000)  # 0.735
    assert v["aia"] == pytest.approx((0.90 + (0.95 + 0.80) / 2 + (0.60 + 0.85 + 0.70) / 3) / 3)
    assert v["learning_acc"] == pytest.approx((0.90 + 0.80 + 0.70) / 3)
    # Chaudhry: j=0: max(R00, R10) - R20 = 0.95 - 0.60; j=1: max(R11) - R21 = 0.80 - 0.85
    assert p["forgetting"] == pytest.approx([0.35, -0.05])
    assert v["forgetting"] == pytest.approx(0.15)
    # Avalanche: R[j][j] - R[2][j]
    assert p["forgetting_avalanche"] == pytest.approx([0.30, -0.05])
    assert v["forgetting_avalanche"] == pytest.approx(0.125)
    # Mammoth: max over rows j..2 (last included) - R[2][j]
    assert p["forgetting_mammoth"] == pytest.approx([0.35, 0.0])
    assert v["forgetting_mammoth"] == pytest.approx(0.175)
    # BWT: R[2][j] - R[j][j]
    assert p["bwt"] == pytest.approx([-0.30, 0.05])
    assert v["bwt"] == pytest.approx(-0.125)
    # FWT: R[j-1][j] - b[j], j = 1, 2
    assert p["fwt"] == pytest.approx([0.99 - 0.50, 0.10 - 0.20])
    assert v["fwt"] == pytest.approx(0.195)
    # intransigence: joint[j] - R[j][j]
    assert p["intransigence"] == pytest.approx([0.07, 0.10, 0.05])
    assert v["intransigence"] == pytest.approx(0.22 / 3)
    # loss forgetting: Ltr[2][j] - Ltr[j][j]
    assert p["loss_forgetting"] == pytest.approx([1.4, 0.4])
    assert v["loss_forgetting"] == pytest.approx(0.9)
    assert p["acc"] == pytest.approx(R[-1])
    assert p["learning_acc"] == pytest.approx([0.90, 0.80, 0.70])
    assert r.undefined == {}
    assert set(v) == set(MATRIX_METRICS)


def test_forgetting_variants_disagree_as_expected():
    v = report().values
    # Avalanche < Chaudhry (task 0 peaked after its own task), Chaudhry < Mammoth (task 1 ended at its best)
    assert v["forgetting_avalanche"] < v["forgetting"] < v["forgetting_mammoth"]
    assert v["bwt"] == pytest.approx(-v["forgetting_avalanche"])  # identity of the two definitions
    # a max over *all* rows would pick the pre-training 0.99 for task 1: (0.35 + 0.14) / 2
    assert v["forgetting_mammoth"] != pytest.approx(0.245)


def brute_force(R: np.ndarray) -> dict[str, list[float]]:
    """The definitions as literal loops."""
    T = len(R)
    return {
        "forgetting": [max(R[l][j] for l in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)],
        "forgetting_avalanche": [R[j][j] - R[T - 1][j] for j in range(T - 1)],
        "forgetting_mammoth": [max(R[l][j] for l in range(j, T)) - R[T - 1][j] for j in range(T - 1)],
        "bwt": [R[T - 1][j] - R[j][j] for j in range(T - 1)],
    }


@pytest.mark.parametrize("T", [2, 5, 9])
def test_per_task_vectors_match_loops_on_random_matrices(T):
    R = np.random.default_rng(T).uniform(size=(T, T))
    got = report(acc=R.tolist(), acc_init=[0.0] * T, test_sizes=[1] * T, train_loss=None, joint_acc=None)
    for name, expected in brute_force(R).items():
        assert got.per_task[name] == pytest.approx(expected)
        assert got.values[name] == pytest.approx(np.mean(expected))
    aia = np.mean([np.mean(R[t, : t + 1]) for t in range(T)])
    assert got.values["aia"] == pytest.approx(aia)


def test_fwt_undefined_in_class_il():
    r = report(setting="class_il")
    assert r.values["fwt"] is None
    assert "class-IL" in r.undefined["fwt"]
    assert "fwt" not in r.per_task
    assert r.values["bwt"] == pytest.approx(-0.125)  # everything else is still computed


def test_fwt_undefined_without_acc_init():
    r = report(setting="domain_il", acc_init=None)
    assert r.values["fwt"] is None and "acc_init" in r.undefined["fwt"]


def test_missing_optional_inputs_are_undefined_with_reason():
    r = report(train_loss=None, joint_acc=None)
    assert r.values["loss_forgetting"] is None and "loss" in r.undefined["loss_forgetting"]
    assert r.values["intransigence"] is None and "joint" in r.undefined["intransigence"]


def test_single_task():
    r = compute_metrics([[0.8]], [0.1], [50], "task_il", train_loss=[[0.3]], joint_acc=[0.9])
    assert r.values["acc"] == pytest.approx(0.8)
    assert r.values["aia"] == pytest.approx(0.8)
    assert r.values["learning_acc"] == pytest.approx(0.8)
    assert r.values["intransigence"] == pytest.approx(0.1)
    for name in ("forgetting", "forgetting_avalanche", "forgetting_mammoth", "bwt", "fwt", "loss_forgetting"):
        assert r.values[name] is None
        assert "T=1" in r.undefined[name]


def test_sample_weighting_differs_from_task_mean():
    r = compute_metrics([[1.0, 0.0], [1.0, 0.5]], None, [10, 30], "class_il")
    assert r.values["acc"] == pytest.approx(0.75)
    assert r.values["acc_sample_weighted"] == pytest.approx((10 * 1.0 + 30 * 0.5) / 40)  # 0.625
    equal = compute_metrics([[1.0, 0.0], [1.0, 0.5]], None, [7, 7], "class_il")
    assert equal.values["acc_sample_weighted"] == pytest.approx(equal.values["acc"])


def test_to_dict_round_trips_structure():
    d = report(setting="class_il").to_dict()
    assert set(d) == {"values", "per_task", "undefined"}
    assert d["values"]["fwt"] is None and "fwt" in d["undefined"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(acc=[[0.9, 0.1], [0.8]]), r"row 1 has 1 entries"),
        (dict(acc=[[0.9, 0.1, 0.2], [0.8, 0.7, 0.1]]), r"square"),
        (dict(acc=[]), r"empty"),
        (dict(acc=[[0.9, float("nan")], [0.8, 0.7]]), r"acc\[0\]\[1\] is not finite"),
        (dict(test_sizes=[1, 2]), r"test_sizes must have one entry per task"),
        (dict(test_sizes=[1, 0, 2]), r"test_sizes must be positive"),
        (dict(acc_init=[0.1]), r"acc_init must have one entry per task"),
        (dict(joint_acc=[0.1, 0.2]), r"joint_acc must have one entry per task"),
        (dict(train_loss=[[0.1, 0.2], [0.3, 0.4]]), r"train_loss is 2x2 but acc is 3x3"),
        (dict(train_loss=[[0.1], [0.3], [0.5]]), r"train_loss must be square"),
        (dict(setting="class-il"), r"setting='class-il' is not valid"),
    ],
)
def test_shape_and_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        report(**kwargs)


def test_pure_function_accepts_arrays():
    assert forgetting_per_task(np.asarray(R)) == pytest.approx([0.35, -0.05])
