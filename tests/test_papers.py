"""The reproduction reports of cl_bench.geometry.papers: their numbers against the runs' own records,
their figures, and the tests that decide each claim's verdict."""

from __future__ import annotations

import math

import pytest

from cl_bench.geometry import papers
from cl_bench.geometry.papers import Pair, pairs_of, slope_vs_log_distance, spearman

OVERRIDES = ["scenario=split_digits", "scenario.n_tasks=3", "trainer.epochs=1", "trainer.train_loss_probe=100",
             "checks.k=3", "checks.probe_size=200", "checks.lanczos_iters=15", "checks.lipschitz.samples=16",
             "sweep.workers=1"]


def pair(distance: float, acc_forgetting: float) -> Pair:
    return Pair("naive", 0.1, 0, 0, 1, distance, 0.0, 0.0, 0.0, math.inf, acc_forgetting, False, None, None, 1.0, 1.0)


def test_slope_per_decade_of_update_size_is_the_least_squares_slope():
    pts = [pair(d, 0.3 * math.log10(d) + 0.1) for d in (0.01, 0.1, 1.0, 10.0)]
    assert slope_vs_log_distance(pts, lambda p: p.acc_forgetting) == pytest.approx(0.3)
    assert math.isnan(slope_vs_log_distance(pts[:2], lambda p: p.acc_forgetting))  # fewer than 3 points
    rho, _, n = spearman([1, 2, 3, 4], [1, 3, 2, 4])
    assert n == 4 and rho == pytest.approx(0.8)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from cl_bench.config import build_plan, load_config
    from cl_bench.runner import execute

    out = tmp_path_factory.mktemp("papers")
    results = []
    for lr, setting, strategies in ((0.01, "class_il", "[naive,ewc,er]"), (0.1, "class_il", "[naive,ewc,er]"),
                                    (0.05, "task_il", "[naive,packnet,hat]")):
        plan = build_plan(load_config([*OVERRIDES, f"settings=[{setting}]", f"strategy={strategies}",
                                       f"optimizer.lr={lr}", f"output.dir={out / f'{setting}{lr}'}"]))
        results += list(execute(plan))
    assert all(r.status == "ok" for r in results)
    return results


def test_pairs_are_the_runs_own_records(runs):
    run = runs[0]
    pairs = pairs_of(run)
    assert [(p.o, p.t) for p in pairs] == [(0, 1), (0, 2), (1, 2)]
    c2 = {(r["o"], r["t"]): r["values"] for r in run.checks["records"] if r["id"] == "C2"}
    for p in pairs:
        assert p.forgetting == c2[(p.o, p.t)]["forgetting"] and p.predicted == c2[(p.o, p.t)]["predicted"]
        assert p.acc_forgetting == run.acc[p.o][p.o] - run.acc[p.t][p.o]
        assert p.lr == 0.01 and p.model_error == abs(p.forgetting - p.predicted)


def test_local_vs_global_report_tests_each_claim_on_the_runs(runs, tmp_path):
    class_il = [r for r in runs if r.setting == "class_il"]
    text = papers.write_local_vs_global(class_il, tmp_path / "fig", tmp_path)
    assert "| local | ewc | 0.01 | 1 |" in text and "| global | er | 0.1 | 1 |" in text
    claims = papers.local_vs_global_claims("MLP 784-100-100-10", class_il)
    assert len(claims) == 4  # error grows with ||D||; two local-vs-global slopes; inside vs outside r*
    learned = [r for r in class_il if r.metrics["learning_acc"] >= papers.LEARNED]
    assert 0 < len(learned) < len(class_il)  # so the report repeats the claims on the learned runs
    rows = [line for line in text.splitlines() if line.endswith(("| agrees |", "| does not agree |"))]
    assert len(rows) == len(claims) + len(papers.local_vs_global_claims("learned", learned))
    for statement, _, ok in claims:
        assert statement.replace("|", "\\|") in text and ok is not None
    for name in ("main_forgetting_vs_distance", "main_error_vs_distance", "main_methods"):
        assert (tmp_path / "fig" / f"{name}.png").stat().st_size > 10_000


def test_isolation_report_certifies_packnet_and_hat(runs, tmp_path):
    text = papers.write_isolation([r for r in runs if r.setting == "task_il"], tmp_path / "fig", tmp_path)
    for label in ("packnet", "hat"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} with the task identity"))
        assert "(3 of 3" in row and row.endswith("| agrees |")
    assert "| packnet | 1 |" in text and "3 exact isolation" in text
    assert (tmp_path / "fig" / "perturbation_score.png").stat().st_size > 10_000
