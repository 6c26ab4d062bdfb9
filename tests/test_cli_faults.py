"""`cl-bench report` on unusable input: one error line naming the file, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from cl_bench.cli import main

TINY = ["strategy=naive", "scenario.n_tasks=2", "trainer.epochs=1", "trainer.train_loss_probe=50",
        "settings=[class_il]", "checks.enabled=false", "sweep.workers=1"]


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "results"
    assert main(["run", *TINY, f"output.dir={out}"]) == 0
    return out


def test_report_out_naming_a_file_is_one_clear_error(results_dir: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "report.md"
    target.write_text("an earlier report")
    assert main(["report", str(results_dir), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {target}: {target} is a file, not a folder; name a folder for the report\n"
    assert target.read_text() == "an earlier report"


@pytest.mark.parametrize("content", ['{"name": "x", "runs": [', '[1, 2]', '{"runs": [{"run_id": 3}]}'])
def test_a_damaged_results_json_is_named(tmp_path: Path, capsys, content: str) -> None:
    (tmp_path / "results.json").write_text(content)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'results.json'}: not a readable results file (") and err.count("\n") == 1
