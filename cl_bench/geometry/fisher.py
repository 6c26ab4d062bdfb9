"""Per-sample curvature of a task's likelihood: diagonal Fisher variants, MAS
sensitivity, and dense Hessian / GGN of small models (torch.func).

Every estimator takes a model ``f(x) -> logits [B, K]`` over the K outputs of
the task's likelihood (see :class:`TaskOutputs`), labels ``y`` in ``[0, K)``,
and returns one flat vector (or matrix) in the order of the model's trainable
parameters, averaged over the N samples it saw. Per-sample gradients are
``torch.func.vmap`` over ``grad`` / ``jacrev``: no Python loop over samples.

Diagonal Fisher variants (Kunstner et al. 2019 discuss the difference):

- ``exact``:     F = 1/N sum_i sum_c p(c|x_i) (d log p(c|x_i) / d theta)^2  (all classes enumerated)
- ``sampled``:   F = 1/N sum_i (d log p(c_i|x_i) / d theta)^2, c_i ~ p(.|x_i)  (one Monte-Carlo label)
- ``empirical``: F = 1/N sum_i (d log p(y_i|x_i) / d theta)^2                   (true labels)
- ``argmax``:    F = 1/N sum_i (d log p(c_i|x_i) / d theta)^2, c_i = argmax_c p(c|x_i)  (the predicted label,
  the estimator of several EWC implementations; at a confident model close to ``exact``)
- ``empirical_weighted``: F = 1/N sum_i p(y_i|x_i) (d log p(y_i|x_i) / d theta)^2 — the estimator
  of Mammoth's online EWC (the DER paper's code); kept only to reproduce its tables.
- ``batch``: F = 1/M sum_m (d mean_{i in B_m} log p(y_i|x_i) / d theta)^2 over the M minibatches
  B_m of the probe — the squared *minibatch* gradient of Avalanche's EWCPlugin, which the
  continual-learning-baselines tables use; cross terms between samples make it roughly 1/|B|
  of ``empirical`` for uncorrelated gradients. Kept only to reproduce those tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, vmap

from cl_bench.layout import ParamLayout, detached, flatten
from cl_bench.models import MultiHead

FISHER_KINDS: tuple[str, ...] = ("exact", "sampled", "argmax", "empirical", "empirical_weighted", "batch")
DENSE_KINDS: tuple[str, ...] = ("hessian", "ggn")
Batches = Iterable[tuple[Tensor, Tensor]]
#: loss(logits [B, K], y [B]) -> mean loss over the batch
LossFn = Callable[[Tensor, Tensor], Tensor]
#: per-sample gradient entries held at once (128 MiB in float32); larger batches are split
MAX_ELEMENTS = 2**25


class TaskOutputs(nn.Module):
    """The logits of one task's likelihood, in a form ``vmap`` can batch.

    Multi-head backbones: the task's own head (its outputs are ``task.classes``
    in order). Single head: all outputs, or only ``classes`` when training masks
    other tasks' logits (masked logits have probability exactly 0).
    """

    def __init__(self, backbone: nn.Module, task_id: int, classes: Sequence[int] | None) -> None:
        super().__init__()
        self.net = backbone
        self.task_id = task_id
        self.multi_head = isinstance(getattr(backbone, "head", None), MultiHead)
        index = torch.tensor(list(classes), dtype=torch.long) if classes is not None else None
        self.register_buffer("index", index, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.multi_head:
            net: Any = self.net
            return net.head.heads[self.task_id](net.features(x))
        logits = self.net(x)
        return logits if self.index is None else logits.index_select(-1, self.index)


def sum_tensors(terms: Iterable[Tensor]) -> Tensor:
    """Sum of a non-empty iterable of tensors."""
    it = iter(terms)
    total = next(it)
    for t in it:
        total = total + t
    return total


def _log_probs(model: nn.Module) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """(params, one sample x) -> log p(. | x) ``[K]``."""

    def fn(params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0).log_softmax(-1)

    return fn


def _sample_grads(model: nn.Module, x: Tensor, c: Tensor) -> dict[str, Tensor]:
    """Per parameter ``[B, *shape]``: row i = d log p(c_i | x_i) / d theta."""
    logp = _log_probs(model)
    return vmap(grad(lambda p, xi, ci: logp(p, xi).gather(0, ci[None]).squeeze(0)), in_dims=(None, 0, 0))(
        detached(model), x, c)


def _class_grads(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Per parameter ``[B, K, *shape]``: entry (i, c) = d log p(c | x_i) / d theta (one ``jacrev``)."""
    return vmap(jacrev(_log_probs(model)), in_dims=(None, 0))(detached(model), x)


