"""A strategy's state is what its state_dict holds: grown buffers resume bit-identically, tensors kept as plain
attributes stop the run with an error naming them (never a silently different resumed result)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from cl_bench import registry
from cl_bench.config import ConfigError, build_plan, load_config
from cl_bench.layout import flat_params
from cl_bench.module import ContinualModule
from cl_bench.results import load_result
from cl_bench.runner import checkpoint_path, execute, result_path
from cl_bench.state import resize_buffers, unsaved_tensors

FAST = ["output.checkpoint_every_s=0",  # a checkpoint after every task
        "scenario.n_tasks=3", "trainer.epochs=1", "trainer.train_loss_probe=100", "settings=[class_il]",
        "checks.enabled=false"]


@dataclass
class AnchorParams:
    lam: float = 5.0


class BufferAnchor(ContinualModule):
    """lam/2 ||theta - theta*||^2 with the anchor a registered buffer that grows from [0] to [P]."""

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
        self.anchor = flat_params(self)  # a buffer's name: the new tensor stays registered


class PlainAnchor(BufferAnchor):
    """The same penalty with the anchor kept as a plain attribute: lost by a checkpoint."""

    def __init__(self, *args, **kwargs) -> None:
        ContinualModule.__init__(self, *args, **kwargs)
        self.anchor = None

    def penalty(self) -> Tensor | None:
        if self.anchor is None:
            return None
        theta = torch.cat([p.reshape(-1) for p in self.network()])
        return 0.5 * self.params.lam * (theta - self.anchor).square().sum()

    def after_task(self, task) -> None:
        self.anchor = flat_params(self).clone()


class DeclaredTransient(PlainAnchor):
    """The plain anchor wrongly declared transient: the check is off, and the resumed run differs."""

    transient_state = ("anchor",)


class PlainAtStart(BufferAnchor):
    """A plain tensor attribute set in __init__: found before any training."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scale = torch.ones(3)


class Interrupt(Exception):
    """Stands for a kill between tasks."""


@pytest.fixture
def anchors():
    registry.strategy_names()
    saved = dict(registry._REGISTRY)
    registry.register("state_buffer_anchor")(BufferAnchor)
    registry.register("state_plain_anchor")(PlainAnchor)
    registry.register("state_plain_start")(PlainAtStart)
    registry.register("state_declared_transient")(DeclaredTransient)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def test_a_grown_buffer_resumes_bit_identically(tmp_path: Path, anchors) -> None:
    over = [*FAST, "strategy=state_buffer_anchor"]
    (reference,) = execute(build_plan(load_config([*over, f"output.dir={tmp_path / 'a'}"])))
    plan = build_plan(load_config([*over, f"output.dir={tmp_path / 'b'}"]))

    def kill(spec, task_id, module) -> None:
        if task_id == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        list(execute(plan, on_task_end=kill))
    saved = torch.load(checkpoint_path(plan.output_dir, plan.runs[0]), weights_only=False)
    assert saved["module"]["anchor"].numel() > 0  # the grown anchor is in the checkpoint
    (resumed,) = execute(plan)
    assert resumed.acc == reference.acc and resumed.loss == reference.loss
    naive = execute(build_plan(load_config([*FAST, "strategy=naive", f"output.dir={tmp_path / 'c'}"])))
    assert next(naive).acc != reference.acc  # the anchor changed the training


def test_a_plain_tensor_attribute_stops_the_run_before_a_checkpoint(tmp_path: Path, anchors) -> None:
    plan = build_plan(load_config([*FAST, "strategy=state_plain_anchor", f"output.dir={tmp_path}"]))
    (result,) = execute(plan)
    assert result.status == "failed"
    assert "PlainAnchor keeps tensors outside its state_dict (after task 0): anchor" in result.error
    assert "register_buffer('anchor'" in result.error
    assert not checkpoint_path(plan.output_dir, plan.runs[0]).exists()
    stored = load_result(result_path(plan.output_dir, plan.runs[0]))
    assert stored.status == "failed" and stored.acc == []  # recorded as failed, never reused as a result


def test_without_the_check_the_resumed_result_silently_differs(tmp_path: Path, anchors) -> None:
    """What the check prevents: the anchor is lost at the cut, the resumed run trains task 2 without it."""
    over = [*FAST, "strategy=state_declared_transient"]
    (reference,) = execute(build_plan(load_config([*over, f"output.dir={tmp_path / 'a'}"])))
    plan = build_plan(load_config([*over, f"output.dir={tmp_path / 'b'}"]))

    def kill(spec, task_id, module) -> None:
        if task_id == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        list(execute(plan, on_task_end=kill))
    (resumed,) = execute(plan)
    assert resumed.status == reference.status == "ok"
    assert resumed.acc[:2] == reference.acc[:2] and resumed.acc[2] != reference.acc[2]


def test_a_plain_tensor_set_at_construction_is_a_config_error(tmp_path: Path, anchors) -> None:
    plan = build_plan(load_config([*FAST, "strategy=state_plain_start", f"output.dir={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"PlainAtStart keeps tensors outside its state_dict \(after construction\)"
                                          r": scale"):
        list(execute(plan))
    assert not (tmp_path / "runs").exists()


def test_unsaved_tensors_looks_into_containers_and_submodules() -> None:
    m = torch.nn.Module()
    m.sub = torch.nn.Linear(2, 2)
    m.sub.cache = [torch.zeros(1)]
    m.table = {"a": torch.zeros(1)}
    m.count = 3
    m.register_buffer("kept", torch.zeros(2))
    assert sorted(unsaved_tensors(m)) == ["sub.cache", "table"]


def test_resize_buffers_takes_the_checkpoint_shape_and_dtype() -> None:
    m = torch.nn.Module()
    m.register_buffer("basis", torch.zeros(4, 0))
    state = {"x.basis": torch.arange(8, dtype=torch.float64).reshape(4, 2)}
    resize_buffers(m, state, "x.", ["basis", "missing"])
    assert m.basis.shape == (4, 2) and m.basis.dtype == torch.float64
