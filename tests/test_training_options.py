"""Training options of published protocols: gradient clipping, one optimiser carried across tasks,
class-IL training masked to the classes seen so far. Each against its formula, in a real Trainer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cl_bench.config import ConfigError, TrainerConfig, build_plan, load_config
from cl_bench.data import TaskBatches, build_scenario
from cl_bench.layout import flatten
from cl_bench.models import build_model
from cl_bench.module import ContinualModule, OptimizerConfig, Step
from cl_bench.runner import checkpoint_path, execute, fit_phases, make_trainer

DIGITS = {"kind": "split", "source": "digits", "setting": "class_il", "n_tasks": 2, "classes_per_task": 2}
MLP = {"name": "mlp", "widths": [16]}


class Recorder(ContinualModule):
    """Naive fine-tuning that keeps a float64 copy of every step's gradient (before the optimiser step)."""

    name = "recorder"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.grads: list[list[torch.Tensor]] = []

    def transform_gradients(self) -> None:
        self.grads.append([p.grad.detach().double().clone() for p in self.network()])


def module_of(cls=ContinualModule, optimizer: OptimizerConfig | None = None, dtype=torch.float32):
    torch.manual_seed(0)
    scenario = build_scenario(DIGITS)
    backbone = build_model(MLP, scenario.input_shape, scenario.n_outputs, scenario.task_classes()).to(dtype)
    return cls(backbone, scenario, None, optimizer or OptimizerConfig()), scenario


def train(module: ContinualModule, scenario, steps: int) -> list[int]:
    """Every task of ``scenario`` for ``steps`` optimiser steps in a real Trainer; the steps of each fit."""
    taken = []
    for task in scenario.tasks:
        batches = TaskBatches(task.x_train, task.y_train, task.id, 16, seed=task.id, mean=scenario.mean,
                              std=scenario.std)
        module.before_task(task)
        taken.append(fit_phases(module, task, batches,
                                lambda phase: make_trainer(TrainerConfig(max_steps=steps, epochs=5))))
    return taken


def batch_grads(module: ContinualModule) -> list[torch.Tensor]:
    module.zero_grad()
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=next(module.parameters()).dtype)
    F.cross_entropy(module(x), torch.arange(32) % 10).mul(50.0).backward()
    return [p.grad.detach().double().clone() for p in module.parameters()]


# ------------------------------------------------------------------ clipping
def test_norm_clipping_rescales_to_one_global_norm() -> None:
    module, _ = module_of()
    raw = batch_grads(module)
    norm = torch.sqrt(sum((g**2).sum() for g in raw))
    c = float(norm) / 7.0
    module.gradient_clip_val = c
    module.clip_gradients_()
    clipped = [p.grad.double() for p in module.parameters()]
    assert float(torch.sqrt(sum((g**2).sum() for g in clipped))) == pytest.approx(c, rel=1e-5)
    for g, g0 in zip(clipped, raw):  # the direction is kept: g = g0 * c / ||g0||
        torch.testing.assert_close(g, g0 * c / norm, rtol=1e-5, atol=1e-9)
    reference = [g0.clone().requires_grad_() for g0 in raw]  # torch's own rule agrees
    for r, g0 in zip(reference, raw):
        r.grad = g0.clone()
    torch.nn.utils.clip_grad_norm_(reference, c)
    for g, r in zip(clipped, reference):
        torch.testing.assert_close(g, r.grad, rtol=1e-5, atol=1e-9)
    module.gradient_clip_val = 10 * c  # a norm below the threshold is left alone
    before = [p.grad.clone() for p in module.parameters()]
    module.clip_gradients_()
    assert all(torch.equal(p.grad, b) for p, b in zip(module.parameters(), before))


