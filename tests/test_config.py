"""Config composition and validation: every mistake names its key, before any training."""

from __future__ import annotations

from pathlib import Path

import pytest

from cl_bench.config import ConfigError, build_plan, load_config
from cl_bench.registry import strategy_names

ROOT = Path(__file__).resolve().parents[1]


def plan(*overrides: str, config_file: str | None = None):
    return build_plan(load_config(list(overrides), config_file))


def test_default_runs_every_strategy_in_both_settings() -> None:
    p = plan()
    names = strategy_names()
    assert {"naive", "joint"} <= set(names)
    assert len(p.runs) == 2 * len(names)
    assert {r.setting for r in p.runs} == {"class_il", "task_il"}
    assert p.runs[0].scenario["source"] == "digits"


def test_overrides_select_groups_and_fields() -> None:
    p = plan("scenario=split_mnist", "strategy=naive", "trainer.epochs=2", "seeds=[0,1,2]", "settings=[task_il]")
    assert [r.run_id for r in p.runs] == [f"task_il/naive/seed{s}" for s in (0, 1, 2)]
    assert all(r.trainer["epochs"] == 2 and r.scenario["source"] == "mnist" for r in p.runs)


def test_field_override_after_group_selection() -> None:
    p = plan("scenario=split_mnist", "scenario.n_tasks=2", "strategy=[naive]")
    assert p.runs[0].scenario["n_tasks"] == 2


def test_strategy_overrides_optimizer_per_label(tmp_path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "name: t\nstrategy: [a, b]\nstrategies:\n  a: {class: naive, optimizer: {lr: 0.5}}\n  b: {class: naive}\n"
    )
    p = plan("settings=[class_il]", config_file=str(exp))
    lrs = {r.label: r.optimizer["lr"] for r in p.runs}
    assert lrs == {"a": 0.5, "b": 0.05}
    assert {r.strategy_class for r in p.runs} == {"naive"}


def test_group_mapping_with_base() -> None:
    p = plan("strategy=naive", "settings=[class_il]")
    cfg = load_config(["strategy=naive"])
    cfg.scenario = {"_base": "split_digits", "n_tasks": 2}
    from cl_bench.config import _resolve_group

    resolved = _resolve_group("scenario", cfg.scenario)
    assert resolved.n_tasks == 2 and resolved.source == "digits"
    assert p.runs[0].scenario["n_tasks"] == 5


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["scenario=nope"], "unknown scenario 'nope'; valid:"),
        (["model=nope"], "unknown model 'nope'; valid:"),
        (["strategy=nope"], "unknown strategy 'nope'; valid: naive"),
        (["trainer.epochs=abc"], "trainer.epochs"),
        (["trainer.epochs=0"], "epochs must be >= 1"),
        (["optimizer.lr=-1"], "optimizer.lr must be > 0"),
        (["optimizer.name=rmsprop"], "optimizer.name='rmsprop'; valid: sgd, adam, adamw"),
        (["strategies.naive.foo=1", "strategy=naive"], "strategies.naive.foo"),
        (["settings=[class_il,nope]"], "unknown setting 'nope'"),
        (["seeds=[0,x]"], "seeds must be"),
        (["bogus=1"], "unknown top-level key(s) ['bogus']"),
        (["experiment=nope"], "unknown experiment 'nope'"),
        (["trainer.batch_size"], "not of the form key=value"),
        (["scenario.kind=spiral"], "scenario.kind"),
        (["scenario.classes_per_task=3"], "scenario.classes_per_task"),
    ],
)
def test_errors_name_the_key(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        plan(*overrides)
    assert needle in str(err.value)


def test_config_hash_changes_with_hyperparameters() -> None:
    a = plan("strategy=naive", "settings=[class_il]").runs[0]
    b = plan("strategy=naive", "settings=[class_il]", "optimizer.lr=0.1").runs[0]
    assert a.config_hash() != b.config_hash()
    assert a.config_hash() == plan("strategy=naive", "settings=[class_il]").runs[0].config_hash()


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")))
def test_every_shipped_experiment_config_validates(name: str) -> None:
    """Each file under configs/experiment/ expands into runs (every section checked, nothing trained)."""
    plan = build_plan(load_config([f"experiment={name}"]))
    assert plan.runs and plan.name == name
