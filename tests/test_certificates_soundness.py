"""Soundness battery of the certificates (slow): every strategy x both settings x three learning rates on
Split-Digits, one epoch per task; no certified pair may have its bound exceeded by the measured E.

The full battery is ``uv run python -m cl_bench.geometry.soundness`` (docs/guarantees.md); this test runs
it with the same grid and asserts the counts that must hold.
"""

from __future__ import annotations

import pytest

from cl_bench.geometry.soundness import run_battery


@pytest.mark.slow
def test_no_certified_pair_is_violated(tmp_path):
    summary = run_battery([0.005, 0.05, 0.2], epochs=1, out=tmp_path, workers=2)
    assert summary["violations"] == 0, summary
    small = summary["by_lr"]["0.005"]["counts"]
    # small steps: the Taylor bound certifies most class-IL pairs (175 of 220: every strategy but rehearsal 80 %,
    # rehearsal 7 of 10, its old tasks' data moving their loss where the remainder bound exceeds half of
    # |E_hat|); PackNet and HAT isolate every task-IL pair
    assert small["class_il"]["taylor_bound_chosen"] >= 0.75 * small["class_il"]["pairs"]
    for row in summary["by_lr"].values():
        assert row["counts"]["task_il"]["exact_isolation_chosen"] == 2 * 10  # PackNet and HAT, 10 pairs each
