"""A compiled optimiser step: loss, gradient and update of one minibatch as one ``torch.compile``d graph.

For a strategy whose step is only its loss terms (it overrides none of
:data:`EAGER_HOOKS` and keeps ``ContinualModule.compilable``), one SGD step

    g = d/dtheta [task_loss + replay_loss + penalty](theta; x, y, t)
    b <- mu b + (g + wd theta)        (b = 0 before the first step: torch.optim.SGD's first buffer is g)
    theta <- theta - lr b

is a pure function of (theta, b, x, y, t), written with ``torch.func.grad_and_value``
over ``torch.func.functional_call`` and compiled by inductor. The parameters and the
momentum buffers (kept in the torch optimiser's own state, so a fresh optimiser per
phase starts from zero as in eager mode) are updated in place. What the step keeps
(the terms, the buffer insertion, the NaN check) runs eagerly after it, on the
values the graph returns; random draws inside the graph (a replay draw) use
PyTorch's eager generator (inductor's ``fallback_random``), so they are the draws
of the eager step. Results agree with eager steps up to floating-point rounding.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

if TYPE_CHECKING:
    from cl_bench.module import ContinualModule, Step

#: ``trainer.compile: auto`` compiles a run of at least this many optimiser steps (compiling takes seconds)
AUTO_MIN_STEPS = 5000


#: hooks whose work happens outside the loss terms: a strategy overriding one trains eagerly
EAGER_HOOKS = ("transform_gradients", "guarded_parameters", "transform_update", "optimise", "training_step")


def why_not_compiled(module: ContinualModule, optimizer: torch.optim.Optimizer) -> str | None:
    """None when the module's step can be compiled; else the reason it runs eagerly."""
    from cl_bench.module import ContinualModule

    own = [h for h in EAGER_HOOKS if getattr(type(module), h) is not getattr(ContinualModule, h)]
    if own:
        return f"{module.name} overrides {', '.join(own)} (work outside its loss terms)"
    if not module.compilable:
        return f"{module.name}'s loss terms change shape from step to step (compilable = False)"
    if type(optimizer) is not torch.optim.SGD:
        return f"the compiled step implements SGD only, not {type(optimizer).__name__}"
    if len(optimizer.param_groups) != 1 or any(
            g.get("nesterov") or g.get("dampening") or g.get("maximize") for g in optimizer.param_groups):
        return "the compiled step implements SGD with one parameter group, without nesterov, dampening or maximize"
    if shutil.which("cc") is None and shutil.which("gcc") is None and shutil.which("g++") is None:
        return "no C++ compiler on PATH (inductor's CPU code needs one)"
    return None


class NotCompilable(RuntimeError):
    """The step's terms break the graph (e.g. a branch on a tensor's value); the message says where."""


class _Terms(nn.Module):
    """``forward(x, y, t)`` = the module's loss terms, so that ``functional_call`` can swap its parameters."""

    def __init__(self, module: ContinualModule) -> None:
        super().__init__()
        self.m = module

    def forward(self, x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, tuple[dict[str, Tensor], list[Tensor]]]:
        from cl_bench.module import Step

        step = Step(x, y, t)
        terms = self.m.loss_terms(step)
        loss = sum((v for v in terms.values() if v is not None), torch.zeros((), device=x.device))
        kept = {k: v.detach() for k, v in terms.items() if v is not None}
        return loss, (kept, [] if step.logits is None else [step.logits.detach()])  # aux: tensors only


class CompiledStep:
    """The compiled SGD step of ``module`` with ``optimizer``'s hyper-parameters (one param group)."""

    def __init__(self, module: ContinualModule, optimizer: torch.optim.Optimizer) -> None:
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True  # random draws in the graph = the eager generator's draws
        group = optimizer.param_groups[0]
        self.lr, self.momentum, self.wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        self.optimizer = optimizer
        self.wrapper = _Terms(module)
        self.names = [f"m.{n}" for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.first_step_seconds: list[float] = []  # per bound optimiser: its first step, compilation included
        self._first = True
        self._fn: Callable[..., Any] = torch.compile(self._step, fullgraph=True)  # a graph break is an error

    def rebind(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step with ``optimizer`` (a new phase's) from now on; False when its hyper-parameters differ."""
        group = optimizer.param_groups[0]
        same = (float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])) == \
            (self.lr, self.momentum, self.wd)
        if same:
            self.optimizer, self._first = optimizer, True
        return same

    def _step(self, params: list[Tensor], bufs: list[Tensor], x: Tensor, y: Tensor, t: Tensor) -> Any:
        def loss_of(flat: dict[str, Tensor]) -> Any:
            return functional_call(self.wrapper, flat, (x, y, t), strict=False)

        grads, (loss, aux) = grad_and_value(loss_of, has_aux=True)(dict(zip(self.names, params)))
        for name, p, b in zip(self.names, params, bufs):
            g = grads[name] + self.wd * p if self.wd else grads[name]
            if self.momentum:
                b.mul_(self.momentum).add_(g)
                g = b
            p.sub_(self.lr * g)
        return loss, aux

    def __call__(self, step: Step) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        """One step on ``step``: updates the parameters in place; returns the loss, the terms and the logits.
        Raises :class:`NotCompilable` (before any update) when the terms cannot be traced into one graph."""
        state = self.optimizer.state
        bufs = []
        for p in self.params:
            if "momentum_buffer" not in state[p] or state[p]["momentum_buffer"] is None:
                state[p]["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state[p]["momentum_buffer"])
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                loss, (terms, logits) = self._fn([p.detach() for p in self.params], bufs, step.x, step.y, step.t)
        except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as err:  # tracing: nothing ran yet
            raise NotCompilable(str(err).splitlines()[0]) from err
        if self._first:
            self.first_step_seconds.append(time.perf_counter() - t0)
            self._first = False
        return loss, terms, logits[0] if logits else None
