"""Parameter isolation and null-space projection (family ``isolation``).

Under (A1) past solutions are minima and (A2) the quadratic model holds, the
forgetting of task o is E_o = 1/2 D^T H_o D with D = theta_t - theta_o*
(docs/guarantees.md): zero iff H_o D = 0. Every method here keeps the updates in (an
approximation of) that null space:

- masks (PackNet, HAT): the coordinates a past task reads are frozen, and in
  task-IL its output reads no coordinate a later task changes, so its
  forgetting is exactly zero;
- projections (OGD, GPM, orthogonal SGD): every update is projected onto the
  orthogonal complement of a stored orthonormal basis of what past tasks depend on.

Both mechanisms are the module's gradient and update transforms
(``transform_gradients`` / ``transform_update``, see ``cl_bench.module``), so
they hold for any optimiser:

- :class:`MaskedUpdates`: the gradient of frozen coordinates is zeroed, and
  their values are written back after the optimiser step (weight decay,
  momentum and Adam move a coordinate whose gradient is zero).
- :class:`ProjectedUpdates`: g <- (I - P) g before the step (the methods' rule; with SGD,
  momentum or not, the update stays in the span of the projected gradients); with
  ``project: update`` the parameter change of the step is projected as well,
  d <- (I - P) d, which removes what a gradient projection cannot see: weight
  decay (a term in theta) and Adam's per-coordinate scaling. The optimiser's
  state is dropped at the start of a task, when the basis may have grown.

Masks, bases and embeddings live in registered buffers (HAT's embeddings are
parameters): a state dict holding T tasks loads into a fresh module (growing
bases are resized first), and ``state_bytes`` reports their memory.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call

from cl_bench.data import Scenario, Task, iterate_eval
from cl_bench.geometry import lanczos, make_operator, module_objective
from cl_bench.layout import flat_params, flatten, layout_mask, unflatten
from cl_bench.models import MLP, Backbone, MultiHead
from cl_bench.module import ContinualModule, OptimizerConfig, Phase, Step, eval_mode
from cl_bench.registry import register

PROJECT_MODES = ("gradient", "update")
OGD_VARIANTS = ("all_logits", "ground_truth", "average")
CURVATURES = ("hessian", "ggn")
FREE = -1  # PackNet owner of a coordinate no task has kept
COSH_CLAMP = 50.0  # HAT: |s e| inside cosh is clamped (cosh(50) ~ 2.6e21 stays finite in float32)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# ===================================================================== linear algebra
def project_out(basis: Tensor, v: Tensor) -> Tensor:
    """(I - V V^T) v for orthonormal columns V [P, K] and v [P] or [P, m]."""
    return v - basis @ (basis.T @ v)


def orthonormal_union(basis: Tensor, vectors: Tensor, rtol: float | None = None) -> Tensor:
    """An orthonormal basis [P, K + r] of span(basis) + span(vectors); ``basis`` [P, K] orthonormal, ``vectors`` [P, m].

    The QR factorisation of the union [V | G], taken block-wise: V is already
    orthonormal, so the union's new block is the QR of the residual
    G_perp = (I - V V^T) G (two passes: "twice is enough"), G_perp = Q R. An
    unpivoted QR is not rank-revealing (a dependent column mixes an arbitrary
    direction into Q), so the small R is diagonalised, R = U S W^T, and the r
    directions Q U[:, :r] with S > rtol * max_i ||g_i|| are kept
    (default rtol = sqrt(machine eps): 3.5e-4 in float32).
    """
    if vectors.shape[1] == 0:
        return basis
    rtol = torch.finfo(vectors.dtype).eps ** 0.5 if rtol is None else rtol
    resid = project_out(basis, project_out(basis, vectors))
    q, r = torch.linalg.qr(resid)
    u, s, _ = torch.linalg.svd(r)
    keep = s > rtol * vectors.norm(dim=0).max()
    return torch.cat([basis, q @ u[:, keep]], dim=1)


def gpm_extend(basis: Tensor, reps: Tensor, threshold: float) -> Tensor:
    """GPM's basis update of one layer (Saha et al. 2021, Sec. 4), ``reps`` R [d, n] (one representation per column).

    R_hat = R - M M^T R; R_hat = U S W^T; keep the smallest k with
    ||M M^T R||_F^2 + sum_{i<k} S_i^2 >= threshold * ||R||_F^2 and return [M | U_k]
    (task 1: M is empty and the criterion is ||R_k||_F^2 >= threshold ||R||_F^2).
    """
    total = reps.square().sum()
    kept = (basis.T @ reps).square().sum()  # = ||M M^T R||_F^2 for orthonormal M
    resid = project_out(basis, reps)
    u, s, _ = torch.linalg.svd(resid, full_matrices=False)
    need = threshold * total - kept
    k = 0 if need <= 0 else min(int((s.square().cumsum(0) < need).sum()) + 1, s.numel())
    return torch.cat([basis, u[:, :k]], dim=1)


def resize_buffers(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, names: list[str]) -> None:
    """Give the growing buffers ``names`` the checkpoint's shapes, so that ``load_state_dict`` can fill them."""
    for name in names:
        if prefix + name in state_dict:
            setattr(module, name, getattr(module, name).new_empty(state_dict[prefix + name].shape))