def test_value_clipping_clamps_every_entry() -> None:
    module, _ = module_of()
    raw = batch_grads(module)
    c = float(torch.cat([g.flatten() for g in raw]).abs().median())
    module.gradient_clip_val, module.gradient_clip_algorithm = c, "value"
    module.clip_gradients_()
    for p, g0 in zip(module.parameters(), raw):
        expected = torch.where(g0 > c, c, torch.where(g0 < -c, -c, g0))
        torch.testing.assert_close(p.grad.double(), expected, rtol=1e-6, atol=1e-7)
    assert any((g0.abs() > c).any() for g0 in raw)  # the threshold did cut entries


def test_clipping_applies_inside_a_real_trainer_step() -> None:
    """One plain-SGD step with clip c moves the parameters by exactly lr * c (the gradient norm is larger)."""
    module, scenario = module_of(optimizer=OptimizerConfig(lr=0.1))
    module.gradient_clip_val = 1e-3
    before = flatten(module.network()).detach().clone()
    task = scenario.tasks[0]
    batches = TaskBatches(task.x_train, task.y_train, 0, 16, mean=scenario.mean, std=scenario.std)
    module.before_task(task)
    fit_phases(module, task, batches, lambda phase: make_trainer(TrainerConfig(max_steps=1)))
    moved = float((flatten(module.network()).detach() - before).norm())
    assert moved == pytest.approx(0.1 * 1e-3, rel=1e-3)


@pytest.mark.parametrize(("override", "match"), [
    ("trainer.gradient_clip_val=-1.0", r"trainer: gradient_clip_val must be > 0"),
    ("trainer.gradient_clip_algorithm=l3", r"trainer: gradient_clip_algorithm='l3'; valid: norm, value"),
    ("optimizer.carry_over=maybe", r"optimizer\.carry_over"),
    ("trainer.mask_unseen_classes=sometimes", r"trainer\.mask_unseen_classes"),
])
def test_bad_training_options_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_plan(load_config(["strategy=naive", override]))


# ---------------------------------------------------------------- carry_over
def adam_replay(theta0: list[torch.Tensor], grads: list[list[torch.Tensor]], lr: float,
                betas=(0.9, 0.999), eps=1e-8) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """One continuous Adam run over the recorded gradients, in float64: (theta, m, v)."""
    theta = [t.double().clone() for t in theta0]
    m = [torch.zeros_like(t) for t in theta]
    v = [torch.zeros_like(t) for t in theta]
    for k, step in enumerate(grads, start=1):
        for i, g in enumerate(step):
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            m_hat, v_hat = m[i] / (1 - betas[0] ** k), v[i] / (1 - betas[1] ** k)
            theta[i] = theta[i] - lr * m_hat / (v_hat.sqrt() + eps)
    return theta, m, v


