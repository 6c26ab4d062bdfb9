"""The example of docs/writing_a_strategy.md, executed as written: its files, its Python blocks and its commands."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from cl_bench import registry
from cl_bench.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing_a_strategy.md"
BLOCK = re.compile(r"<!-- (file: (?P<file>\S+)|run|commands) -->\n```\w+\n(?P<code>.*?)```", re.S)


def doc_steps() -> list[tuple[str, str, str]]:
    """(kind, file name, code) of every marked block, in the page's order."""
    steps = []
    for m in BLOCK.finditer(DOC.read_text()):
        kind = "file" if m.group("file") else m.group(0).split()[1]
        steps.append((kind, m.group("file") or "", m.group("code")))
    return steps


@pytest.fixture
def clean_registry(tmp_path, monkeypatch):
    registry.strategy_names()
    saved = (dict(registry._REGISTRY), dict(registry.MODELS), list(registry._IMPORTED))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(registry.IMPORTS_ENV, "")
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved[0])
    registry.MODELS.clear()
    registry.MODELS.update(saved[1])
    registry._IMPORTED[:] = saved[2]
    sys.modules.pop("my_plugin", None)


@pytest.mark.slow
def test_the_documented_plug_in_runs_as_written(clean_registry, capsys) -> None:
    steps = doc_steps()
    assert [k for k, _, _ in steps] == ["file", "run", "commands", "run"]
    for kind, name, code in steps:
        if kind == "file":
            Path(name).write_text(code)
        elif kind == "run":
            exec(compile(code, str(DOC), "exec"), {"__name__": "__doc_example__"})
        else:
            for line in code.strip().splitlines():
                argv = shlex.split(line)
                assert argv[0] == "cl-bench" and main(argv[1:]) == 0, line
    out = capsys.readouterr().out
    assert "[anchoring] Pull towards the previous task's solution" in out  # cl-bench list
    assert "my_net" in out and "[registered] Two hidden layers" in out
    printed = [ln for ln in out.splitlines() if ln.endswith(" my_digits")]
    assert printed, "the Python block prints the last accuracy row and the data's name"
    results = __import__("cl_bench").load_results("out")
    anchor, naive = results.run("class_il/my_anchor/seed0"), results.run("class_il/naive/seed0")
    assert anchor.config["model"] == {"name": "my_net", "width": 32}
    assert anchor.config["data"]["source"]["x_train"] == [500, 1, 8, 8]
    assert anchor.acc != naive.acc  # the penalty changed the training