def _check_in(value: str, valid: tuple[str, ...], key: str) -> None:
    if value not in valid:
        raise ValueError(f"{key}={value!r} is not valid; choose one of {list(valid)}")


def _check_at_least(value: float, low: float, key: str) -> None:
    if not value >= low:
        raise ValueError(f"{key} must be >= {low}, got {value}")


# ================================================================ masked updates
class MaskedUpdates(ContinualModule):
    """Coordinates outside :meth:`update_masks` never move, whatever the optimiser."""

    family: ClassVar[str] = "isolation"
    transient_state: ClassVar[tuple[str, ...]] = ("_masks",)  # rebuilt from the saved masks at each fit's start

    def update_masks(self) -> dict[str, Tensor]:
        """Backbone parameter name -> bool mask of the coordinates this phase may change (absent: all of them)."""
        raise NotImplementedError

    def on_train_start(self) -> None:
        named = dict(self.backbone.named_parameters())
        self._masks = [(named[n], m) for n, m in self.update_masks().items()]

    def transform_gradients(self) -> None:
        for p, m in self._masks:
            if p.grad is not None:
                p.grad.masked_fill_(~m, 0.0)

    def guarded_parameters(self) -> list[nn.Parameter]:
        return [p for p, _ in self._masks]

    def transform_update(self, params: list[nn.Parameter], before: list[Tensor]) -> None:
        for (p, m), old in zip(self._masks, before):
            p.copy_(torch.where(m, p, old))


# ======================================================================= PackNet
@dataclass
class PackNetParams:
    """``prune_ratio``: fraction of a task's free weights (per layer) released for later tasks after it;
    ``prune_ratios``: one ratio per task (overrides ``prune_ratio``); ``retrain_epochs``: epochs of
    retraining the kept weights after pruning (0: none)."""

    prune_ratio: float = 0.5
    prune_ratios: Optional[list[float]] = None
    retrain_epochs: int = 1

    def __post_init__(self) -> None:
        ratios = [("prune_ratio", self.prune_ratio)] + [
            (f"prune_ratios[{i}]", r) for i, r in enumerate(self.prune_ratios or [])
        ]
        for key, r in ratios:
            if not 0 <= r < 1:
                raise ValueError(f"{key} must lie in [0, 1) (the fraction of free weights released), got {r}")
        if self.retrain_epochs < 0:
            raise ValueError(f"retrain_epochs must be >= 0, got {self.retrain_epochs}")


