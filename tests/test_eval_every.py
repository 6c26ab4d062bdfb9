"""``trainer.eval_every``: rows evaluated only after some tasks; the metrics that need the others are
undefined (None, "n/a"), never 0, in the run's JSON, results.json and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cl_bench.cli import main
from cl_bench.config import ConfigError, build_plan, load_config
from cl_bench.metrics import MATRIX_METRICS, compute_metrics
from cl_bench.report import write_report

FAST = ["strategy=naive", "settings=[class_il]", "scenario.n_tasks=4", "trainer.epochs=1", "checks.enabled=false",
        "sweep.workers=1", "seeds=[0,1]"]


def run(out: Path, *overrides: str) -> dict:
    assert main(["run", *FAST, f"output.dir={out}", *overrides]) == 0
    return json.loads((out / "results.json").read_text())


def test_every_second_task_and_last_only_leave_the_other_rows_undefined(tmp_path: Path) -> None:
    full = run(tmp_path / "full")
    every2 = run(tmp_path / "every2", "trainer.eval_every=2")
    last = run(tmp_path / "last", "trainer.eval_every=last")
    for f, e, lst in zip(full["runs"], every2["runs"], last["runs"]):
        assert e["acc"][1] == f["acc"][1] and e["acc"][3] == f["acc"][3]  # the same training, evaluated
        assert e["acc"][0] == e["acc"][2] == [None] * 4 and e["train_loss"][0] == [None] * 4
        assert lst["acc"][:3] == [[None] * 4] * 3 and lst["acc"][3] == f["acc"][3]
        for r in (e, lst):
            assert r["metrics"]["acc"] == f["metrics"]["acc"]
            assert r["metrics"]["acc_sample_weighted"] == f["metrics"]["acc_sample_weighted"]
            for m in ("aia", "forgetting", "bwt", "learning_acc", "loss_forgetting", "forgetting_mammoth"):
                assert r["metrics"][m] is None and "trainer.eval_every" in r["metrics_undefined"][m]
        assert sum(lst["timings"]["eval"][:3]) < 0.2 * sum(f["timings"]["eval"][:3])  # nothing evaluated there
    agg = last["aggregate"]["class_il/naive"]
    assert agg["acc"]["n"] == 2 and agg["forgetting"] == {"mean": None, "std": None, "sem": None, "n": 0}
    report = write_report(tmp_path / "last", tmp_path / "report").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| naive |") and "±" in line]  # metric tables
    assert rows and all("n/a" in row and " 0.000 " not in row for row in rows)


def test_compute_metrics_with_missing_rows_defines_only_the_final_row_metrics() -> None:
    R = [[0.9, 0.1], [0.5, 0.8]]
    skipped = [[None, None], [0.5, 0.8]]
    full, part = compute_metrics(R, [0.1, 0.1], [10, 30], "task_il"), compute_metrics(skipped, [0.1, 0.1], [10, 30],
                                                                                         "task_il")
    assert part.values["acc"] == full.values["acc"] == pytest.approx(0.65)
    assert part.values["acc_sample_weighted"] == pytest.approx((10 * 0.5 + 30 * 0.8) / 40)
    assert set(part.values) == set(MATRIX_METRICS)
    assert {m for m, v in part.values.items() if v is None} == set(MATRIX_METRICS) - {"acc", "acc_sample_weighted"}
    with pytest.raises(ValueError, match="the last row"):
        compute_metrics([[0.9, 0.1], [None, None]], None, [10, 30], "task_il")


@pytest.mark.parametrize("value", ["0", "first", "-2", "true"])
def test_bad_eval_every_names_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"trainer: eval_every must be an integer >= 1"):
        build_plan(load_config(["strategy=naive", f"trainer.eval_every={value}"]))
