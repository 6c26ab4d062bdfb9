"""The probe objective L(theta) = (1/N) sum_n l(f(theta, x_n), y_n) as a function of a flat parameter vector.

Every curvature quantity of the guarantee checks (docs/guarantees.md) is a
derivative of one such objective: task o's loss on its fixed probe set S_o,
with the module in eval mode, so that L_o is a deterministic function of theta.
:func:`module_objective` builds it from a :class:`~cl_bench.module.ContinualModule`
as the setting evaluates the task (cross-entropy over every output in class-IL,
over the task's own classes in task-IL, whatever training masked; no strategy
penalty); tests build toy objectives (e.g. least squares with a known Hessian)
from plain functions. theta is the network's flat vector of
:mod:`cl_bench.layout` (frozen copies such as a distillation teacher excluded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap

from cl_bench.layout import ParamLayout, flat_params

__all__ = ["Objective", "ParamLayout", "cross_entropy_per_sample", "flat_params", "module_objective",
           "setting_columns"]

#: forward(theta_flat, x_chunk) -> outputs [B, C]
Forward = Callable[[Tensor, Tensor], Tensor]
#: per_sample_loss(outputs [B, C], targets [B, ...]) -> losses [B]
PerSampleLoss = Callable[[Tensor, Tensor], Tensor]
#: bounds of one batched (vmapped) pass of :meth:`Objective.losses_along` / :meth:`Objective.hvps_along`:
#: parameter points x probe samples, and parameter points x parameters
BATCHED_ROWS = 1 << 16
BATCHED_PARAMS = 1 << 24


def cross_entropy_per_sample(z: Tensor, y: Tensor) -> Tensor:
    """l(z, y) = -log softmax(z)_y."""
    return F.cross_entropy(z, y, reduction="none")


class _Logits(nn.Module):
    """``forward(x, t)`` = the module's unmasked logits (``train=False``) or ``train_logits`` (``train=True``),
    so that ``functional_call`` can swap parameters."""

    def __init__(self, module: nn.Module, train: bool) -> None:
        super().__init__()
        self.m, self.train_mode_logits = module, train

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        m: Any = self.m
        return m.train_logits(x, t) if self.train_mode_logits else m(x, t)


def setting_columns(module: nn.Module, task_id: int) -> list[int] | None:
    """The outputs task ``task_id`` is evaluated on: its own classes in task-IL, None (all) otherwise."""
    if getattr(module, "setting", None) != "task_il" or not hasattr(module, "class_mask"):
        return None
    mask: Tensor = getattr(module, "class_mask")
    return [int(c) for c in mask[task_id].nonzero().flatten()]


class Objective:
    """L(theta) = (1/N) sum_n l(f(theta, x_n), y_n) over a fixed probe set, evaluated in chunks.

    ``forward(theta, x)`` must be a pure function of the flat vector ``theta``
    (so autograd and ``torch.func`` can differentiate it); ``per_sample_loss``
    maps outputs and targets to one loss per sample (default: cross-entropy).
    """

    def __init__(self, forward: Forward, x: Tensor, y: Tensor, dim: int,
                 per_sample_loss: PerSampleLoss = cross_entropy_per_sample, batch_size: int | None = None) -> None:
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"probe set needs x and y of the same non-zero length, got {x.shape[0]} and {y.shape[0]}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"probe batch_size must be >= 1, got {batch_size}")
        self.forward, self.x, self.y, self.dim = forward, x, y, dim
        self.per_sample_loss = per_sample_loss
        self.batch_size = batch_size or x.shape[0]
        self.columns: list[int] | None = None  # global output indices of the outputs (None: all of them)

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def chunks(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, self.n, self.batch_size):
            yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]

    def chunk_loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """sum_{n in chunk} l_n / N, so that the chunk terms add up to L(theta)."""
        return self.per_sample_loss(self.forward(theta, x), y).sum() / self.n

    @torch.no_grad()
    def loss(self, theta: Tensor) -> float:
        """L(theta)."""
        return float(sum(self.chunk_loss(theta, x, y) for x, y in self.chunks()))

    @torch.no_grad()
    def losses_along(self, theta: Tensor, dirs: Tensor, steps: Tensor) -> Tensor:
        """L(theta + s u) for every step s [S] and direction u (rows of ``dirs`` [D, P]) -> [S, D]; the
        points are vmapped over in passes of :meth:`points_per_pass` (each built only for its pass)."""
        def chunk_losses(points: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return vmap(self.chunk_loss, in_dims=(0, None, None))(points, x, y)

        out = [torch.stack([chunk_losses(points, x, y) for x, y in self.chunks()]).sum(0)
               for points, _ in self._passes(theta, dirs, steps)]
        return torch.cat(out).view(steps.numel(), dirs.shape[0])

    def hvps_along(self, theta: Tensor, dirs: Tensor, steps: Tensor) -> Tensor:
        """H(theta + s u) u for every step s [S] and direction u (rows of ``dirs`` [D, P]) -> [S, D, P]: the
        reverse-over-reverse product d/d theta' (grad L(theta')^T u) at theta' = theta + s u (the vjp of the
        gradient; faster than forward-over-reverse on the CPU), vmapped over the points."""
        def hvp(point: Tensor, v: Tensor, x: Tensor, y: Tensor) -> Tensor:
            pull_back = vjp(lambda th: grad(self.chunk_loss)(th, x, y), point)[1]
            return pull_back(v)[0]

        def chunk_hvps(points: Tensor, vs: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return vmap(hvp, in_dims=(0, 0, None, None))(points, vs, x, y)

        with torch.enable_grad():
            out = [torch.stack([chunk_hvps(points, vs, x, y) for x, y in self.chunks()]).sum(0).detach()
                   for points, vs in self._passes(theta, dirs, steps)]
        return torch.cat(out).view(steps.numel(), dirs.shape[0], -1)

    def points_per_pass(self) -> int:
        """Parameter points per batched pass: at most :data:`BATCHED_ROWS` points x chunk samples and
        :data:`BATCHED_PARAMS` points x parameters (one point at a time for the largest models)."""
        return max(1, min(BATCHED_ROWS // self.batch_size, BATCHED_PARAMS // max(self.dim, 1)))

    def _passes(self, theta: Tensor, dirs: Tensor, steps: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """(points theta + s u, directions u) [n, P] of each pass, over the pairs (s, u) in step-major order."""
        pairs = [(i, j) for i in range(steps.numel()) for j in range(dirs.shape[0])]
        n = self.points_per_pass()
        for k in range(0, len(pairs), n):
            s_idx, d_idx = (torch.tensor(ix, device=dirs.device) for ix in zip(*pairs[k:k + n]))
            vs = dirs[d_idx]
            yield theta + steps.to(theta)[s_idx, None] * vs, vs

    def loss_and_grad(self, theta: Tensor) -> tuple[float, Tensor]:
        """L(theta) and grad L(theta) [P]."""
        leaf = theta.detach().requires_grad_(True)
        total, grad = 0.0, torch.zeros_like(theta)
        for x, y in self.chunks():
            with torch.enable_grad():
                value = self.chunk_loss(leaf, x, y)
                (g,) = torch.autograd.grad(value, leaf, allow_unused=True, materialize_grads=True)
            total += float(value.detach())
            grad += g
        return total, grad

    @torch.no_grad()
    def outputs(self, theta: Tensor) -> Tensor:
        """f(theta, x) for every probe sample [N, C]."""
        return torch.cat([self.forward(theta, x) for x, _ in self.chunks()])

    def outputs_and_jvp(self, theta: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """f(theta, x) and the directional derivative J_x v for every probe sample, [N, C] each.

        J v by the double-vjp trick (Townsend 2017): w(u) = J^T u is linear in u, so J v = d(w(u)^T v)/du.
        """
        leaf = theta.detach().requires_grad_(True)
        outs, tangents = [], []
        for x, _ in self.chunks():
            with torch.enable_grad():
                z = self.forward(leaf, x)
                u = torch.zeros_like(z, requires_grad=True)
                (w,) = torch.autograd.grad(z, leaf, u, create_graph=True)
                (jv,) = torch.autograd.grad(w, u, v, allow_unused=True, materialize_grads=True)
            outs.append(z.detach())
            tangents.append(jv)
        return torch.cat(outs), torch.cat(tangents)


def module_objective(module: nn.Module, x: Tensor, y: Tensor, task_id: int, batch_size: int | None = None,
                     logits: str = "train") -> Objective:
    """L_o(theta) = mean CE(z_o(x), y) at the network parameters theta (frozen copies keep their values).

    ``logits="setting"``: z_o = the module's logits restricted in task-IL to task
    o's classes (:func:`setting_columns`), the loss of the task as it is
    evaluated (the guarantee checks use this); ``logits="train"``: z_o =
    ``module.train_logits`` (what the training loss sees: masked only with
    ``mask_train_logits``).

    The module must already be in eval mode (BatchNorm running statistics, no
    dropout); its own parameters are never modified. In task-IL the objective's
    outputs are the task's columns only and ``y`` is re-indexed into them.
    """
    if not hasattr(module, "train_logits"):
        raise TypeError(f"{type(module).__name__} has no train_logits(x, t): pass a ContinualModule")
    if logits not in ("setting", "train"):
        raise ValueError(f"module_objective: logits must be 'setting' or 'train', got {logits!r}")
    wrapper = _Logits(module, logits == "train")
    layout = ParamLayout.of(module)
    names = tuple(f"m.{n}" for n in layout.names)
    cols = setting_columns(module, task_id) if logits == "setting" else None
    index = None
    if cols is not None:
        index = torch.tensor(cols, dtype=torch.long, device=y.device)
        lookup = torch.full((int(index.max()) + 1,), -1, dtype=torch.long, device=y.device)
        lookup[index] = torch.arange(len(cols), device=y.device)
        if bool((y > index.max()).any()) or bool((lookup[y.clamp_max(int(index.max()))] < 0).any()):
            raise ValueError(f"probe labels of task {task_id} are not all among its classes {cols}")
        y = lookup[y]

    def forward(theta: Tensor, xb: Tensor) -> Tensor:
        params = dict(zip(names, layout.views(theta).values()))
        t = torch.full((xb.shape[0],), task_id, dtype=torch.long, device=xb.device)
        z = functional_call(wrapper, params, (xb.to(theta.dtype), t))
        return z if index is None else z.index_select(1, index.to(z.device))

    obj = Objective(forward, x, y, layout.dim, cross_entropy_per_sample, batch_size)
    obj.columns = cols
    return obj
