"""Regression gate: band logic, and a planted regression caught by `cl-bench regress` on real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cl_bench.buffer import Buffer, BufferSample
from cl_bench.cli import main
from cl_bench.regress import DEFAULT_FLOORS, Row, blind_spots, compare, parse_floors, run_metrics, summarize
from cl_bench.results import RunResult


def stat(values: list[float]) -> dict:
    return summarize([result(v) for v in values])["class_il/x"]["acc"]


def result(acc: float, **checks: dict) -> RunResult:
    return RunResult(run_id="r", label="x", strategy="x", family="baseline", setting="class_il", seed=0,
                     scenario="s", config={}, config_hash="h", metrics={"acc": acc, "forgetting": 1 - acc, "fwt": None},
                     checks=checks)


def test_summary_is_mean_and_sample_std_and_checks_become_pass_rates() -> None:
    s = stat([0.5, 0.7, 0.9])
    assert s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(0.2) and s["n"] == 3
    r = result(0.5, verdicts={"C2": {"pass": 3, "fail": 1, "n/a": 6}, "C10": {"n/a": 4}},
               certificate={"n_certified": 4, "n_certified_violated": 1})
    m = run_metrics(r)
    assert m["check_C2"] == 0.75 and "check_C10" not in m  # n/a records are not votes
    assert m["certificate_violations"] == 0.25 and "fwt" not in m  # undefined metrics are not gated


def test_band_is_max_of_k_std_and_floor_and_one_sided_by_direction() -> None:
    base = {"k": {"acc": {"mean": 0.80, "std": 0.02}, "forgetting": {"mean": 0.20, "std": 0.0},
                  "check_C2": {"mean": 0.5, "std": 0.0}}}

    def rows(acc: float, forgetting: float, c2: float) -> dict[str, Row]:
        now = {"k": {"acc": {"mean": acc}, "forgetting": {"mean": forgetting}, "check_C2": {"mean": c2}}}
        return {r.metric: r for r in compare(base, now, k=3.0)}

    r = rows(0.75, 0.22, 0.6)
    assert r["acc"].band == pytest.approx(0.06)  # 3 * 0.02 > floor 0.03
    assert r["forgetting"].band == DEFAULT_FLOORS["forgetting"]  # std 0: the floor
    assert not any(x.regressed for x in r.values())
    r = rows(0.73, 0.24, 0.75)  # acc down 0.07 > 0.06, forgetting up 0.04 > 0.03, C2 pass rate moved 0.25 > 0.2
    assert r["acc"].regressed and r["forgetting"].regressed and r["check_C2"].regressed
    r = rows(0.99, 0.0, 0.25)  # better accuracy and forgetting are no regression; a check rate moving is
    assert not r["acc"].regressed and not r["forgetting"].regressed and r["check_C2"].regressed
    missing = compare(base, {}, k=3.0)
    assert all(x.regressed and x.now is None for x in missing)  # a failed run is a regression


def test_blind_spots_are_strategies_inside_the_band_of_fine_tuning() -> None:
    naive = {"acc": {"mean": 0.20, "std": 0.01}, "forgetting": {"mean": 0.95, "std": 0.01}}
    metrics = {
        "class_il/naive": naive,
        "class_il/same": {"acc": {"mean": 0.21, "std": 0.01}, "forgetting": {"mean": 0.94, "std": 0.01}},
        "class_il/er": {"acc": {"mean": 0.60, "std": 0.04}, "forgetting": {"mean": 0.45, "std": 0.04}},
        "task_il/other": {"acc": {"mean": 0.21, "std": 0.01}},  # no task-IL naive: nothing to compare with
    }
    assert blind_spots(metrics) == ["class_il/same"]


def test_floors_parse_and_reject_bad_input() -> None:
    assert parse_floors(["acc=0.05", "check=0.1"]) == {"acc": 0.05, "check": 0.1}
    for bad in (["accuracy=0.1"], ["acc"], ["acc=x"], ["acc=-1"]):
        with pytest.raises(ValueError, match="--floor"):
            parse_floors(bad)


def first_slots(self: Buffer, n: int, generator: torch.Generator | None = None) -> BufferSample:
    """A planted bug: the replay draw always returns the first slots instead of a uniform sample."""
    idx = torch.arange(min(n, self.size), device=self.y.device)
    return BufferSample(self.x[idx], self.y[idx], self.t[idx], self.logits[idx], idx)


def regress(capsys: pytest.CaptureFixture, base: Path, runs: Path, *overrides: str) -> tuple[int, str]:
    code = main(["regress", "--baseline", str(base), "--runs-dir", str(runs), "--workers", "1", *overrides])
    return code, capsys.readouterr().out


def test_gate_passes_unperturbed_code_and_catches_planted_regressions(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the gate's own Split-Digits experiment, cut to three strategies, class-IL, no checks
    small = ["experiment=baseline_split_digits", "strategy=[naive,ewc,er]", "settings=[class_il]",
             "checks.enabled=false", "trainer.train_loss_probe=200"]
    assert main(["baseline", "--out", str(tmp_path), "--runs-dir", str(tmp_path / "b"), "--workers", "1", *small]) == 0
    base = tmp_path / "baseline_split_digits.json"
    data = json.loads(base.read_text())
    assert data["seeds"] == [0, 1, 2] and len(data["run_hashes"]) == 9 and "torch" in data["versions"]
    er = data["metrics"]["class_il/er"]["acc"]
    assert er["n"] == 3 and er["std"] > 0 and len(er["values"]) == 3
    assert data["blind_to"] == []  # both ewc and er differ from fine-tuning beyond their bands
    capsys.readouterr()

    code, out = regress(capsys, base, tmp_path / "same")
    assert code == 0, out
    assert "regression gate passed" in out

    # planted: replay draws the same first slots every step, and EWC's penalty is switched off
    monkeypatch.setattr(Buffer, "sample", first_slots)
    code, out = regress(capsys, base, tmp_path / "planted", "strategies.ewc.lam=0.0")
    assert code == 1, out
    assert "REGRESSIONS" in out and "regression gate FAILED" in out
    rows = json.loads((tmp_path / "planted" / "baseline_split_digits" / "regress.json").read_text())["rows"]
    bad = {(r["key"], r["metric"]) for r in rows if r["regressed"]}
    assert ("class_il/er", "acc") in bad and ("class_il/er", "forgetting") in bad
    assert ("class_il/ewc", "loss_forgetting") in bad
    assert not any(key == "class_il/naive" for key, _ in bad)  # the untouched strategy stays inside its band
    assert "class_il/er" in out and "class_il/ewc" in out and "loss_forgetting" in out
    assert "configuration differs from the baseline for 3 runs" in out  # the lam override changed ewc's hash


GOOD = {"schema": 1, "name": "tiny", "overrides": ["strategy=naive", "scenario.n_tasks=2", "trainer.epochs=1",
                                                   "settings=[class_il]", "checks.enabled=false"],
        "config_file": None, "run_hashes": {}, "metrics": {"class_il/naive": {"acc": {"mean": 0.5, "std": 0.0}}}}


@pytest.mark.parametrize(("content", "message"), [
    ("[1, 2]", "holds a JSON list, not a baseline object"),
    ({k: v for k, v in GOOD.items() if k != "overrides"}, "has no 'overrides'"),
    ({k: v for k, v in GOOD.items() if k != "metrics"}, "has no 'metrics'"),
    ({**GOOD, "metrics": {"class_il/naive": {"acc": {"mean": "high"}}}}, "needs numeric 'mean' and 'std'"),
    ({**GOOD, "metrics": {"class_il/naive": {"acurracy": {"mean": 0.5, "std": 0}}}}, "unknown metric 'acurracy'"),
    ('{"schema": 1, "name": ', "not valid JSON"),
])
def test_an_unusable_baseline_is_rc_2_before_anything_trains(tmp_path: Path, capsys, content, message) -> None:
    base = tmp_path / "base.json"
    base.write_text(content if isinstance(content, str) else json.dumps(content))
    good = tmp_path / "good.json"  # a valid baseline first: the bad one is found before it trains
    good.write_text(json.dumps(GOOD))
    runs = tmp_path / "runs"
    code = main(["regress", "--baseline", str(good), "--baseline", str(base), "--runs-dir", str(runs),
                 "--workers", "1"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 2 and f"error: {base}: " in out and message in out and "regenerate it with" in out
    assert not runs.exists()
