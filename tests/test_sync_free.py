"""Training steps without a host sync: non-finite losses reported with their exact step, buffer bookkeeping."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import Tensor

from cl_bench import buffer
from cl_bench.buffer import Buffer
from cl_bench.config import build_plan, load_config
from cl_bench.data import Scenario
from cl_bench.module import ContinualModule, Step
from cl_bench.registry import _REGISTRY, register, strategy_names
from cl_bench.runner import build_module, execute, load_scenario

FAST = ["scenario.n_tasks=3", "trainer.epochs=2", "trainer.train_loss_probe=100", "settings=[class_il]",
        "checks.enabled=false", "trainer.num_threads=1", "sweep.workers=1"]


class NaNAt(ContinualModule):
    """Fine-tuning whose loss is NaN at one step (task 1, epoch 1, batch 3), counted on the host."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.calls = 0

    def task_loss(self, step: Step) -> Tensor:
        loss = super().task_loss(step)
        hit = self.current_task == 1 and self.current_epoch == 1 and self.calls == 3
        self.calls += 1
        return loss * float("nan") if hit else loss


@pytest.fixture
def nan_strategy():
    strategy_names()  # the built-in strategies are loaded before the registry is saved
    saved = dict(_REGISTRY)
    register("test_nan_at")(NaNAt)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(saved)


def test_nan_loss_is_reported_with_its_task_epoch_and_step(tmp_path: Path, nan_strategy) -> None:
    plan = build_plan(load_config([*FAST, "strategy=test_nan_at", f"output.dir={tmp_path}"]))
    (result,) = execute(plan)
    assert result.status == "failed"
    assert "non-finite loss nan in task 1, epoch 1, step 3" in result.error
    assert len(result.acc) == 1  # task 0 finished; nothing of task 1 recorded


def test_check_finite_keeps_the_first_bad_step_on_the_device() -> None:
    from cl_bench.data import build_scenario

    scenario = build_scenario({"kind": "split", "source": "digits", "setting": "class_il", "n_tasks": 5,
                               "classes_per_task": 2})
    module = ContinualModule(torch.nn.Linear(1, 1), scenario)
    for i, v in enumerate([1.0, 2.0, float("inf"), float("nan")]):
        module.check_finite(torch.tensor(v), i)
    assert int(module._bad_step) == 2 and float(module._bad_loss) == float("inf")


class HostRead(AssertionError):
    """A tensor's value was read on the host."""


@contextmanager
def no_host_read(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inside the block the Python-level ways a tensor's value reaches the host raise (item, tolist,
    bool/int/float conversion, nonzero, unique): on a GPU each would wait for the device. The code takes
    its accelerator paths (on the CPU, where host reads are free, the buffer writes by index)."""
    with monkeypatch.context() as m:
        m.setattr(buffer, "host_reads_are_free", lambda device: False)
        def refuse(*args, **kwargs):
            raise HostRead("host read of a tensor value")

        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "unique"):
            m.setattr(torch.Tensor, name, refuse)
        m.setattr(torch, "nonzero", refuse)
        m.setattr(torch, "unique", refuse)
        yield


def test_the_detector_catches_a_host_read(monkeypatch) -> None:
    with pytest.raises(HostRead), no_host_read(monkeypatch):
        bool(torch.ones(1).nonzero().numel())


@pytest.mark.parametrize(("policy", "n_groups"), [("reservoir", 0), ("class_balanced", 6), ("task_balanced", 6)])
def test_buffer_add_reads_nothing_on_the_host(monkeypatch, policy: str, n_groups: int) -> None:
    g = torch.Generator().manual_seed(0)
    buf = Buffer(20, (3,), n_logits=2, policy=policy, n_groups=n_groups)
    batches = [(torch.randn(8, 3, generator=g), torch.randint(0, 6, (8,), generator=g),
                torch.randint(0, 6, (8,), generator=g), torch.randn(8, 2, generator=g)) for _ in range(6)]
    with no_host_read(monkeypatch):
        for x, y, t, z in batches:  # filling, then full
            buf.add(x, y, t, logits=z, generator=g)
    assert buf.size == 20 and buf.n_seen == 48


def build(strategy: str, *overrides: str) -> tuple[ContinualModule, Scenario]:
    plan = build_plan(load_config([*FAST, f"strategy={strategy}", "output.dir=unused", *overrides]))
    spec = plan.runs[0]
    scenario = load_scenario(spec)
    return build_module(spec, scenario), scenario


@pytest.mark.parametrize("strategy", ["naive", "er", "der", "derpp", "agem", "ewc", "si"])
def test_a_training_step_reads_nothing_on_the_host(monkeypatch, strategy: str) -> None:
    """Terms, observe (buffer insertion), the NaN check, backward and the gradient transform of a step
    of task 1 with a filled buffer."""
    module, scenario = build(strategy)
    task0, task1 = scenario.tasks[:2]
    module.before_task(task0)
    batch0 = (module_input(task0, scenario), task0.y_train[:32], torch.zeros(32, dtype=torch.long))
    module.step_loss(Step(*batch0))
    module.after_task(task0)
    module.before_task(task1)
    batch = (module_input(task1, scenario), task1.y_train[:32], torch.ones(32, dtype=torch.long))
    with no_host_read(monkeypatch):
        loss = module.step_loss(Step(*batch))
        loss.backward()
        module.transform_gradients()
    assert int(module._bad_step) == -1


def test_hat_and_packnet_training_forward_reads_nothing_on_the_host(monkeypatch) -> None:
    for strategy in ("hat", "packnet"):
        module, scenario = build(strategy, "settings=[task_il]")
        task = scenario.tasks[1]
        module.before_task(task)
        module.train()
        x, ids = module_input(task, scenario), torch.ones(32, dtype=torch.long)
        with no_host_read(monkeypatch):
            module(x, ids).sum().backward()


def module_input(task, scenario: Scenario) -> Tensor:
    from cl_bench.data.batching import _norm_stats, to_float

    return to_float(task.x_train[:32], _norm_stats(scenario.mean, scenario.std, "cpu"))


def test_each_term_is_kept_per_step_on_the_device(monkeypatch) -> None:
    module, scenario = build("derpp")
    task0, task1 = scenario.tasks[:2]
    module.before_task(task0)
    module.step_loss(Step(module_input(task0, scenario), task0.y_train[:32], torch.zeros(32, dtype=torch.long)))
    assert set(module.terms) == {"task_loss"}  # empty buffer: no replay term; DER++ has no penalty
    module.before_task(task1)
    batch = (module_input(task1, scenario), task1.y_train[:32], torch.ones(32, dtype=torch.long))
    with no_host_read(monkeypatch):
        loss = module.step_loss(Step(*batch))
    assert set(module.terms) == {"task_loss", "replay_loss"} and not module.terms["replay_loss"].requires_grad
    assert torch.equal(loss.detach(), module.terms["task_loss"] + module.terms["replay_loss"])