@register("packnet")
class PackNet(MaskedUpdates):
    """PackNet (Mallya & Lazebnik 2018, Sec. 3): train, prune, retrain, freeze; one network packs every task.

    Each coordinate has an owner (buffer ``owner_<param>``, int8): the task that
    kept it, or FREE. Task t trains only FREE coordinates; afterwards, in every
    layer it trained, it keeps the n_keep = n_free - floor(r_t n_free) free
    weights of largest |w|, sets the other free weights to 0 (they stay FREE for
    later tasks), retrains the kept ones for ``retrain_epochs`` (phase
    "retrain": a second fit of the runner's Trainer on the task's batches, so the
    same transforms guard it), and owns them from then on.

    - Biases and BatchNorm gain/shift (1-d parameters) are not pruned: the first
      task that trains them owns them (the paper fixes them after the first task);
      BatchNorm running statistics are frozen after the first task too.
    - A parameter that takes no part in task t (another task's head of a
      multi-head model) is neither pruned nor owned by t.
    - Inference: in task-IL, task j reads theta * 1[0 <= owner <= j] (the weights
      it was trained with), plus the free ones while j is not learned yet; in
      class-IL and domain-IL there is no task identity and every weight learned
      so far is used (the plain network: free weights are 0 between tasks).
    """

    Params: ClassVar[type] = PackNetParams
    n_learned: Tensor  # registered buffer: number of tasks learned (long scalar)

    def __init__(self, backbone: nn.Module, scenario: Scenario, params: Any = None,
                 optimizer: OptimizerConfig | None = None, mask_train_logits: bool = False) -> None:
        super().__init__(backbone, scenario, params, optimizer, mask_train_logits)
        ratios = self.params.prune_ratios
        if ratios is not None and len(ratios) != self.n_tasks:
            raise ValueError(f"prune_ratios has {len(ratios)} entries; the scenario has {self.n_tasks} tasks")
        if self.n_tasks > torch.iinfo(torch.int8).max:
            raise ValueError(f"packnet stores owners as int8: at most 127 tasks, the scenario has {self.n_tasks}")
        self._owner_key = {n: "owner_" + n.replace(".", "__") for n, _ in backbone.named_parameters()}
        for name, p in backbone.named_parameters():
            self.register_buffer(self._owner_key[name], torch.full(p.shape, FREE, dtype=torch.int8))
        self.register_buffer("n_learned", torch.zeros((), dtype=torch.long))
        self._touched: set[str] = set()

    def owner(self, name: str) -> Tensor:
        return getattr(self, self._owner_key[name])

    def ratio(self, t: int) -> float:
        return self.params.prune_ratios[t] if self.params.prune_ratios is not None else self.params.prune_ratio

    # ------------------------------------------------------------------ inference
    def task_weights(self, j: int) -> dict[str, Tensor]:
        """The weights task j was trained with: theta * 1[0 <= owner <= j] per parameter."""
        return {n: p * ((self.owner(n) >= 0) & (self.owner(n) <= j)) for n, p in self.backbone.named_parameters()}

    def forward(self, x: Tensor, task_ids: Tensor | None = None) -> Tensor:
        # training sees only the current task, not learned yet: the plain network in every setting
        if self.training or task_ids is None or self.setting != "task_il":
            return self.backbone(x, task_ids)
        learned = int(self.n_learned)
        tasks = torch.unique(task_ids).tolist()
        out: Tensor | None = None
        for j in tasks:  # one pass per task present in the batch, not per sample
            rows = (task_ids == j).nonzero(as_tuple=True)[0] if len(tasks) > 1 else slice(None)
            xj, tj = x[rows], task_ids[rows]
            # a task not learned yet sees every weight it would train with (owners < j and the free ones)
            z = self.backbone(xj, tj) if j >= learned \
                else functional_call(self.backbone, self.task_weights(j), (xj, tj))
            if len(tasks) == 1:
                return z
            out = z.new_empty(x.shape[0], z.shape[1]) if out is None else out
            out[rows] = z
        return cast(Tensor, out)

    def train(self, mode: bool = True) -> PackNet:
        """BatchNorm running statistics are fixed after the first task (Sec. 3)."""
        super().train(mode)
        if mode and int(self.n_learned) > 0:
            for m in self.backbone.modules():
                if isinstance(m, BATCH_NORMS):
                    m.eval()
        return self

    # ------------------------------------------------------------------- training
    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self._touched = set()

    def phases(self, task: Task) -> list[Phase]:
        retrain = [Phase("retrain", self.params.retrain_epochs)] if self.params.retrain_epochs > 0 else []
        return [Phase(), *retrain]

    def before_phase(self, phase: Phase, task: Task) -> None:
        super().before_phase(phase, task)
        if phase.name == "retrain":
            self.prune(task.id)

    def update_masks(self) -> dict[str, Tensor]:
        """Training: the free coordinates; retraining: the ones task t kept."""
        who = self.current_task if self.phase.name == "retrain" else FREE
        return {n: self.owner(n) == who for n, _ in self.backbone.named_parameters()}

    def transform_gradients(self) -> None:
        self._touched.update(n for n, p in self.backbone.named_parameters() if p.grad is not None)
        super().transform_gradients()

    @torch.no_grad()
    def prune(self, t: int) -> None:
        """Per layer trained by task t: keep the top n_free - floor(r_t n_free) free weights by |w|, zero the others."""
        r = self.ratio(t)
        for name, p in self.backbone.named_parameters():
            if name not in self._touched:
                continue
            owner = self.owner(name)
            free = owner == FREE
            if p.dim() == 1:  # biases, BatchNorm gain/shift: not pruned, owned by the first task that trains them
                owner[free] = t
                continue
            n_free = int(free.sum())
            n_keep = n_free - int(r * n_free)
            score = p.abs().masked_fill(~free, -1.0).flatten()  # owned weights never compete
            keep = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
            keep[score.topk(n_keep).indices] = True
            keep = keep.view_as(free)
            owner[keep] = t
            p[free & ~keep] = 0.0

    def after_task(self, task: Task) -> None:
        if self.params.retrain_epochs == 0:
            self.prune(task.id)
        self.n_learned.fill_(task.id + 1)

    def isolated_mask(self, task_id: int) -> Tensor | None:
        """Task-IL: task j reads theta * 1[0 <= owner <= j], and its kept weights are frozen from then on."""
        if self.setting != "task_il":
            return None
        owners = dict(self.backbone.named_parameters())
        return layout_mask(self, {f"backbone.{n}": (self.owner(n) >= 0) & (self.owner(n) <= task_id) for n in owners})


# =========================================================================== HAT
@dataclass
class HATParams:
    """``s_max``: the gates' largest scale; ``c``: weight of the capacity regulariser;
    ``embedding_clamp``: |e| <= clamp after every step (keeps sigmoid(s_max e) saturated)."""

    s_max: float = 400.0
    c: float = 0.75
    embedding_clamp: float = 6.0

    def __post_init__(self) -> None:
        _check_at_least(self.s_max, 1.0, "s_max")
        _check_at_least(self.c, 0.0, "c")
        if not self.embedding_clamp > 0:
            raise ValueError(f"embedding_clamp must be > 0, got {self.embedding_clamp}")


