"""Bad experiment configurations are refused before any training, with the key to fix named."""

from __future__ import annotations

import pytest

from cl_bench.cli import main
from cl_bench.config import ConfigError, build_plan, load_config


@pytest.mark.parametrize(("override", "message"), [
    ("seeds=[0,0]", "seeds lists [0] more than once"),
    ("strategy=[naive,naive]", "strategy lists ['naive'] more than once"),
    ("output.dirr=elsewhere", "output.dirr"),
    ("data.rooot=/tmp", "data.rooot"),
    ("output.dir=", "output: dir is empty"),
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
