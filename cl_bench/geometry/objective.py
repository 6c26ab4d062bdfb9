"""The probe objective L(theta) = (1/N) sum_n l(f(theta, x_n), y_n) as a function of a flat parameter vector.

Every curvature quantity of the guarantee checks (GEOMETRY.md) is a derivative
of one such objective: task o's loss on its fixed probe set S_o, with the
module in eval mode, so that L_o is a deterministic function of theta.
:func:`module_objective` builds it from a :class:`~cl_bench.module.ContinualModule`
(``train_logits`` + cross-entropy, no strategy penalty); tests build toy
objectives (e.g. least squares with a known Hessian) from plain functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

#: forward(theta_flat, x_chunk) -> outputs [B, C]
Forward = Callable[[Tensor, Tensor], Tensor]
#: per_sample_loss(outputs [B, C], targets [B, ...]) -> losses [B]
PerSampleLoss = Callable[[Tensor, Tensor], Tensor]


def cross_entropy_per_sample(z: Tensor, y: Tensor) -> Tensor:
    """l(z, y) = -log softmax(z)_y."""
    return F.cross_entropy(z, y, reduction="none")


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a module's parameters, and the flat-vector views of them."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        named = list(module.named_parameters())
        if not named:
            raise ValueError(f"{type(module).__name__} has no parameters: nothing to differentiate")
        return cls(tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    @property
    def numels(self) -> list[int]:
        return [s.numel() for s in self.shapes]

    @property
    def dim(self) -> int:
        return sum(self.numels)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Views of ``theta`` [P] shaped like each parameter (differentiable)."""
        return {n: c.view(s) for n, c, s in zip(self.names, theta.split(self.numels), self.shapes)}

    def groups(self) -> list[tuple[str, slice]]:
        """Flat index ranges of each owning module ("layer"): ``[(module_name, slice), ...]``."""
        out: list[tuple[str, slice]] = []
        start = 0
        for name, n in zip(self.names, self.numels):
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            if out and out[-1][0] == owner and out[-1][1].stop == start:
                out[-1] = (owner, slice(out[-1][1].start, start + n))
            else:
                out.append((owner, slice(start, start + n)))
            start += n
        return out


def flat_params(module: nn.Module) -> Tensor:
    """theta = concatenation of every parameter (requires_grad or not), detached copy [P]."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


class _TrainLogits(nn.Module):
    """``forward(x, t) = module.train_logits(x, t)`` so that ``functional_call`` can swap parameters."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.m = module

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.m.train_logits(x, t)


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


def module_objective(module: nn.Module, x: Tensor, y: Tensor, task_id: int, batch_size: int | None = None) -> Objective:
    """L_o(theta) = mean CE(module.train_logits(x, o), y) with the module's parameters replaced by theta.

    The module must already be in eval mode (BatchNorm running statistics, no
    dropout); its own parameters are never modified.
    """
    if not hasattr(module, "train_logits"):
        raise TypeError(f"{type(module).__name__} has no train_logits(x, t): pass a ContinualModule")
    wrapper = _TrainLogits(module)
    layout = ParamLayout.of(module)
    names = tuple(f"m.{n}" for n in layout.names)

    def forward(theta: Tensor, xb: Tensor) -> Tensor:
        params = dict(zip(names, layout.unflatten(theta).values()))
        t = torch.full((xb.shape[0],), task_id, dtype=torch.long, device=xb.device)
        return functional_call(wrapper, params, (xb.to(theta.dtype), t))

    return Objective(forward, x, y, layout.dim, cross_entropy_per_sample, batch_size)