@register("hat")
class HAT(MaskedUpdates):
    """Hard Attention to the Task (Serrà et al. 2018, Sec. 2) on the hidden units of an MLP.

    - Gates: h'_l = a_l^t * h_l, a_l^t = sigmoid(s e_l^t), one embedding e_l^t per
      task and layer (parameters ``embeddings[t][l]``, N(0, 1) at init).
    - s annealed over the B batches of every epoch: s = 1/s_max + (s_max - 1/s_max) (b - 1)/(B - 1).
    - Cumulative mask a^{<t} = max_{o<t} a^o (buffers ``cum_<l>``), taken from hard masks.
    - Weight gradients conditioned: g'_{l,ij} = [1 - min(a^{<t}_{l,i}, a^{<t}_{l-1,j})] g_{l,ij}
      (the input is always in use; the output units of a single head are "used"
      by the past tasks that own their classes); biases g'_{l,i} = [1 - a^{<t}_{l,i}] g_{l,i}.
    - Embedding gradients compensated: q' = s_max [cosh(s e) + 1] / (s [cosh(e) + 1]) q.
    - Capacity regulariser added to the loss: c * sum_{l,i} a^t_{l,i} (1 - a^{<t}_{l,i}) / sum_{l,i} (1 - a^{<t}_{l,i}).
    - Inference: hard masks a = 1[e > 0] (s -> infinity, binarised). The
      cumulative masks are binary as well, so the conditioning factor is 0 or 1
      and the weights every past task reads are frozen exactly: task-IL forgetting is 0.
    - Task-IL trains every task on its own classes' logits (the paper's
      separate heads; ``trainer.mask_train_logits`` is forced on), so a past
      task's training loss, not only its masked evaluation, stays unchanged.
    In class-IL and domain-IL (no task identity at inference; not covered by the
    paper) the union a^{<=t} of the learned tasks' hard masks gates every sample,
    so a past task's output depends on which tasks were learned after it.
    Only MLP backbones are supported (convolutions would need per-channel gates).
    """

    Params: ClassVar[type] = HATParams
    backbone: MLP  # checked by __init__

    def __init__(self, backbone: nn.Module, scenario: Scenario, params: Any = None,
                 optimizer: OptimizerConfig | None = None, mask_train_logits: bool = False) -> None:
        if not isinstance(backbone, MLP):
            raise ValueError(f"hat gates the hidden units of an MLP (model.name=mlp); the {type(backbone).__name__} "
                             "backbone is not supported")
        super().__init__(backbone, scenario, params, optimizer, mask_train_logits or scenario.setting == "task_il")
        body: list[Any] = list(backbone.body)[1:]  # [Flatten, Linear, act, Linear, act, ...]
        self.layers: list[tuple[nn.Linear, nn.Module]] = list(zip(body[0::2], body[1::2]))
        widths = [lin.out_features for lin, _ in self.layers]
        self.embeddings = nn.ModuleList(
            nn.ParameterList(nn.Parameter(torch.randn(w)) for w in widths) for _ in range(self.n_tasks)
        )
        for l, w in enumerate(widths):
            self.register_buffer(f"cum_{l}", torch.zeros(w))
        self._s = self.params.s_max

    def cum(self, l: int) -> Tensor:
        return getattr(self, f"cum_{l}")

    # ---------------------------------------------------------------------- gates
    def anneal(self, b: int, n_batches: int) -> float:
        """The gate scale s = 1/s_max + (s_max - 1/s_max) (b - 1)/(B - 1) for batch b = 1..B of the epoch."""
        s_max = self.params.s_max
        return s_max if n_batches <= 1 else 1 / s_max + (s_max - 1 / s_max) * (b - 1) / (n_batches - 1)

    def gate(self, t: int, l: int) -> Tensor:
        """a_l^t = sigmoid(s e_l^t) in training; the hard mask 1[e_l^t > 0] otherwise."""
        e = cast(nn.ParameterList, self.embeddings[t])[l]
        return torch.sigmoid(self._s * e) if self.training else (e > 0).to(e.dtype)

    def gates(self, task_ids: Tensor) -> list[Tensor]:
        """Per-layer gates of every sample, [B, u_l] (or [1, u_l] for the union of the learned tasks);
        in training every sample is of the current task."""
        if not self.training and self.setting != "task_il":
            return [self.cum(l)[None] for l in range(len(self.layers))]
        if self.training:  # training batches are the current task's: its gates, without reading task_ids
            pos = torch.zeros_like(task_ids)
            return [torch.stack([self.gate(self.current_task, l)])[pos] for l in range(len(self.layers))]
        tasks, pos = torch.unique(task_ids, return_inverse=True)
        return [torch.stack([self.gate(t, l) for t in tasks.tolist()])[pos] for l in range(len(self.layers))]

    def forward(self, x: Tensor, task_ids: Tensor | None = None) -> Tensor:
        if task_ids is None:
            raise ValueError("hat needs task_ids in forward(x, task_ids): its gates are per task")
        h = self.backbone.body[0](x)
        for (lin, act), a in zip(self.layers, self.gates(task_ids)):
            h = act(lin(h)) * a  # h'_l = a_l * h_l
        head = self.backbone.head
        return head(h, task_ids) if isinstance(head, MultiHead) else head(h)

    # ------------------------------------------------------------------- training
    def task_loss(self, step: Step) -> Tensor:
        """The annealed gate scale of this step (``anneal``), then the base task term."""
        self._s = self.anneal(self.epoch_step + 1, self.steps_in_epoch)
        return super().task_loss(step)

    def penalty(self) -> Tensor:
        """The capacity term c * sum a^t (1 - a^{<t}) / sum (1 - a^{<t}), summed over layers and units."""
        t = self.current_task
        free = [1 - self.cum(l) for l in range(len(self.layers))]
        used = sum((self.gate(t, l) * f).sum() for l, f in enumerate(free))
        return self.params.c * used / cast(Tensor, sum(f.sum() for f in free)).clamp_min(1.0)

    def update_masks(self) -> dict[str, Tensor]:
        """1 - min(a^{<t}_{l,i}, a^{<t}_{l-1,j}) > 0 per weight, 1 - a^{<t}_{l,i} > 0 per bias."""
        names = {id(p): n for n, p in self.backbone.named_parameters()}
        layers = [lin for lin, _ in self.layers]
        posts = [self.cum(l) for l in range(len(layers))]
        head = self.backbone.head
        if isinstance(head, nn.Linear):  # a single head: output units belong to the past tasks owning their classes
            layers.append(head)
            posts.append(self.class_mask[: self.current_task].any(0).to(posts[0].dtype))
        masks: dict[str, Tensor] = {}
        pre = None  # the input is always in use
        for lin, post in zip(layers, posts):
            both = post[:, None] if pre is None else torch.minimum(post[:, None], pre[None, :])
            masks[names[id(lin.weight)]] = (1 - both).expand_as(lin.weight) > 0
            if lin.bias is not None:
                masks[names[id(lin.bias)]] = (1 - post) > 0
            pre = post
        return masks

    def transform_gradients(self) -> None:
        super().transform_gradients()  # the weight-gradient conditioning
        s, s_max = self._s, self.params.s_max
        for e in cast(nn.ParameterList, self.embeddings[self.current_task]):
            if e.grad is not None:  # q' = s_max [cosh(s e) + 1] / (s [cosh(e) + 1]) q
                e.grad.mul_(s_max * (torch.cosh((s * e.detach()).clamp(-COSH_CLAMP, COSH_CLAMP)) + 1)
                            / (s * (torch.cosh(e.detach()) + 1)))

    def transform_update(self, params: list[nn.Parameter], before: list[Tensor]) -> None:
        super().transform_update(params, before)
        for e in cast(nn.ParameterList, self.embeddings[self.current_task]):
            e.clamp_(-self.params.embedding_clamp, self.params.embedding_clamp)

    @torch.no_grad()
    def isolated_mask(self, task_id: int) -> Tensor | None:
        """Task-IL: task o reads its embeddings, W_l[i, j] with a^o_{l,i} a^o_{l-1,j} = 1 (hard masks; the
        input is always read), the biases of its open units and the head's rows of its classes."""
        if self.setting != "task_il":
            return None
        names = {id(p): f"backbone.{n}" for n, p in self.backbone.named_parameters()}
        masks: dict[str, Tensor] = {}
        pre: Tensor | None = None
        for l, (lin, _) in enumerate(self.layers):
            post = cast(nn.ParameterList, self.embeddings[task_id])[l] > 0
            cols = pre if pre is not None else torch.ones(lin.in_features, dtype=torch.bool, device=post.device)
            masks[names[id(lin.weight)]] = post[:, None] & cols[None, :]
            if lin.bias is not None:
                masks[names[id(lin.bias)]] = post
            pre = post
        head = self.backbone.head
        if isinstance(head, MultiHead):
            masks.update({names[id(p)]: torch.ones_like(p, dtype=torch.bool) for p in head.heads[task_id].parameters()})
        else:
            rows = self.class_mask[task_id]
            masks[names[id(head.weight)]] = rows[:, None] & cast(Tensor, pre)[None, :]
            if head.bias is not None:
                masks[names[id(head.bias)]] = rows
        for l, e in enumerate(cast(nn.ParameterList, self.embeddings[task_id])):
            masks[f"embeddings.{task_id}.{l}"] = torch.ones_like(e, dtype=torch.bool)
        return layout_mask(self, masks)

    @torch.no_grad()
    def after_task(self, task: Task) -> None:
        """a^{<=t} = max(a^{<t}, 1[e^t > 0])."""
        for l in range(len(self.layers)):
            hard = cast(nn.ParameterList, self.embeddings[task.id])[l] > 0
            self.cum(l).copy_(torch.maximum(self.cum(l), hard.to(self.cum(l).dtype)))

    def state_bytes(self) -> int:
        """Cumulative masks plus every task's embeddings."""
        return super().state_bytes() + sum(p.numel() * p.element_size() for p in self.embeddings.parameters())