def per_sample_grads(model: nn.Module, x: Tensor, c: Tensor) -> Tensor:
    """``[B, P]``: row i = d log p(c_i | x_i) / d theta."""
    return flatten(_sample_grads(model, x, c), 1)


def _weighted_squares(grads: dict[str, Tensor], w: Tensor) -> Tensor:
    """``[P]``: sum over the leading (sample[, class]) dims of ``w * g^2``, one parameter at a time
    (never a ``[B, P]`` copy: the concatenation and products of the flat matrix dominated the cost)."""
    return torch.cat([torch.tensordot(w, g.square(), dims=w.dim()).reshape(-1) for g in grads.values()])


def batch_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``[P]``: d mean_i log p(y_i | x_i) / d theta over the batch."""
    logp = _log_probs(model)
    mean_ll = lambda p: vmap(logp, in_dims=(None, 0))(p, x).gather(1, y[:, None]).mean()  # noqa: E731
    return flatten(grad(mean_ll)(detached(model)))


def _rows(model: nn.Module, per_sample: int) -> int:
    """Samples whose ``per_sample`` gradients of all parameters fit in :data:`MAX_ELEMENTS`."""
    n_params = sum(p.numel() for p in detached(model).values())
    return max(1, MAX_ELEMENTS // (per_sample * n_params))


def diag_fisher(model: nn.Module, batches: Batches, kind: str, generator: torch.Generator | None = None) -> Tensor:
    """Diagonal Fisher ``[P]`` of ``kind`` (see the module docstring), averaged over all samples
    (``batch``: over the minibatches of ``batches``)."""
    if kind not in FISHER_KINDS:
        raise ValueError(f"fisher={kind!r} is not valid; choose one of {list(FISHER_KINDS)}")
    total, n = None, 0
    for x, y in batches:
        if kind == "batch":  # one squared gradient per minibatch; averaged over minibatches below
            part, n = batch_grad(model, x, y).square(), n + 1
            total = part if total is None else total + part
            continue
        with torch.no_grad():
            p = model(x).softmax(-1)  # [B, K]
        if kind == "exact":  # sum_c p_c g_c^2: by layer where the network allows, else [b, K, P] gradients
            fast = linear_fisher(model, x)
            part = fast if fast is not None else exact_fisher_sum(model, x, p)
        else:
            c = y if kind.startswith("empirical") else p.argmax(1) if kind == "argmax" \
                else torch.multinomial(p, 1, generator=generator).squeeze(1)
            w = p.gather(1, y[:, None]).squeeze(1) if kind == "empirical_weighted" else torch.ones_like(p[:, 0])
            fast = linear_fisher(model, x, c, w)
            size = _rows(model, 1)
            part = fast if fast is not None else sum_tensors(
                _weighted_squares(_sample_grads(model, xc, cc), wc)
                for xc, cc, wc in zip(x.split(size), c.split(size), w.split(size)))
        total = part if total is None else total + part
        n += x.shape[0]
    if total is None:
        raise ValueError("diag_fisher: no samples (the probe set is empty)")
    return total / n


def exact_fisher_sum(model: nn.Module, x: Tensor, p: Tensor) -> Tensor:
    """``[P]``: sum_i sum_c p(c|x_i) g_ic^2 with g_ic = d log p(c|x_i) / d theta for any network, from
    the per-sample per-class gradients (one ``jacrev`` per sample, in chunks of [b, K, P])."""
    size = _rows(model, p.shape[1])
    return sum_tensors(_weighted_squares(_class_grads(model, xc), pc) for xc, pc in zip(x.split(size), p.split(size)))


def linear_fisher(model: nn.Module, x: Tensor, labels: Tensor | None = None,
                  weights: Tensor | None = None) -> Tensor | None:
    """``[P]``: the sum over the batch of a diagonal Fisher, by layer, when every parameter of the network
    is the weight or bias of an ``nn.Linear`` applied once per forward to ``[B, in]`` inputs; None
    otherwise (the caller then uses per-sample gradients). Without ``labels`` the exact Fisher; with
    ``labels`` c_i and ``weights`` w_i [B] the Fisher of one label per sample, sum_i w_i g_i^2 with
    g_i = d log p(c_i|x_i) / d theta (argmax, sampled, empirical and empirical_weighted).

    For a linear layer z = W a + b with input a_i and d_ic = d log p(c|x_i) / d z (samples do not
    interact in eval mode, so one backward pass of sum_i log p(c_i|x_i) gives every d_i), the per-sample
    gradient is d_ic a_i^T, so sum_i sum_c p_ic (d log p_ic / d W)^2 = sum_i (sum_c p_ic d_ic^2) (a_i^2)^T
    (K backward passes of the batch) and sum_i w_i g_i^2 = sum_i w_i d_i^2 (a_i^2)^T (one backward pass);
    the bias terms drop the a_i^2; no [B, P] or [B, K, P] tensor is formed.
    """
    names = list(detached(model))
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    owner = {f"{ln}.{pn}" if ln else pn: (ln, pn)
             for ln, m in layers.items() for pn, _ in m.named_parameters(recurse=False)}
    if any(n not in owner for n in names):
        return None
    inputs: dict[str, list[Tensor]] = {}
    outputs: dict[str, list[Tensor]] = {}

    def keep(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            inputs.setdefault(name, []).append(args[0].detach())
            outputs.setdefault(name, []).append(out)
        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in layers.items()]
    try:
        with torch.enable_grad():
            logp = model(x).log_softmax(-1)
    finally:
        for h in handles:
            h.remove()
    used = list(outputs)
    if any(len(outputs[n]) != 1 or inputs[n][0].dim() != 2 or outputs[n][0].grad_fn is None for n in used):
        return None  # a layer called twice, on [B, ..., in] inputs, or outside the graph
    zs = [outputs[n][0] for n in used]
    p = logp.detach().exp()
    weighted = {n: torch.zeros_like(z) for n, z in zip(used, zs)}  # the weighted d^2 of each layer, [B, out]
    if labels is None:
        for c in range(logp.shape[1]):
            grads = torch.autograd.grad(logp[:, c].sum(), zs, retain_graph=c < logp.shape[1] - 1, allow_unused=True)
            for n, d in zip(used, grads):
                if d is not None:
                    weighted[n] += p[:, c:c + 1] * d.detach().square()
    else:
        w = torch.ones_like(p[:, 0]) if weights is None else weights
        grads = torch.autograd.grad(logp.gather(1, labels[:, None]).sum(), zs, allow_unused=True)
        for n, d in zip(used, grads):
            if d is not None:
                weighted[n] += w[:, None] * d.detach().square()
    parts = []
    for name in names:
        layer, kind = owner[name]
        param = dict(layers[layer].named_parameters(recurse=False))[kind]
        if layer not in weighted:  # a head this task's outputs do not use
            parts.append(torch.zeros(param.numel(), dtype=param.dtype, device=param.device))
        elif kind == "weight":
            parts.append((weighted[layer].T @ inputs[layer][0].square()).reshape(-1))
        else:
            parts.append(weighted[layer].sum(0))
    return torch.cat(parts)


def mas_importance(model: nn.Module, batches: Batches) -> Tensor:
    """MAS (Aljundi et al. 2018, Eq. 4): Omega = 1/N sum_i |d ||f(x_i)||_2^2 / d theta|, ``[P]``.

    ``f`` = the likelihood's logits; the squared L2 norm as in the paper.
    """
    params = detached(model)

    def sq_norm(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, p, (x.unsqueeze(0),)).square().sum()

    total: Tensor | None = None
    n = 0
    for x, _ in batches:
        per_sample = (vmap(grad(sq_norm), in_dims=(None, 0))(params, xc) for xc in x.split(_rows(model, 1)))
        part = sum_tensors(torch.cat([g.abs().sum(0).reshape(-1) for g in grads.values()]) for grads in per_sample)
        total = part if total is None else total + part
        n += x.shape[0]
    if total is None:
        raise ValueError("mas_importance: no samples (the probe set is empty)")
    return total / n


def dense_hessian(model: nn.Module, batches: Batches, loss_fn: LossFn = F.cross_entropy) -> Tensor:
    """Hessian ``[P, P]`` of the mean loss over all samples (``torch.func.hessian``, per batch)."""
    params = detached(model)
    theta = flatten(params)

    def loss(th: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(model, ParamLayout.of(model).views(th), (x,)), y)

    total, n = None, 0
    for x, y in batches:
        part = hessian(loss)(theta, x, y) * x.shape[0]
        total = part if total is None else total + part
        n += x.shape[0]
    if total is None:
        raise ValueError("dense_hessian: no samples (the probe set is empty)")
    return total / n


def dense_ggn(model: nn.Module, batches: Batches, loss_fn: LossFn = F.cross_entropy) -> Tensor:
    """Generalised Gauss-Newton ``[P, P]`` = 1/N sum_i J_i^T H_i J_i (Schraudolph 2002), with
    J_i = d f(x_i) / d theta and H_i = d^2 loss / d f^2 at f(x_i); for cross-entropy it is the exact Fisher."""
    params = detached(model)

    def out(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)

    def out_hess(z: Tensor, y: Tensor) -> Tensor:
        return hessian(lambda zz: loss_fn(zz.unsqueeze(0), y.unsqueeze(0)))(z)

    gram, n = SymmetricGram(sum(p.numel() for p in params.values())), 0
    for x, y in batches:
        jac = flatten(vmap(jacrev(out), in_dims=(None, 0))(params, x), 2)  # [B, K, P]
        with torch.no_grad():
            h = vmap(out_hess)(model(x), y)  # [B, K, K]
            gram.add(jac.flatten(0, 1), torch.bmm(h, jac).flatten(0, 1))  # J^T (H J), [B K, P] each
        n += x.shape[0]
    if n == 0:
        raise ValueError("dense_ggn: no samples (the probe set is empty)")
    return gram.total() / n


class SymmetricGram:
    """Running sum A = sum a^T b ``[P, P]`` of products known to be symmetric (a^T b = b^T a, e.g. J^T (H J)).

    Only the blocks on and above the diagonal of a ``blocks`` x ``blocks`` grid are multiplied, about
    (blocks + 1) / (2 blocks) of the flops of the full product; :meth:`total` mirrors them below the diagonal
    (and averages each diagonal block with its transpose), so A is exactly symmetric.
    """

    def __init__(self, dim: int, blocks: int = 8) -> None:
        edges = torch.linspace(0, dim, min(blocks, max(dim, 1)) + 1).round().long().tolist()
        self.spans = [slice(a, b) for a, b in zip(edges, edges[1:])]
        self.dim = dim
        self.sum: Tensor | None = None

    def add(self, a: Tensor, b: Tensor) -> None:
        """A += a^T b for a, b ``[M, P]``."""
        if self.sum is None:
            self.sum = a.new_zeros(self.dim, self.dim)
        for i, rows in enumerate(self.spans):
            for cols in self.spans[i:]:
                self.sum[rows, cols].addmm_(a[:, rows].T, b[:, cols])

    def total(self) -> Tensor:
        """A ``[P, P]``."""
        if self.sum is None:
            raise ValueError("SymmetricGram: nothing was added")
        s = self.sum
        for i, rows in enumerate(self.spans):
            s[rows, rows] = (s[rows, rows] + s[rows, rows].T) / 2
            for cols in self.spans[i + 1:]:
                s[cols, rows] = s[rows, cols].T
        return s


def dense_curvature(model: nn.Module, batches: Batches, kind: str) -> Tensor:
    """``hessian`` or ``ggn`` of the mean cross-entropy, ``[P, P]``."""
    if kind not in DENSE_KINDS:
        raise ValueError(f"curvature={kind!r} is not valid; choose one of {list(DENSE_KINDS)}")
    return dense_hessian(model, batches) if kind == "hessian" else dense_ggn(model, batches)
