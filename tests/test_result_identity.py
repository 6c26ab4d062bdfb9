"""A stored result is reused only for the same configuration and the same data, and never lost:
data files changed under the same settings retrain, unrelated experiments get their own default
folder, results.json holds every finished run of its folder, a replaced result is moved aside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_data_sources import write_mnist

from cl_bench.cli import main
from cl_bench.config import build_plan, load_config
from cl_bench.data.sources import DATA_ENV, clear_source_cache
from cl_bench.runner import execute, finished, result_path

TINY = ["scenario.n_tasks=2", "trainer.epochs=1", "trainer.train_loss_probe=50", "settings=[class_il]",
        "checks.enabled=false", "sweep.workers=1"]
MNIST = ["scenario=split_mnist", "model=mlp_100", "scenario.n_tasks=2", "trainer.epochs=1",
         "trainer.train_loss_probe=50", "settings=[class_il]", "checks.enabled=false", "strategy=naive"]


def trained_tasks(out: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Run the tiny MNIST plan on the files under ``data`` into ``out``; the tasks it trained."""
    monkeypatch.setenv(DATA_ENV, str(data))
    clear_source_cache()
    trained: list[int] = []
    list(execute(build_plan(load_config([*MNIST, f"output.dir={out}"])), on_task_end=lambda s, t, m: trained.append(t)))
    return trained


def test_changed_data_under_the_same_settings_is_retrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_mnist(a, "MNIST", n_train=200, n_test=80, seed=0)
    write_mnist(b, "MNIST", n_train=200, n_test=80, seed=1)  # same format and sizes, other images and labels
    out = tmp_path / "out"
    assert trained_tasks(out, a, monkeypatch) == [0, 1]
    assert trained_tasks(out, b, monkeypatch) == [0, 1]  # B's data: A's result is not reused
    (spec,) = build_plan(load_config([*MNIST, f"output.dir={out}"])).runs
    stored = json.loads(result_path(out, spec).read_text())
    assert stored["data_root"] == str(b.resolve())
    assert set(stored["config"]["data"]["files"]) == {f"MNIST/raw/{f}" for f in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

    copy = tmp_path / "copy_of_b"
    shutil.copytree(b, copy)
    assert trained_tasks(out, copy, monkeypatch) == []  # the same bytes elsewhere: the result stands
    (fresh,) = build_plan(load_config([*MNIST, f"output.dir={out}"])).runs  # nothing loaded: finished() alone
    assert finished(result_path(out, fresh), fresh) is not None
    monkeypatch.setenv(DATA_ENV, str(a))
    assert finished(result_path(out, fresh), fresh) is None
    clear_source_cache()


def test_default_folder_is_per_experiment(tmp_path: Path) -> None:
    def folder(*overrides: str) -> Path:
        return build_plan(load_config([*TINY, *overrides])).output_dir

    naive, ewc = folder("strategy=naive"), folder("strategy=ewc")
    assert naive == ewc and naive.parent == Path("results") and naive.name.startswith("default-")
    assert folder("strategy=naive", "seeds=[0,1]") == naive  # more seeds of the same experiment join it
    others = {folder("strategy=naive", o) for o in
              ("optimizer.lr=0.1", "trainer.epochs=2", "scenario.n_tasks=5", "model.widths=[50]", "data.root=/x")}
    assert len(others) == 5 and naive not in others
    assert folder("strategy=naive", f"output.dir={tmp_path}") == tmp_path


def test_results_json_keeps_every_experiment_run_into_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", *TINY, "strategy=naive", f"output.dir={out}"]) == 0
    assert main(["run", *TINY, "strategy=ewc", f"output.dir={out}"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert sorted(r["run_id"] for r in data["runs"]) == ["class_il/ewc/seed0", "class_il/naive/seed0"]
    assert set(data["aggregate"]) == {"class_il/ewc", "class_il/naive"}


def test_a_result_of_another_configuration_is_moved_aside_and_named(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["run", *TINY, "strategy=naive", f"output.dir={out}"]) == 0
    first = build_plan(load_config([*TINY, "strategy=naive", f"output.dir={out}"])).runs[0]
    path = result_path(out, first)
    old = path.read_text()
    old_hash = json.loads(old)["config_hash"]
    capsys.readouterr()
    assert main(["run", *TINY, "strategy=naive", "optimizer.lr=0.1", f"output.dir={out}"]) == 0
    aside = out / "superseded" / "class_il" / "naive" / f"seed0-{old_hash}.json"
    assert aside.read_text() == old  # the earlier result, byte for byte
    assert json.loads(path.read_text())["config"]["optimizer"]["lr"] == 0.1
    assert f"note: {path} held a result of another configuration ({old_hash}" in capsys.readouterr().err


def test_returning_to_a_configuration_restores_its_result_untrained(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["run", *TINY, "strategy=naive", f"output.dir={out}"]) == 0
    first = result_path(out, build_plan(load_config([*TINY, "strategy=naive", f"output.dir={out}"])).runs[0])
    original = first.read_text()
    assert main(["run", *TINY, "strategy=naive", "optimizer.lr=0.1", f"output.dir={out}"]) == 0
    trained: list[int] = []
    list(execute(build_plan(load_config([*TINY, "strategy=naive", f"output.dir={out}"])),
                 on_task_end=lambda s, t, m: trained.append(t)))
    assert trained == [] and first.read_text() == original
    assert "the result of this configuration restored from" in capsys.readouterr().err