# ============================================================= projected updates
@dataclass
class ProjectionParams:
    """``project``: gradient (project g before the step: exact for SGD with or without momentum and without
    weight decay) | update (also project the parameter change of the step: exact for any optimiser)."""

    project: str = "update"

    def __post_init__(self) -> None:
        _check_in(self.project, PROJECT_MODES, "project")


class ProjectedUpdates(ContinualModule):
    """Gradients (and, with ``project: update``, parameter changes) projected by (I - P) for a stored basis."""

    family: ClassVar[str] = "isolation"
    Params: ClassVar[type] = ProjectionParams

    def projected_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def project(self, tensors: list[Tensor]) -> list[Tensor]:
        """(I - P) applied to a vector laid out like :meth:`projected_parameters`."""
        raise NotImplementedError

    def has_basis(self) -> bool:
        raise NotImplementedError

    def on_train_start(self) -> None:
        """Drop any optimiser state (momentum, Adam moments): it may hold directions the basis now protects."""
        for opt in self.trainer.optimizers:
            opt.state.clear()

    @torch.no_grad()
    def transform_gradients(self) -> None:
        """The gradient g <- (I - P) g, and the term ``projection_removed`` = ||P g|| / ||g|| (0: nothing removed)."""
        if not self.has_basis():
            return
        params = self.projected_parameters()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        kept = self.project(grads)
        g_sq = torch.stack([g.square().sum() for g in grads]).sum()
        removed_sq = torch.stack([(g - k).square().sum() for g, k in zip(grads, kept)]).sum()
        self.add_term("projection_removed", (removed_sq / g_sq.clamp_min(1e-30)).sqrt())
        for p, g in zip(params, kept):
            p.grad = g

    def guarded_parameters(self) -> list[nn.Parameter]:
        return self.projected_parameters() if self.params.project == "update" and self.has_basis() else []

    def transform_update(self, params: list[nn.Parameter], before: list[Tensor]) -> None:
        """The step's parameter change d <- (I - P) d."""
        for p, b, d in zip(params, before, self.project([p - b for p, b in zip(params, before)])):
            p.copy_(b + d)


