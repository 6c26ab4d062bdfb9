"""Guarantee table and check plots from a real tiny run (Split-Digits, 3 tasks, 1 epoch, task-IL)."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest
from matplotlib.image import imread

from cl_bench import cli
from cl_bench.config import build_plan, load_config
from cl_bench.geometry.plots import plot_forgetting_vs_update_size, plot_predicted_vs_measured
from cl_bench.geometry.table import guarantee_table
from cl_bench.runner import execute

OVERRIDES = ["scenario=split_digits", "scenario.n_tasks=3", "trainer.epochs=1", "trainer.train_loss_probe=100",
             "settings=[task_il]", "strategy=[naive,naive_big]", "strategies.naive_big.class=naive",
             "strategies.naive_big.optimizer.lr=0.5", "checks.k=3", "checks.probe_size=200",
             "checks.lanczos_iters=20", "checks.lipschitz.samples=32"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("geometry_report")


@pytest.fixture(scope="module")
def results(run_dir: Path) -> list:
    plan = build_plan(load_config([*OVERRIDES, f"output.dir={run_dir}"]))
    out = list(execute(plan))
    assert [r.status for r in out] == ["ok", "ok"]
    return out


def columns(table) -> dict[str, list[str]]:
    return {str(c.header): [str(x) for x in c.cells] for c in table.columns}


def test_table_has_a_row_per_strategy_with_the_counts_of_the_records(results: list) -> None:
    cols = columns(guarantee_table(results))
    assert cols["strategy"] == ["naive", "naive_big"]
    assert cols["runs"] == ["1", "1"] and cols["pairs"] == ["3", "3"]  # (0,1), (0,2), (1,2)
    judged = {f"C{i}" for i in range(12)} - {"C4", "C9", "C10"}  # C9 off by default; C4, C10, C12 descriptive
    assert [c for c in cols if c.startswith("C") and c[1:].isdigit()] == sorted(judged, key=lambda c: int(c[1:]))
    for row, res in enumerate(results):
        counts: dict[str, Counter] = {}
        for rec in res.checks["records"]:
            counts.setdefault(rec["id"], Counter())[rec["verdict"]] += 1
        assert counts["C10"] == Counter({"n/a": 3}) and counts["C12"] == Counter({"n/a": 3})  # 3 pairs, 3 snapshots
        assert counts["C4"] == Counter({"n/a": 3})
        for cid in judged - {"C7"}:  # C7 is n/a outside r_o, so its column may be missing
            c = counts[cid]
            assert sum(c.values()) == 3
            assert cols[cid][row] == str(c["pass"]) + (f" ({c['n/a']})" if c["n/a"] else "")
        kappas = [r["values"]["kappa"] for r in res.checks["records"] if r["id"] == "C2"]
        assert float(cols["kappa"][row]) == pytest.approx(sum(kappas) / 3, rel=1e-2)
        cert = res.checks["certificate"]
        assert sum(int(n) for n in cols["cert"][row].split("/")) == cert["n_certified"]
        assert cols["viol"][row] == str(cert["n_violated"])
        e = [r["values"]["forgetting"] for r in res.checks["records"] if r["id"] == "C2"]
        assert float(cols["E/E_hat"][row].split("/")[0]) == pytest.approx(sum(e) / 3, rel=1e-2, abs=1e-3)
        hvp = sum(c["hvp"] for c in res.checks["cost"].values())
        assert hvp > 0 and cols["s/HVP"][row].endswith(f"/{hvp:.0f}")
    # the larger learning rate moves further from the anchors (C10 distance)
    dist = [sum(r["values"]["distance"] for r in res.checks["records"] if r["id"] == "C10") for res in results]
    assert dist[1] > dist[0]


def test_runs_without_checks_are_left_out_and_seeds_pool(results: list) -> None:
    naive = results[0]
    seed2 = dataclasses.replace(naive, seed=1)
    bare = dataclasses.replace(results[1], checks={})
    cols = columns(guarantee_table([naive, seed2, bare]))
    assert cols["strategy"] == ["naive"] and cols["runs"] == ["2"] and cols["pairs"] == ["6"]
    c2 = Counter(r["verdict"] for r in naive.checks["records"] if r["id"] == "C2")
    assert cols["C2"][0].split(" ")[0] == str(2 * c2["pass"])


@pytest.mark.parametrize("plot", [plot_predicted_vs_measured, plot_forgetting_vs_update_size])
def test_plots_are_valid_pngs(results: list, tmp_path: Path, plot) -> None:
    path = plot(results, tmp_path / "sub" / "plot.png")
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200 and img.shape[2] in (3, 4)
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas
    assert math.isfinite(float(img.mean()))


def test_cli_prints_the_table_and_writes_both_plots(results: list, run_dir: Path, capsys) -> None:
    # the finished runs in run_dir are reused (resume), so this only reports
    assert cli.main(["run", *OVERRIDES, f"output.dir={run_dir}"]) == 0
    printed = capsys.readouterr().out
    assert "guarantee checks" in printed and "naive_big" in printed
    for name in ("geometry_predicted_vs_measured.png", "geometry_forgetting_vs_update.png"):
        assert imread(run_dir / name).shape[0] > 200
