"""The Markdown report of a real (tiny) experiment: tables against brute-force statistics, plots against
the matrices."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cl_bench.cli import main
from cl_bench.figures import acc_matrix_figure, forgetting_figure, matrices_figure
from cl_bench.report import load_results, write_report
from cl_bench.results import check_rows

SETTINGS = ("class_il", "task_il")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """digits, 3 tasks, naive / ewc / joint / a diverging run, class-IL and task-IL, 2 seeds, cheap checks."""
    root = tmp_path_factory.mktemp("report")
    exp = root / "exp.yaml"
    exp.write_text("name: tiny\nstrategy: [naive, ewc, joint, diverge]\n"
                   "strategies:\n  diverge: {class: naive, optimizer: {lr: 1.0e+30}}\n")
    code = main([
        "run", "--config", str(exp), "scenario.n_tasks=3", "trainer.epochs=1", "trainer.train_loss_probe=50",
        "settings=[class_il,task_il]", "seeds=[0,1]", "sweep.workers=1", f"output.dir={root / 'results'}",
        "checks.k=2", "checks.probe_size=100", "checks.lanczos_iters=10", "checks.lipschitz.enabled=false",
        "checks.which=[C0,C1,C2,C4,C6]",
    ])
    assert code == 1  # the diverging runs failed, the others went on
    readme = write_report(root / "results", root / "out")
    _, runs, _ = load_results(root / "results")
    return SimpleNamespace(root=root, readme=readme, text=readme.read_text(), runs=runs)


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    nxt = re.search(r"\n#{1,3} ", text[start + len(heading) + 2:])
    return text[start: start + len(heading) + 2 + nxt.start()] if nxt else text[start:]


def _table(section: str) -> list[dict[str, str]]:
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _runs(report: SimpleNamespace, setting: str, label: str) -> list:
    return [r for r in report.runs if r.setting == setting and r.label == label and r.status == "ok"]


def test_metric_table_is_mean_and_std_over_seeds(report: SimpleNamespace) -> None:
    for setting in SETTINGS:
        rows = {row["strategy"]: row for row in _table(_section(report.text, f"## {setting}"))}
        assert list(rows) == ["naive", "ewc", "joint"]  # the failed label has no row
        best = max(("naive", "ewc", "joint"),
                   key=lambda lb: statistics.fmean(r.metrics["acc"] for r in _runs(report, setting, lb)))
        for label, row in rows.items():
            runs = _runs(report, setting, label)
            assert row["seeds"] == "2" and len(runs) == 2
            for metric, column in (("acc", "acc"), ("forgetting", "forgetting ↓"), ("bwt", "bwt")):
                values = [r.metrics.get(metric) for r in runs]
                if None in values:
                    assert row[column] == "n/a"
                    continue
                expected = f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
                assert row[column].strip("*") == expected, (setting, label, metric)
            assert row["acc"].startswith("**") == (label == best)
        assert rows["joint"]["aia"] == "n/a"
    assert "`fwt` undefined for naive, ewc: class-IL" in _section(report.text, "## class_il")


def test_setup_names_scenario_model_seeds_versions_and_failures(report: SimpleNamespace) -> None:
    text = _section(report.text, "## Setup")
    assert "n_tasks=3" in text and "source=digits" in text and "| seeds | 0, 1 |" in text
    assert "| settings | class_il, task_il |" in text and f"torch {version('torch')}" in text
    strategies = {row["label"]: row for row in _table(_section(report.text, "### Strategies"))}
    assert strategies["ewc"]["family"] == "local" and "lam=" in strategies["ewc"]["hyper-parameters"]
    assert "lr=1e+30" in strategies["diverge"]["optimizer"]
    failed = [r for r in report.runs if r.status != "ok"]
    assert len(failed) == 4 and all(f"- `{r.run_id}`: {r.error}" in report.text for r in failed)
    assert "16 runs, 4 failed" in report.text


def test_plots_are_linked_and_readable(report: SimpleNamespace) -> None:
    links = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", report.text)
    assert links == [f"{kind}_{s}.png" for s in SETTINGS for kind in ("acc_matrix", "forgetting")]
    for link in links:
        with Image.open(report.readme.parent / link) as img:
            assert img.format == "PNG" and img.width > 600 and img.height > 250
    assert "joint training has a single evaluation row" in report.text


def test_heatmaps_show_the_mean_matrix_in_every_cell(report: SimpleNamespace) -> None:
    means = {}
    for label in ("naive", "ewc"):
        runs = _runs(report, "task_il", label)
        means[label] = [[sum(r.acc[t][j] for r in runs) / len(runs) for j in range(3)] for t in range(3)]
    fig = matrices_figure({lb: np.array(m) for lb, m in means.items()}, "t")
    heat_axes = [ax for ax in fig.axes if ax.get_title() in means]
    for ax in heat_axes:
        assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for row in means[ax.get_title()] for v in row]
        np.testing.assert_allclose(ax.images[0].get_array(), means[ax.get_title()], rtol=1e-12)
    assert any(ax.get_ylabel() == "test accuracy (mean over seeds)" for ax in fig.axes)  # the colour bar
    single = acc_matrix_figure(_runs(report, "class_il", "joint")[0].acc, "joint", joint=True)
    assert [t.get_text() for t in single.axes[0].get_yticklabels()] == ["joint"]


def test_forgetting_curves_follow_each_task_from_when_it_was_trained(report: SimpleNamespace) -> None:
    stats = {}
    for label in ("naive", "ewc"):
        acc = np.array([r.acc for r in _runs(report, "class_il", label)])
        stats[label] = (acc.mean(0), acc.std(0, ddof=1))
    stats["ewc_again"] = stats["ewc"]
    families = {"naive": "baseline", "ewc": "local", "ewc_again": "global"}  # one row per non-baseline family
    fig = forgetting_figure(stats, "t", families)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("task ")]
    assert [ax.get_title() for ax in panels] == ["task 0", "task 1", "task 2"] * 2
    assert [panels[0].get_ylabel(), panels[3].get_ylabel()] == ["local\ntest accuracy", "global\ntest accuracy"]
    for i, ax in enumerate(panels):
        j = i % 3
        lines = {ln.get_label(): ln for ln in ax.lines if not ln.get_label().startswith("_")}
        assert set(lines) == {"naive", ["ewc", "ewc_again"][i // 3]}  # the baseline is a reference in every row
        assert lines["naive"].get_linestyle() == "--"
        for label in lines:
            runs = _runs(report, "class_il", label.replace("_again", ""))
            expected = [sum(r.acc[t][j] for r in runs) / 2 for t in range(j, 3)]
            assert lines[label].get_xdata().tolist() == list(range(j + 1, 4))
            assert lines[label].get_ydata().tolist() == pytest.approx(expected)


def test_forgetting_axis_zooms_in_only_when_every_trained_point_is_high() -> None:
    """The y axis starts at 0 unless every trained point (t >= j) has mean - std >= 0.5; the untrained
    upper triangle (chance level before task j is learned) never lowers it."""
    high = np.array([[0.99, 0.50, 0.48], [0.97, 0.98, 0.51], [0.93, 0.96, 0.99]])
    std = np.full((3, 3), 0.01)
    std[2, 0] = 0.02  # lowest trained point: 0.93 - 0.02 = 0.91 -> floor to 0.9
    fig = forgetting_figure({"a": (high, std)}, "t", {"a": "local"})
    lo, hi = fig.axes[0].get_ylim()
    assert lo == pytest.approx(0.9 - 0.02 * 0.1) and hi == pytest.approx(1 + 0.02 * 0.1)
    low = high.copy()
    low[2, 0] = 0.45  # one forgotten task: the full range
    fig = forgetting_figure({"a": (low, std)}, "t", {"a": "local"})
    assert fig.axes[0].get_ylim() == pytest.approx((-0.02, 1.02))


def test_guarantee_check_summary_counts_every_record(report: SimpleNamespace) -> None:
    for setting in SETTINGS:
        rows = {row["strategy"]: row for row in _table(_section(report.text, f"### Guarantee checks ({setting})"))}
        assert set(rows) == {"naive", "ewc"}  # joint runs no checks
        for label, row in rows.items():
            runs = _runs(report, setting, label)
            counts = Counter((rec["id"], rec["verdict"]) for r in runs for rec in check_rows(r.checks))
            for check in ("C0", "C1", "C2", "C4", "C6"):
                assert row[check] == f"{counts[(check, 'pass')]}/{counts[(check, 'fail')]}/{counts[(check, 'n/a')]}"
            pairs = sum(r.checks["certificate"]["n_pairs"] for r in runs)
            certified = sum(r.checks["certificate"]["n_certified"] for r in runs)
            assert pairs == 2 * 3 and row["certified pairs"].startswith(f"{certified}/{pairs} (")


def test_cli_report(report: SimpleNamespace, tmp_path: Path, capsys) -> None:
    assert main(["report", str(report.root / "results"), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "README.md").read_text() == report.text  # deterministic: no dates, no out paths
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "results.json not found" in capsys.readouterr().err