class FlatProjection(ProjectedUpdates):
    """P = V V^T, V [P, K] (buffer ``basis``) orthonormal over the flat vector of every backbone parameter."""

    basis: Tensor

    def __init__(self, backbone: nn.Module, scenario: Scenario, params: Any = None,
                 optimizer: OptimizerConfig | None = None, mask_train_logits: bool = False) -> None:
        super().__init__(backbone, scenario, params, optimizer, mask_train_logits)
        self.data_mean, self.data_std = scenario.mean, scenario.std
        self.register_buffer("basis", torch.zeros(sum(p.numel() for p in backbone.parameters()), 0))

    def projected_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def has_basis(self) -> bool:
        return self.basis.shape[1] > 0

    def project(self, tensors: list[Tensor]) -> list[Tensor]:
        return unflatten(project_out(self.basis, flatten(tensors)), tensors)

    def grow(self, vectors: Tensor) -> None:
        """V <- an orthonormal basis of span(V) + span(vectors) (QR of the union)."""
        self.basis = orthonormal_union(self.basis, vectors.to(self.basis))

    def sample(self, task: Task, n: int, batch_size: int) -> Any:
        """Batches ``(x, y)`` of n random training samples of the task, normalised, on the module's device."""
        idx = torch.randperm(task.n_train)[:n]
        batches = iterate_eval(task.x_train[idx], task.y_train[idx], batch_size, self.device, self.data_mean,
                               self.data_std)
        return ((x.to(self.basis.dtype), y) for x, y in batches)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        resize_buffers(self, state_dict, prefix, ["basis"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# =========================================================================== OGD
@dataclass
class OGDParams(ProjectionParams):
    """``variant``: which output gradients are stored (all_logits | ground_truth | average);
    ``samples``: training samples per task; ``probe_batch_size``: samples per batched backward."""

    variant: str = "ground_truth"
    samples: int = 200
    probe_batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_in(self.variant, OGD_VARIANTS, "variant")
        _check_at_least(self.samples, 1, "samples")
        _check_at_least(self.probe_batch_size, 1, "probe_batch_size")


@register("ogd")
class OGD(FlatProjection):
    """Orthogonal Gradient Descent (Farajtabar et al. 2020, Alg. 1).

    After task t, the gradients of the model's outputs f(x) on ``samples`` of its
    training samples join the stored set S, orthonormalised with the union (QR);
    every later gradient is projected exactly: g~ = g - sum_{v in S} (g^T v) v.
    Variants (Sec. 4): ``all_logits`` stores grad f_k(x) for every output k of the
    task, ``ground_truth`` grad f_y(x), ``average`` grad (1/K) sum_k f_k(x). The
    outputs of a task are its classes in task-IL, every output otherwise.
    """

    Params: ClassVar[type] = OGDParams
    setting_in_training: ClassVar[bool] = True  # the stored gradients are of the setting's outputs

    def outputs_of(self, task: Task) -> Tensor:
        n = self.class_mask.shape[1]
        cols = task.classes if self.setting == "task_il" else range(n)
        return torch.tensor(list(cols), device=self.device)

    def selectors(self, y: Tensor, n_outputs: int, cols: Tensor) -> Tensor:
        """Cotangents E [R, B, C]: row r of E picks the output combination whose gradient is stored."""
        b, k = y.shape[0], cols.numel()
        rows = torch.arange(b, device=y.device)
        if self.params.variant == "all_logits":  # row b*K + i: grad f_{cols[i]}(x_b)
            r = torch.arange(b * k, device=y.device)
            e = torch.zeros(b * k, b, n_outputs, device=y.device)
            e[r, r // k, cols[r % k]] = 1.0
            return e
        e = torch.zeros(b, b, n_outputs, device=y.device)
        if self.params.variant == "ground_truth":  # grad f_y(x_b)
            e[rows, rows, y] = 1.0
        else:  # average: grad (1/K) sum_k f_k(x_b)
            e[rows[:, None], rows[:, None], cols[None, :]] = 1.0 / k
        return e

    def output_gradients(self, task: Task) -> Tensor:
        """[P, R]: one stored output gradient per column (batched backward passes, no per-sample loop)."""
        params = self.projected_parameters()
        cols = self.outputs_of(task)
        out = []
        with eval_mode(self):
            for x, y in self.sample(task, self.params.samples, self.params.probe_batch_size):
                z = self.train_logits(x, torch.full_like(y, task.id))
                e = self.selectors(y, z.shape[1], cols).to(z.dtype)
                grads = torch.autograd.grad(z, params, e, is_grads_batched=True, allow_unused=True)
                out.append(torch.cat([(g if g is not None else p.new_zeros(e.shape[0], *p.shape)).flatten(1)
                                      for g, p in zip(grads, params)], dim=1))
        return torch.cat(out).T

    def after_task(self, task: Task) -> None:
        self.grow(self.output_gradients(task))


# =========================================================================== GPM
@dataclass
class GPMParams(ProjectionParams):
    """``threshold``: energy fraction eps_th of each layer's representations the basis must explain;
    ``threshold_increment``: added per task (eps_th,t = threshold + t * increment, at most 1);
    ``samples``: training samples per task whose representations are taken."""

    threshold: float = 0.97
    threshold_increment: float = 0.0
    samples: int = 300

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must lie in (0, 1], got {self.threshold}")
        _check_at_least(self.threshold_increment, 0.0, "threshold_increment")
        _check_at_least(self.samples, 1, "samples")


@register("gpm")
class GPM(ProjectedUpdates):
    """Gradient Projection Memory (Saha et al. 2021, Sec. 4) for the Linear layers of an MLP.

    After task t, each protected layer's input representations R_l (``samples``
    training samples) extend its basis M_l (buffer ``basis_<l>``) by
    :func:`gpm_extend`; every later gradient is projected layer by layer,
    grad W_l <- grad W_l - (grad W_l) M_l M_l^T. A bias is the weight of a
    constant input 1, so the layer's representation is [x; 1] and W~ = [W | b] is
    projected as one matrix: then W~ x~ is unchanged for every x~ in span(M_l).
    The Linear layers of the body and a single head are protected; a multi-head
    model's heads are task-specific (only their own task trains them).
    """

    Params: ClassVar[type] = GPMParams

    def __init__(self, backbone: nn.Module, scenario: Scenario, params: Any = None,
                 optimizer: OptimizerConfig | None = None, mask_train_logits: bool = False) -> None:
        convs = [type(m).__name__ for m in backbone.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
        if convs:
            raise ValueError(f"gpm here protects Linear layers only (model.name=mlp); the backbone has {convs[0]} "
                             "layers, which would need patch representations")
        super().__init__(backbone, scenario, params, optimizer, mask_train_logits)
        self.data_mean, self.data_std = scenario.mean, scenario.std
        self.layers = [m for m in cast(Backbone, backbone).body.modules() if isinstance(m, nn.Linear)]
        if isinstance(backbone.head, nn.Linear):
            self.layers.append(backbone.head)
        for l, lin in enumerate(self.layers):
            self.register_buffer(f"basis_{l}", torch.zeros(lin.in_features + (lin.bias is not None), 0))

    def basis(self, l: int) -> Tensor:
        return getattr(self, f"basis_{l}")

    def projected_parameters(self) -> list[nn.Parameter]:
        return cast(list[nn.Parameter], [p for lin in self.layers for p in (lin.weight, lin.bias) if p is not None])

    def has_basis(self) -> bool:
        return any(self.basis(l).shape[1] > 0 for l in range(len(self.layers)))

    def project(self, tensors: list[Tensor]) -> list[Tensor]:
        """[G_W | g_b] <- [G_W | g_b] (I - M M^T) per layer."""
        out, i = [], 0
        for l, lin in enumerate(self.layers):
            has_bias = lin.bias is not None
            g = torch.cat([tensors[i], tensors[i + 1][:, None]], dim=1) if has_bias else tensors[i]
            i += 1 + has_bias
            m = self.basis(l)
            g = g - (g @ m) @ m.T
            out.append(g[:, : lin.in_features])
            if has_bias:
                out.append(g[:, -1])
        return out

    @torch.no_grad()
    def representations(self, task: Task) -> list[Tensor]:
        """R_l [in_l + 1, n]: each protected layer's inputs [x; 1] on ``samples`` training samples (eval mode)."""
        idx = torch.randperm(task.n_train)[: self.params.samples]
        x, y = next(iterate_eval(task.x_train[idx], task.y_train[idx], len(idx), self.device, self.data_mean,
                                 self.data_std))
        inputs: dict[int, Tensor] = {}

        def keeper(l: int) -> Any:
            def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
                inputs[l] = args[0].detach()
            return hook

        hooks = [lin.register_forward_hook(keeper(l)) for l, lin in enumerate(self.layers)]
        was_training = self.training
        self.eval()
        try:
            self.train_logits(x.to(self.basis(0).dtype), torch.full_like(y, task.id))
        finally:
            self.train(was_training)
            for h in hooks:
                h.remove()
        reps = []
        for l, lin in enumerate(self.layers):
            r = inputs[l]
            if lin.bias is not None:
                r = torch.cat([r, torch.ones_like(r[:, :1])], dim=1)
            reps.append(r.T)
        return reps

    def after_task(self, task: Task) -> None:
        threshold = min(1.0, self.params.threshold + task.id * self.params.threshold_increment)
        for l, reps in enumerate(self.representations(task)):
            setattr(self, f"basis_{l}", gpm_extend(self.basis(l), reps, threshold))

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        resize_buffers(self, state_dict, prefix, [f"basis_{l}" for l in range(len(self.layers))])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ================================================================ orthogonal SGD
@dataclass
class OrthogonalSGDParams(ProjectionParams):
    """``k``: eigenvectors per task; ``curvature``: hessian | ggn; ``samples``: probe-set size;
    ``probe_batch_size``: chunk of the curvature products (0: the whole probe set);
    ``lanczos_iters`` / ``lanczos_tol``: Krylov dimension cap and residual tolerance."""

    k: int = 20
    curvature: str = "hessian"
    samples: int = 1000
    probe_batch_size: int = 0
    lanczos_iters: int = 100
    lanczos_tol: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_in(self.curvature, CURVATURES, "curvature")
        for key in ("k", "samples", "lanczos_iters"):
            _check_at_least(getattr(self, key), 1, key)
        _check_at_least(self.probe_batch_size, 0, "probe_batch_size")
        if not self.lanczos_tol > 0:
            raise ValueError(f"lanczos_tol must be > 0, got {self.lanczos_tol}")


@register("orthogonal_sgd")
class OrthogonalSGD(FlatProjection):
    """Projection off the top-k curvature eigenvectors of every past task (the null-space view of
    Lanzillotta et al., docs/guarantees.md): after task t, the k largest-algebraic eigenpairs of H_t (or G_t)
    at theta_t* on ``samples`` training samples (Lanczos, eval mode) join the basis (QR of the union),
    and every later update is projected by I - V V^T, so D^T H_o D stays ~0 on the protected directions.
    """

    Params: ClassVar[type] = OrthogonalSGDParams

    def after_task(self, task: Task) -> None:
        p = self.params
        x, y = next(self.sample(task, p.samples, p.samples))
        with eval_mode(self):
            objective = module_objective(self, x, y, task.id, p.probe_batch_size or None)
            op = make_operator(p.curvature, objective, flat_params(self))
            res = lanczos(op.matvec, op.dim, p.k, max_iter=p.lanczos_iters, tol=p.lanczos_tol, with_min=False,
                          seed=task.id, device=self.device, dtype=self.basis.dtype)
        if not res.converged:
            warnings.warn(f"orthogonal_sgd: Lanczos did not converge on task {task.id} within lanczos_iters="
                          f"{p.lanczos_iters} (largest residual {float(res.residuals.max()):.2e})", stacklevel=2)
        self.grow(res.eigvecs)
