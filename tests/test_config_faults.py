"""Bad experiment configurations are refused before any training, with the key to fix named."""

from __future__ import annotations

import pytest
import torch

from cl_bench.cli import main
from cl_bench.config import ConfigError, build_plan, load_config


@pytest.mark.parametrize(("override", "message"), [
    ("seeds=[0,0]", "seeds lists [0] more than once"),
    ("strategy=[naive,naive]", "strategy lists ['naive'] more than once"),
    ("output.dirr=elsewhere", "output.dirr"),
    ("data.rooot=/tmp", "data.rooot"),
    ("output.dir=", "output: dir is empty"),
    ("output.checkpoint_every_s=-1", "output: checkpoint_every_s must be >= 0 seconds, got -1"),
])
def test_bad_values_are_refused_with_the_key_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        build_plan(load_config(["strategy=naive", override]))
    assert message in str(err.value)


def test_the_cli_refuses_before_writing_anything(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["run", "seeds=[1,1]", f"output.dir={out}"]) == 2
    assert "config error: seeds lists [1] more than once" in capsys.readouterr().out
    assert not out.exists()


@pytest.mark.parametrize(("override", "message"), [
    ("seeds=[0,-1]", "seeds [-1] outside [0, 4294967295]"),
    ("seeds=[4294967296]", "seeds [4294967296] outside"),
    ("trainer.precision=17", "precision='17' is not one of Lightning's"),
    ("optimizer.lr=.inf", "optimizer.lr=inf is not a finite number"),
    ("strategies.naive.optimizer.lr=.nan", "strategies.naive.optimizer.lr=nan is not a finite number"),
])
def test_out_of_range_values_are_refused_before_any_run(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_plan(load_config(["strategy=naive", override]))
    assert message in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_missing_gpu_is_refused_before_any_training(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["run", "strategy=naive", "seeds=[0,1]", "settings=[class_il]", "scenario.n_tasks=2",
                 "trainer.epochs=1", "checks.enabled=false", "trainer.accelerator=gpu", f"output.dir={out}"])
    assert code == 2
    assert "trainer.accelerator=gpu but no CUDA device is visible" in capsys.readouterr().out
    assert not (out / "runs").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize(("content", "message"), [
    ("name: x\nstrategy: [naive\n", "not valid YAML"),
    ("- name: x\n- strategy: naive\n", "the file holds a list, not a mapping"),
    (None, "is a directory; name a YAML file"),
])
def test_a_bad_config_file_is_one_error_naming_it(tmp_path, capsys, content, message) -> None:
    path = tmp_path / "exp.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    assert main(["run", "--config", str(path), f"output.dir={tmp_path / 'out'}"]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"config error: --config {path}: ") and message in out
    assert not (tmp_path / "out").exists()


def test_flags_may_stand_between_overrides(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["run", "strategy=naive", "--dry-run", f"output.dir={out}", "settings=[class_il]"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"1 runs -> {out}"
    with pytest.raises(SystemExit):
        main(["run", "strategy=naive", "--dry-run", "--no-such-flag"])


def test_a_misspelt_label_under_strategies_is_an_error_naming_the_labels():
    with pytest.raises(ConfigError, match=r"strategies\.sii: no such label; did you mean strategies\.si\? the labels "
                                          r"of `strategy` are naive, si"):
        build_plan(load_config(["strategy=[naive,si]", "strategies.sii.lam=5"]))
    # registered strategies and variants with their own class stay valid when not selected
    plan = build_plan(load_config(["strategy=naive", "strategies.ewc.lam=5", "strategies.my_ewc.class=ewc"]))
    assert {s.label for s in plan.runs} == {"naive"}
