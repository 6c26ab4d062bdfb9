"""Kronecker-factored Fisher of Linear layers (KFAC; Martens & Grosse 2015, Sec. 3)
and its quadratic form, never forming a Kronecker product.

For a layer ``s = W a + b`` write ``W' = [W, b]`` (``[out, in+1]``), ``a' = [a; 1]`` and
``g = d log p(c|x) / d s``. With vec = column stacking, the layer's Fisher block is
approximated by

    F ~= A (x) G,   A = E_x[a' a'^T],   G = E_x E_c[g g^T]

(the expectation over c is the Fisher variant: all classes weighted by p(c|x),
one sampled label, or the true label; see :mod:`cl_bench.geometry.fisher`), and

    vec(D)^T (A (x) G) vec(D) = tr(D^T G D A),   D = W' - W'_*.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.geometry.fisher import FISHER_KINDS, Batches


@dataclass(frozen=True)
class LayerBlock:
    """Where one Linear layer's weight (and bias) sit in the flat parameter vector."""

    weight: slice
    bias: slice | None
    out_features: int
    in_features: int

    @property
    def a_dim(self) -> int:
        return self.in_features + (self.bias is not None)


def linear_blocks(model: nn.Module) -> dict[str, LayerBlock]:
    """Every trainable Linear layer of ``model`` and its place in the flat trainable-parameter vector.

    KFAC here covers Linear layers only: any other trainable parameter is an error naming it.
    """
    offsets, i = {}, 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            offsets[name] = slice(i, i + p.numel())
            i += p.numel()
    blocks, covered = {}, set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.weight.requires_grad:
            prefix = f"{name}." if name else ""
            bias = offsets.get(prefix + "bias") if mod.bias is not None else None
            blocks[name] = LayerBlock(offsets[prefix + "weight"], bias, mod.out_features, mod.in_features)
            covered |= {prefix + "weight", prefix + "bias"}
    other = [n for n in offsets if n not in covered]
    if other:
        raise ValueError(f"KFAC supports trainable nn.Linear layers only; parameters {other} are in other "
                         "layers (use ewc/online_ewc for this model)")
    return blocks


#: per-sample estimators only: a squared minibatch gradient (``batch``) has no Kronecker form
KFAC_KINDS: tuple[str, ...] = tuple(k for k in FISHER_KINDS if k != "batch")


def _output_weights(p: Tensor, y: Tensor, kind: str, generator: torch.Generator | None) -> Tensor:
    """``V [M, B, K]`` such that backpropagating ``sum_{i,k} V[m,i,k] log p(k|x_i)`` gives the m-th
    gradient sample per input: sqrt(p(c|x)) for every class c (exact), a sampled or the true label."""
    k = p.shape[1]
    if kind == "exact":
        return torch.eye(k, dtype=p.dtype, device=p.device)[:, None, :] * p.sqrt().T[:, :, None]
    if kind == "sampled":
        y = torch.multinomial(p, 1, generator=generator).squeeze(1)
    v = F.one_hot(y, k).to(p.dtype)
    if kind == "empirical_weighted":
        v = v * p.gather(1, y[:, None]).sqrt()
    return v[None]


def kfac_factors(
    model: nn.Module, batches: Batches, kind: str = "exact", generator: torch.Generator | None = None
) -> dict[str, tuple[Tensor, Tensor]]:
    """``{layer: (A [in+1, in+1], G [out, out])}`` averaged over all samples.

    ``model(x) -> logits [B, K]`` (e.g. :class:`~cl_bench.geometry.fisher.TaskOutputs`);
    layers a batch does not reach (other tasks' heads) keep zero factors.
    """
    if kind not in KFAC_KINDS:
        raise ValueError(f"fisher={kind!r} is not valid for KFAC; choose one of {list(KFAC_KINDS)}")
    blocks = linear_blocks(model)
    layers = dict(model.named_modules())
    ref = next(p for p in model.parameters() if p.requires_grad)
    A = {n: ref.new_zeros(b.a_dim, b.a_dim) for n, b in blocks.items()}
    G = {n: ref.new_zeros(b.out_features, b.out_features) for n, b in blocks.items()}
    seen: dict[str, tuple[Tensor, Tensor]] = {}

    def hook(name: str):
        def save(_mod: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            seen[name] = (args[0].detach(), out)

        return save

    handles = [layers[n].register_forward_hook(hook(n)) for n in blocks]
    n_samples = 0
    try:
        for x, y in batches:
            seen.clear()
            logp = model(x).log_softmax(-1)
            v = _output_weights(logp.detach().exp(), y, kind, generator)
            names = list(seen)
            grads = torch.autograd.grad(logp, [seen[n][1] for n in names], grad_outputs=v, is_grads_batched=True)
            for name, g in zip(names, grads):
                a = seen[name][0]
                if blocks[name].bias is not None:
                    a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
                A[name] += a.T @ a
                G[name] += torch.einsum("mbo,mbq->oq", g, g)
            n_samples += x.shape[0]
    finally:
        for h in handles:
            h.remove()
    if n_samples == 0:
        raise ValueError("kfac_factors: no samples (the probe set is empty)")
    return {n: (A[n] / n_samples, G[n] / n_samples) for n in blocks}


def layer_delta(delta: Tensor, block: LayerBlock) -> Tensor:
    """``[O, P]`` flat differences -> ``D = [dW, db]`` of one layer, ``[O, out, in(+1)]``."""
    o = delta.shape[0]
    d = delta[:, block.weight].view(o, block.out_features, block.in_features)
    if block.bias is None:
        return d
    return torch.cat([d, delta[:, block.bias].view(o, block.out_features, 1)], dim=2)


def kron_quadratic(A: Tensor, G: Tensor, D: Tensor) -> Tensor:
    """sum_o tr(D_o^T G_o D_o A_o) = sum_o vec(D_o)^T (A_o (x) G_o) vec(D_o); A, G symmetric, stacked over o."""
    return ((G @ D) * (D @ A)).sum()
