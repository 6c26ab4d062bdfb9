"""A strategy written outside the package, with a family of its own, through `cl-bench run` and `cl-bench list`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from cl_bench import registry
from cl_bench.cli import main
from cl_bench.layout import flat_params
from cl_bench.module import ContinualModule, Step
from cl_bench.registry import register, strategy_names


@dataclass
class AnchorParams:
    lam: float = 0.5


class Anchor(ContinualModule):
    """Pull towards the previous task's solution: lam/2 ||theta - theta*||^2."""

    family = "anchoring"
    Params = AnchorParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("anchor", torch.zeros(0))

    def penalty(self) -> Tensor | None:
        if self.anchor.numel() == 0:
            return None
        theta = torch.cat([p.reshape(-1) for p in self.network()])
        return 0.5 * self.params.lam * (theta - self.anchor).square().sum()

    def after_task(self, task) -> None:
        self.anchor = flat_params(self)


@pytest.fixture
def own_registry():
    """The registry as the test leaves it is restored afterwards: no other test sees its strategies."""
    from cl_bench.registry import _REGISTRY

    strategy_names()  # the built-in strategies loaded first, so that they are among what is restored
    saved = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(saved)


def test_a_strategy_with_a_new_family_runs_and_is_listed(tmp_path, capsys, own_registry) -> None:
    register("test_anchor")(Anchor)
    assert strategy_names()[-1] == "test_anchor"  # an unknown family is listed after the built-in ones
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "[anchoring] Pull towards" in listing and "R[T-1][j]" in listing  # no text eaten as markup
    rc = main(["run", "strategy=[naive,test_anchor]", "strategies.test_anchor.lam=5.0", "scenario.n_tasks=3",
               "trainer.epochs=1", "checks.enabled=false", "sweep.workers=1", f"output.dir={tmp_path}"])
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())
    runs = {r["label"]: r for r in results["runs"]}
    assert runs["test_anchor"]["family"] == "anchoring"
    assert runs["test_anchor"]["config"]["params"] == {"lam": 5.0}
    assert len(runs["test_anchor"]["acc"]) == 3
    # the anchor changes the training: the matrices differ from fine-tuning's on the same seed
    assert runs["test_anchor"]["acc"] != runs["naive"]["acc"]


def test_import_flag_registers_a_strategy_from_the_users_folder(tmp_path, monkeypatch, capsys, own_registry) -> None:
    (tmp_path / "user_strategy_mod.py").write_text(
        "from cl_bench.module import ContinualModule, Step\nfrom cl_bench.registry import register\n\n\n"
        "@register('user_naive')\nclass UserNaive(ContinualModule):\n"
        "    \"\"\"Fine-tuning, from the user's file.\"\"\"\n"
        "    family = 'user'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_strategy_mod", raising=False)
    monkeypatch.setenv("CL_BENCH_IMPORTS", "")  # restored after the test: main() sets it for workers
    monkeypatch.setattr(registry, "_IMPORTED", list(registry._IMPORTED))  # the plug-in list workers import
    assert main(["list", "--import", "user_strategy_mod"]) == 0
    assert "[user] Fine-tuning, from the user's file." in capsys.readouterr().out
    assert main(["run", "--import", "no_such_module_here"]) == 2
    assert "--import no_such_module_here: cannot import it (ModuleNotFoundError" in capsys.readouterr().err


def test_ewc_plus_er_trains_with_both_terms_and_no_new_class(tmp_path) -> None:
    """`strategy=ewc+er`: ER's replay in the task term, EWC's penalty, both consolidations after a task."""
    import torch.nn.functional as F

    from cl_bench.config import build_plan, load_config
    from cl_bench.registry import get_strategy
    from cl_bench.runner import build_module, load_scenario, run_one

    plan = build_plan(load_config([
        "scenario=split_digits", "scenario.n_tasks=3", "strategy=[ewc+er,ewc,er]", "strategies.ewc+er.lam=50",
        "strategies.ewc+er.buffer_size=100", "settings=[class_il]", "trainer.epochs=1", "checks.enabled=false",
    ]))
    spec = plan.runs[0]
    assert spec.label == "ewc+er" and spec.params["lam"] == 50 and spec.params["buffer_size"] == 100
    scenario = load_scenario(spec)
    module = build_module(spec, scenario)
    assert module.family == "local" and module.buffer.capacity == 100
    results = {s.label: run_one(s, scenario) for s in plan.runs}
    assert len({tuple(r.acc[-1]) for r in results.values()}) == 3  # three different trainings

    module.before_task(scenario.tasks[0])
    x = torch.randn(8, *scenario.input_shape)
    y, t = torch.randint(0, 2, (8,)), torch.zeros(8, dtype=torch.long)
    module.observe(Step(x, y, t))
    module.after_task(scenario.tasks[0])  # EWC's consolidation: one anchor and Fisher
    assert module.anchors.shape[0] == 1 and module.buffer.size == 8
    module.before_task(scenario.tasks[1])
    with torch.no_grad():
        for p in module.network():
            p.add_(0.01)
    torch.manual_seed(3)
    b = module.buffer.sample(module.params.minibatch_size)
    ce = F.cross_entropy(module(torch.cat([x, b.x]), torch.cat([t, b.t])), torch.cat([y, b.y]))
    expected = ce + module.penalty()
    torch.manual_seed(3)
    torch.testing.assert_close(module.step_loss(Step(x, y, t)), expected)
    assert module.buffer.size == 16  # ER's observe stored the batch
    assert float(module.penalty()) > 0

    with pytest.raises(KeyError, match="both define task_loss"):
        get_strategy("er+icarl")