def test_carried_adam_after_task_2_is_one_continuous_adam_run() -> None:
    module, scenario = module_of(Recorder, OptimizerConfig(name="adam", lr=0.01, carry_over=True))
    theta0 = [p.detach().clone() for p in module.network()]
    taken = train(module, scenario, steps=6)
    assert taken == [6, 6] and len(module.grads) == 12
    theta, m, v = adam_replay(theta0, module.grads, lr=0.01)
    state = module._carried.state
    for p, t, m_i, v_i in zip(module.network(), theta, m, v):
        assert int(state[p]["step"]) == 12
        torch.testing.assert_close(state[p]["exp_avg"].double(), m_i, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(state[p]["exp_avg_sq"].double(), v_i, rtol=1e-4, atol=1e-10)
        torch.testing.assert_close(p.detach().double(), t, rtol=1e-4, atol=1e-5)


def test_a_fresh_adam_per_task_restarts_its_moments() -> None:
    module, scenario = module_of(Recorder, OptimizerConfig(name="adam", lr=0.01))
    theta0 = [p.detach().clone() for p in module.network()]
    train(module, scenario, steps=6)
    first, _, _ = adam_replay(theta0, module.grads[:6], lr=0.01)
    restarted, _, _ = adam_replay(first, module.grads[6:], lr=0.01)  # task 2 from zero moments
    continuous, _, _ = adam_replay(theta0, module.grads, lr=0.01)
    final = [p.detach().double() for p in module.network()]
    for p, t in zip(final, restarted):
        torch.testing.assert_close(p, t, rtol=1e-4, atol=1e-5)
    assert max(float((p - t).abs().max()) for p, t in zip(final, continuous)) > 1e-3  # and that differs


def test_the_carried_optimiser_survives_a_checkpoint_resume(tmp_path: Path) -> None:
    fast = ["strategy=naive", "settings=[class_il]", "scenario.n_tasks=3", "trainer.epochs=1",
            "checks.enabled=false", "optimizer.name=adam", "optimizer.lr=0.01", "optimizer.carry_over=true",
            "output.checkpoint_every_s=0"]
    (reference,) = execute(build_plan(load_config([*fast, f"output.dir={tmp_path / 'ref'}"])))
    plan = build_plan(load_config([*fast, f"output.dir={tmp_path / 'cut'}"]))

    class Interrupt(Exception):
        pass

    def kill_after_task_1(spec, task_id, module) -> None:
        if task_id == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        list(execute(plan, on_task_end=kill_after_task_1))
    saved = torch.load(checkpoint_path(plan.output_dir, plan.runs[0]), weights_only=False)
    steps = {int(s["step"]) for s in saved["optimizer"]["state"].values()}
    sizes = saved["result"]["task_sizes"]["train"]
    assert steps == {math.ceil(sizes[0] / 32) + math.ceil(sizes[1] / 32)}  # one optimiser through tasks 0 and 1
    (resumed,) = execute(plan)
    assert resumed.acc == reference.acc and resumed.loss == reference.loss


# ------------------------------------------------------- mask_unseen_classes
def test_unseen_classes_are_masked_out_of_the_training_loss() -> None:
    module, scenario = module_of(dtype=torch.float64)
    module.mask_unseen_classes = True
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for task, seen in ((0, [0, 1]), (1, [0, 1, 2, 3])):
        module.current_task = task
        y = torch.tensor(seen * (8 // len(seen)))
        step = Step(x, y, torch.full((8,), task))
        loss = module.task_loss(step)
        logits = module(x).detach()
        expected = -(logits[range(8), y] - torch.logsumexp(logits[:, seen], 1)).mean()  # CE over seen only
        torch.testing.assert_close(loss.detach(), expected)
        z = step.logits.detach().requires_grad_()
        F.cross_entropy(module.as_trained(z, step.t), y).backward()
        unseen = [c for c in range(10) if c not in seen]
        assert torch.equal(z.grad[:, unseen], torch.zeros(8, len(unseen), dtype=torch.float64))
    module.mask_unseen_classes = False
    module.current_task = 0
    unmasked = module.task_loss(Step(x, torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long)))
    logits = module(x).detach()
    torch.testing.assert_close(unmasked.detach(), -(logits[:, 0] - torch.logsumexp(logits, 1)).mean())


def test_options_at_their_default_leave_the_run_identity_unchanged() -> None:
    import dataclasses
    import hashlib
    import json

    from cl_bench.config import OPTIONAL_AT_DEFAULT

    (spec,) = build_plan(load_config(["strategy=naive", "settings=[class_il]"])).runs
    plain = dataclasses.asdict(spec)
    for section, defaults in OPTIONAL_AT_DEFAULT.items():
        for key in defaults:
            del plain[section][key]
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert spec.config_hash() == digest  # the hash of the spec without the options
    for override in ("optimizer.carry_over=true", "trainer.eval_every=last", "trainer.gradient_clip_val=1.0",
                     "trainer.mask_unseen_classes=true"):
        (other,) = build_plan(load_config(["strategy=naive", "settings=[class_il]", override])).runs
        assert other.config_hash() != spec.config_hash(), override
