"""One parameter layout: the strategy's network as one flat vector theta ``[P]``.

Strategies (anchors, importances, projections, gradient surgery) and the
geometry checks (anchors, curvature, eigenvectors) all index theta the same
way: every parameter of the module in ``named_parameters`` order, minus the
frozen copies a strategy keeps beside its network (LwF's and iCaRL's teacher,
named in ``ContinualModule.frozen_copies``). The layout is fixed for a run:
a parameter that a strategy freezes later (PackNet's biases) keeps its slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def network_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the module's network, without its frozen copies."""
    copies = tuple(f"{name}." for name in getattr(module, "frozen_copies", ()))
    named = [(n, p) for n, p in module.named_parameters() if not n.startswith(copies)]
    if not named:
        raise ValueError(f"{type(module).__name__} has no parameters: nothing to differentiate")
    return named


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of the network's parameters, and the flat-vector views of them."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        named = network_parameters(module)
        return cls(tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    @property
    def numels(self) -> list[int]:
        return [s.numel() for s in self.shapes]

    @property
    def dim(self) -> int:
        return sum(self.numels)

    def views(self, theta: Tensor) -> dict[str, Tensor]:
        """Views of ``theta [P]`` shaped like each parameter (differentiable)."""
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


def flatten(tensors: Iterable[Tensor] | Mapping[str, Tensor], batch_dims: int = 0) -> Tensor:
    """Concatenate per-parameter tensors ``[*batch, *shape]`` into ``[*batch, P]``."""
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    return torch.cat([t.flatten(batch_dims) for t in values], dim=batch_dims)


def unflatten(theta: Tensor, like: Iterable[Tensor]) -> list[Tensor]:
    """Split ``theta [P]`` into views shaped like ``like`` (in order)."""
    like = list(like)
    return [c.view_as(r) for c, r in zip(theta.split([r.numel() for r in like]), like)]


def detached(module: nn.Module) -> dict[str, Tensor]:
    """Detached views of the network's parameters by name, in the layout's order (for ``torch.func``)."""
    return {n: p.detach() for n, p in network_parameters(module)}


def flat_params(module: nn.Module) -> Tensor:
    """The parameters theta ``[P]`` of the module's network, a detached copy."""
    return torch.cat([p.detach().reshape(-1) for _, p in network_parameters(module)])


def grad_vector(params: Iterable[nn.Parameter]) -> Tensor:
    """The ``.grad`` of ``params`` as one vector ``[P]`` (a missing gradient counts as zeros)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def grad_of(loss: Tensor, params: list[nn.Parameter]) -> Tensor:
    """The gradient d loss / d params as one vector ``[P]`` (zeros for parameters the loss does not reach)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return torch.cat([g.reshape(-1) for g in grads])


def write_grad(params: Iterable[nn.Parameter], vec: Tensor) -> None:
    """Set each parameter's ``.grad`` from its slice of ``vec [P]``."""
    params = list(params)
    for p, chunk in zip(params, unflatten(vec, params)):
        p.grad = chunk.clone()


def layout_mask(module: nn.Module, masks: Mapping[str, Tensor]) -> Tensor:
    """Bool ``[P]`` from per-parameter bool masks keyed by the module's parameter names (absent: False)."""
    named = network_parameters(module)
    for n, p in named:
        if n in masks and masks[n].shape != p.shape:
            raise ValueError(f"mask of {n} has shape {tuple(masks[n].shape)}, the parameter {tuple(p.shape)}")
    return torch.cat([(masks[n] if n in masks else torch.zeros_like(p, dtype=torch.bool)).reshape(-1)
                      for n, p in named])
