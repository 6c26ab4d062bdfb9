"""Global strategies: a buffer of stored examples estimates the past losses at the current parameters.

ER, A-GEM, GEM, DER, DER++, iCaRL and GDumb keep a :class:`cl_bench.buffer.Buffer`
(a registered sub-module, so ``state_dict`` holds it and ``state_bytes`` reports
it); LwF keeps the previous model instead, for comparison. The buffer stores
the float, normalised batches the model trained on (see ``cl_bench.buffer``).
Gradient surgery (A-GEM, GEM) acts on the network's parameters as one flat
vector (the layout of ``cl_bench.layout``) in ``transform_gradients``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, cast

import numpy as np
import quadprog
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.buffer import POLICIES, Buffer, herding, rank_within_groups
from cl_bench.data.batching import to_float
from cl_bench.data.task import Scenario, Task
from cl_bench.layout import grad_of, grad_vector, write_grad
from cl_bench.models import Backbone, MultiHead, reinitialise
from cl_bench.module import Batch, ContinualModule, OptimizerConfig, Phase, Step
from cl_bench.registry import register
from cl_bench.seeds import generator

#: the random stream of the rehearsal memory's draws (second key of the run seed's SeedSequence)
_REHEARSAL_STREAM = 7


# ------------------------------------------------------------------ gradient algebra
def agem_project(g: Tensor, g_ref: Tensor) -> Tensor:
    """A-GEM (Chaudhry et al. 2019, Eq. 11): g~ = g - (g.g_ref / g_ref.g_ref) g_ref if g.g_ref < 0, else g."""
    coef = torch.clamp(g @ g_ref, max=0.0) / (g_ref @ g_ref).clamp_min(torch.finfo(g.dtype).tiny)
    return g - coef * g_ref


def gem_project(g: Tensor, G: Tensor, gamma: float = 0.0, eps: float = 0.0) -> Tensor:
    """GEM (Lopez-Paz & Ranzato 2017, Eqs. 10-11), solved in the dual with quadprog.

    Primal: min_z 1/2 ||z - g||^2 s.t. G z >= 0 (rows of G: past tasks' gradients).
    Dual: min_v 1/2 v^T (G G^T + eps I) v + (G g)^T v s.t. v >= gamma; z = G^T v + g.
    gamma > 0 is the paper's bias towards backward transfer; eps keeps the
    dual Hessian positive definite.
    """
    Gd, gd = G.detach().double().cpu().numpy(), g.detach().double().cpu().numpy()
    k = Gd.shape[0]
    P = Gd @ Gd.T
    P = 0.5 * (P + P.T) + eps * np.eye(k)
    v = quadprog.solve_qp(P, -(Gd @ gd), np.eye(k), np.full(k, gamma))[0]
    return torch.from_numpy(Gd.T @ v + gd).to(g)


def distillation(new_logits: Tensor, old_logits: Tensor, temperature: float) -> Tensor:
    """LwF's knowledge distillation (Li & Hoiem 2017, Eq. 2; Hinton et al. 2015):
    KL(softmax(old / T) || softmax(new / T)), averaged over the batch."""
    return F.kl_div(
        F.log_softmax(new_logits / temperature, dim=1), F.log_softmax(old_logits / temperature, dim=1),
        reduction="batchmean", log_target=True,
    )


# --------------------------------------------------------------------- parameters
@dataclass
class ReplayParams:
    """Buffer capacity in examples and the replay minibatch drawn per step."""

    buffer_size: int = 200
    minibatch_size: int = 10

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {self.buffer_size}")
        if self.minibatch_size < 1:
            raise ValueError(f"minibatch_size must be >= 1, got {self.minibatch_size}")


@dataclass
class ERParams(ReplayParams):
    """``policy``: how the buffer keeps examples (one of :data:`cl_bench.buffer.POLICIES`)."""

    policy: str = "reservoir"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy not in POLICIES:
            raise ValueError(f"policy={self.policy!r} is not valid; choose one of {list(POLICIES)}")


@dataclass
class AGEMParams(ReplayParams):
    """``minibatch_size``: memory examples of the reference gradient g_ref."""

    minibatch_size: int = 128


@dataclass
class GEMParams(ReplayParams):
    """``gamma``: bias of the dual towards backward transfer (v >= gamma); ``eps``: ridge of the dual Hessian."""

    gamma: float = 0.5
    eps: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gamma < 0 or self.eps < 0:
            raise ValueError(f"gamma and eps must be >= 0, got gamma={self.gamma}, eps={self.eps}")


@dataclass
class DERParams(ERParams):
    """``alpha``: weight of the logit-matching term on replayed examples."""

    alpha: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")


@dataclass
class DERPPParams(DERParams):
    """``beta``: weight of the cross-entropy on a second replayed minibatch."""

    beta: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


@dataclass
class GDumbParams(ReplayParams):
    """``fit_epochs``: epochs of the retraining from scratch on the memory after each task."""

    buffer_size: int = 500
    minibatch_size: int = 16  # batch size of the retraining
    fit_epochs: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fit_epochs < 1:
            raise ValueError(f"fit_epochs must be >= 1, got {self.fit_epochs}")


@dataclass
class RehearsalParams:
    """``memory``: stored training samples in all, an equal share per task seen; ``ratio``: stored
    samples per new sample in a task's training set (the memory repeated max(1, floor(ratio * N_t /
    memory)) times); null: the memory concatenated once."""

    memory: int = 1100
    ratio: Optional[float] = 1.0

    def __post_init__(self) -> None:
        if self.memory < 1:
            raise ValueError(f"memory must be >= 1, got {self.memory}")
        if self.ratio is not None and not self.ratio > 0:
            raise ValueError(f"ratio must be > 0 (or null: the memory once), got {self.ratio}")


@dataclass
class LwFParams:
    """``alpha_per_task``: the weight during task t is its entry t (the last entry for later
    tasks), instead of ``alpha`` (Avalanche's list form; e.g. continual-learning-baselines'
    Split-MNIST schedule [0, 0.5, 1.333, 2.25, 3.2])."""

    alpha: float = 1.0
    temperature: float = 2.0
    alpha_per_task: Optional[list[float]] = None

    def __post_init__(self) -> None:
        alphas = [self.alpha, *(self.alpha_per_task or [])]
        if min(alphas) < 0:
            raise ValueError(f"alpha and alpha_per_task must be >= 0, got {alphas}")
        if self.alpha_per_task is not None and not self.alpha_per_task:
            raise ValueError("alpha_per_task must be null or a non-empty list (one weight per task)")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


# ------------------------------------------------------------------ shared machinery
class GlobalModule(ContinualModule):
    """Base of this family: the past enters through stored examples or a stored model."""

    family: ClassVar[str] = "global"


class ReplayModule(GlobalModule):
    """A ContinualModule with a :class:`Buffer` (policy from ``params.policy`` or ``buffer_policy``)."""

    Params: ClassVar[type] = ReplayParams
    buffer_policy: ClassVar[str] = "reservoir"
    stores_logits: ClassVar[bool] = False
    #: a draw of min(n, size) stored examples has a new shape at every step while the buffer fills
    compilable: ClassVar[bool] = False
    input_mean: Tensor  # registered buffers [1, C, 1, 1] (empty: no normalisation)
    input_std: Tensor

    def __init__(self, backbone: nn.Module, scenario: Scenario, params: Any = None,
                 optimizer: OptimizerConfig | None = None, mask_train_logits: bool = False) -> None:
        super().__init__(backbone, scenario, params, optimizer, mask_train_logits)
        policy = getattr(self.params, "policy", self.buffer_policy)
        n_logits = scenario.n_outputs if self.stores_logits else 0
        n_groups = {"class_balanced": scenario.n_outputs, "task_balanced": scenario.n_tasks}.get(policy, 0)
        self.buffer = Buffer(self.params.buffer_size, scenario.input_shape, n_logits, policy, n_groups=n_groups)
        mean, std = torch.tensor(scenario.mean), torch.tensor(scenario.std)
        self.register_buffer("input_mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", std.view(1, -1, 1, 1), persistent=False)

    def to_input(self, x: Tensor) -> Tensor:
        """Raw task images -> the float, normalised inputs the model trains on."""
        stats = (self.input_mean, self.input_std) if self.input_mean.numel() else None
        return to_float(x.to(self.device), stats)


class EpisodicMemory(ReplayModule):
    """GEM / A-GEM memory: after each task, ``buffer_size // n_tasks`` random examples of it
    (Lopez-Paz & Ranzato 2017, Sec. 3: an equal share per task; as in the DER paper's code)."""

    def __init__(self, backbone: nn.Module, scenario: Scenario, params: Any = None,
                 optimizer: OptimizerConfig | None = None, mask_train_logits: bool = False) -> None:
        super().__init__(backbone, scenario, params, optimizer, mask_train_logits)
        if self.params.buffer_size < self.n_tasks:
            raise ValueError(f"strategies.{self.name}.buffer_size={self.params.buffer_size} is smaller than the "
                             f"{self.n_tasks} tasks: every task needs at least one memory slot")

    def after_task(self, task: Task) -> None:
        quota = self.params.buffer_size // self.n_tasks
        idx = torch.randperm(task.n_train)[:quota]
        y = task.y_train[idx].to(self.device)
        self.buffer.add(self.to_input(task.x_train[idx]), y, torch.full_like(y, task.id))


# ------------------------------------------------------------------------ strategies
@register("er")
class ER(ReplayModule):
    """Experience replay (Chaudhry et al. 2019, "On Tiny Episodic Memories", Alg. 1; reservoir buffer).

    Each step: loss = CE over the current batch concatenated with ``minibatch_size``
    buffer examples; then the current batch is offered to the buffer.
    """

    Params = ERParams

    def task_loss(self, step: Step) -> Tensor:
        """CE over [x; x_b] with (x_b, y_b) a buffer draw: the replay enters the task term as one mean."""
        x, y, t = step.x, step.y, step.t
        if not self.buffer.is_empty():
            b = self.buffer.sample(self.params.minibatch_size)
            x, y, t = torch.cat([x, b.x]), torch.cat([y, b.y]), torch.cat([t, b.t])
        return F.cross_entropy(self.train_logits(x, t), y)

    def observe(self, step: Step) -> None:
        self.buffer.add(step.x, step.y, step.t)


@register("rehearsal")
class Rehearsal(GlobalModule):
    """Naive rehearsal (Hsu et al. 2018, "Re-evaluating Continual Learning Scenarios", Sec. 4 and the
    Naive_Rehearsal agent of their code): old tasks' stored samples join the new task's training set.

    After task t the memory holds m_t = min(N_j, memory // (t + 1)) random training samples of each
    task j <= t (a task's share shrinks by keeping a prefix of one random draw). Task t trains, one
    shuffled epoch at a time, on D_t concatenated with k_t copies of the memory left by task t - 1,
    k_t = max(1, floor(ratio * N_t / memory)): with ``ratio`` 1 and a full memory, old : new = 1 : 1
    (their code's rule). Unlike ER's per-step replay minibatch, the old samples are part of the epoch
    and the loss is the plain CE of the mixed batches. The memory depends only on the data and the
    draw of the run's seed (``torch.initial_seed()`` after seeding), so the schedule is fixed before
    training."""

    Params = RehearsalParams
    memory_nbytes: int = 0
    memory_counts: list[int]  # stored samples after each task (set by training_tasks)

    def memory_share(self, tasks_seen: int) -> int:
        """Stored samples per task once ``tasks_seen`` tasks have been trained."""
        return self.params.memory // tasks_seen

    def training_tasks(self, scenario: Scenario) -> list[tuple[Task, Tensor]]:
        """Task t's data followed by k_t copies of the memory of tasks < t (each sample with its own task id)."""
        gen = generator(torch.initial_seed(), _REHEARSAL_STREAM)
        draws = [torch.randperm(t.n_train, generator=gen) for t in scenario.tasks]
        self.memory_counts = [sum(min(t.n_train, self.memory_share(i + 1)) for t in scenario.tasks[:i + 1])
                              for i in range(scenario.n_tasks)]
        out = []
        for i, task in enumerate(scenario.tasks):
            xs, ys = [task.x_train], [task.y_train]
            ids = [torch.full((task.n_train,), task.id)]
            if i > 0:
                m = self.memory_share(i)
                ratio = self.params.ratio
                copies = max(1, math.floor(ratio * task.n_train / self.params.memory)) if ratio is not None else 1
                keep = [(old, draw[:min(old.n_train, m)]) for old, draw in zip(scenario.tasks[:i], draws)]
                xs += [old.x_train[k] for old, k in keep] * copies
                ys += [old.y_train[k] for old, k in keep] * copies
                ids += [torch.full((k.numel(),), old.id) for old, k in keep] * copies
            out.append((dataclasses.replace(task, x_train=torch.cat(xs), y_train=torch.cat(ys)), torch.cat(ids)))
        return out

    def after_task(self, task: Task) -> None:
        """The memory's size after ``task``: m_t samples of each task so far (reported by state_bytes)."""
        per_sample = task.x_train[:1].numel() * task.x_train.element_size()
        self.memory_nbytes = self.memory_counts[task.id] * per_sample

    def state_bytes(self) -> int:
        return super().state_bytes() + self.memory_nbytes


@register("agem")
class AGEM(EpisodicMemory):
    """Averaged GEM (Chaudhry et al. 2019, ICLR, Eq. 11).

    g_ref = gradient of the loss on ``minibatch_size`` memory examples;
    g~ = g - (g.g_ref / g_ref.g_ref) g_ref when g.g_ref < 0, else g.
    """

    Params = AGEMParams

    def transform_gradients(self) -> None:
        if self.buffer.is_empty():
            return
        params = self.network()
        b = self.buffer.sample(self.params.minibatch_size)
        with torch.enable_grad():
            g_ref = grad_of(F.cross_entropy(self.train_logits(b.x, b.t), b.y), params)
        write_grad(params, agem_project(grad_vector(params), g_ref))


@register("gem")
class GEM(EpisodicMemory):
    """Gradient episodic memory (Lopez-Paz & Ranzato 2017, Eqs. 10-11).

    g_k = gradient of the loss on task k's memory for every past task k; when
    some g.g_k < 0, g is replaced by the closest z with G z >= 0 (dual QP,
    :func:`gem_project`, with margin ``gamma``).
    """

    Params = GEMParams

    def transform_gradients(self) -> None:
        if self.buffer.is_empty():
            return
        mem, params = self.buffer.data(), self.network()
        with torch.enable_grad():
            G = torch.stack([  # [K, P]: one gradient per past task
                grad_of(F.cross_entropy(self.train_logits(mem.x[sel], mem.t[sel]), mem.y[sel]), params)
                for sel in (mem.t == k for k in range(self.current_task))
            ])
        g = grad_vector(params)
        if bool((G @ g < 0).any()):
            write_grad(params, gem_project(g, G, self.params.gamma, self.params.eps))


@register("der")
class DER(ReplayModule):
    """Dark Experience Replay (Buzzega et al. 2020, Eq. 4 / Alg. 1).

    loss = CE(f(x), y) + alpha * MSE(h(x'), z') with (x', z') from the buffer,
    z' the logits recorded when x' was stored (reservoir).
    """

    Params = DERParams
    stores_logits = True

    def replay_loss(self, step: Step) -> Tensor | None:
        if self.buffer.is_empty():
            return None
        b = self.buffer.sample(self.params.minibatch_size)
        return self.params.alpha * F.mse_loss(self(b.x, b.t), b.logits)

    def observe(self, step: Step) -> None:
        assert step.logits is not None  # set by task_loss
        self.buffer.add(step.x, step.y, step.t, logits=step.logits.detach())


@register("derpp")
class DERPP(DER):
    """DER++ (Buzzega et al. 2020, Eq. 6): DER + beta * CE(f(x''), y'') on a second,
    independent buffer draw (x'', y'')."""

    Params = DERPPParams

    def replay_loss(self, step: Step) -> Tensor | None:
        if self.buffer.is_empty():
            return None
        b = self.buffer.sample(self.params.minibatch_size)  # (x'', y''), drawn before DER's (x', z')
        return super().replay_loss(step) + self.params.beta * F.cross_entropy(self.train_logits(b.x, b.t), b.y)


class Distilling(GlobalModule):
    """Keeps a frozen copy of the network from the end of the previous task (``old_backbone``)."""

    frozen_copies: ClassVar[tuple[str, ...]] = ("old_backbone",)
    has_old: Tensor  # registered buffer: bool scalar

    def __init__(self, backbone: nn.Module, scenario: Scenario, params: Any = None,
                 optimizer: OptimizerConfig | None = None, mask_train_logits: bool = False) -> None:
        super().__init__(backbone, scenario, params, optimizer, mask_train_logits)
        self.old_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.register_buffer("has_old", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def previous(self, fn: Callable[[nn.Module], Tensor]) -> Tensor:
        """``fn(old_backbone)`` without gradients, in eval mode (frozen BatchNorm statistics)."""
        mode = self.old_backbone.training
        self.old_backbone.eval()
        try:
            return fn(self.old_backbone)
        finally:
            self.old_backbone.train(mode)

    def snapshot(self) -> None:
        self.old_backbone.load_state_dict(self.backbone.state_dict())
        self.has_old.fill_(True)

    def state_bytes(self) -> int:
        return super().state_bytes() + sum(p.numel() * p.element_size() for p in self.old_backbone.parameters())


@register("icarl")
class ICaRL(ReplayModule, Distilling):
    """iCaRL (Rebuffi et al. 2017): herding exemplars (Alg. 4, 5), distillation (Alg. 3),
    nearest-mean-of-exemplars classifier (Alg. 1). Class-incremental by design.

    Training (Alg. 3): each step uses the batch plus ``minibatch_size`` exemplars (the paper and
    Mammoth train on the union of the new data and the exemplars, i.e. a far lower replay rate);
    loss = mean BCE-with-logits over the outputs of the classes seen so far, with
    targets one-hot(y) on the current task's classes and sigmoid(old model) on
    the earlier ones. After each task: m = K // #seen classes exemplars per class
    (old sets cut to their first m, new classes by herding on L2-normalised
    features), then the class means mu_y of the normalised exemplar features.
    Scores: -||phi(x) - mu_y||^2 (phi normalised); classes without exemplars get -4,
    the largest squared distance between unit vectors.
    """

    Params = ReplayParams
    buffer_policy = "reservoir"  # unused: exemplar sets are assigned by herding
    class_means: Tensor  # registered buffers [n_outputs, D] and [n_outputs]
    has_mean: Tensor

    def __init__(self, backbone: nn.Module, scenario: Scenario, params: Any = None,
                 optimizer: OptimizerConfig | None = None, mask_train_logits: bool = False) -> None:
        if scenario.setting == "domain_il":
            raise ValueError("icarl is class-incremental by design: in domain_il no task brings new classes; "
                             "use settings class_il or task_il")
        super().__init__(backbone, scenario, params, optimizer, mask_train_logits)
        if self.params.buffer_size < scenario.n_outputs:
            raise ValueError(f"strategies.icarl.buffer_size={self.params.buffer_size} is smaller than the "
                             f"{scenario.n_outputs} classes: every class needs at least one exemplar")
        self.register_buffer("class_means", torch.zeros(scenario.n_outputs, cast(Backbone, backbone).feature_dim))
        self.register_buffer("has_mean", torch.zeros(scenario.n_outputs, dtype=torch.bool))

    def normalised_features(self, x: Tensor) -> Tensor:
        return F.normalize(cast(Backbone, self.backbone).features(x), dim=1)

    def task_loss(self, step: Step) -> Tensor:
        """Alg. 3: BCE over the seen classes on [x; exemplars], distillation targets on the old ones."""
        x, y, t = step.x, step.y, step.t
        if not self.buffer.is_empty():
            b = self.buffer.sample(self.params.minibatch_size)
            x, y, t = torch.cat([x, b.x]), torch.cat([y, b.y]), torch.cat([t, b.t])
        seen = self.class_mask[: self.current_task + 1].any(0)
        old = self.class_mask[: self.current_task].any(0)
        target = F.one_hot(y, self.class_mask.shape[1]).to(torch.float32)
        if bool(self.has_old):
            target = torch.where(old, torch.sigmoid(self.previous(lambda net: net(x, t))), target)
        return F.binary_cross_entropy_with_logits(self(x, t)[:, seen], target[:, seen])

    @torch.no_grad()
    def after_task(self, task: Task) -> None:
        was_training = self.training
        self.eval()
        seen = self.class_mask[: task.id + 1].any(0).nonzero().squeeze(1)
        m = self.params.buffer_size // seen.numel()
        old = self.buffer.data()
        keep = rank_within_groups(old.y, old.idx) < m  # herding order = slot order within a class
        xs, ys, ts = [old.x[keep]], [old.y[keep]], [old.t[keep]]
        x_task = torch.cat([self.to_input(c) for c in task.x_train.split(4096)])
        y_task = task.y_train.to(self.device)
        feats = torch.cat([self.normalised_features(c) for c in x_task.split(4096)])
        for c in task.classes:  # one herding run per new class
            members = (y_task == c).nonzero().squeeze(1)
            pick = members[herding(feats[members], m)]
            xs.append(x_task[pick])
            ys.append(y_task[pick])
            ts.append(torch.full_like(pick, task.id))
        self.buffer.assign(torch.cat(xs), torch.cat(ys), torch.cat(ts))
        mem = self.buffer.data()
        f = self.normalised_features(mem.x)
        sums = torch.zeros_like(self.class_means).index_add_(0, mem.y, f)
        self.class_means.copy_(F.normalize(sums, dim=1))
        self.has_mean.zero_()
        self.has_mean[mem.y] = True
        self.snapshot()
        self.train(was_training)

    @torch.no_grad()
    def eval_logits(self, x: Tensor, task_ids: Tensor) -> Tensor:
        if not bool(self.has_mean.any()):
            return super().eval_logits(x, task_ids)
        dist = torch.cdist(self.normalised_features(x), self.class_means) ** 2
        scores = torch.where(self.has_mean, -dist, -4.0)
        return self.mask_logits(scores, task_ids) if self.setting == "task_il" else scores


@register("gdumb")
class GDumb(ReplayModule):
    """GDumb (Prabhu et al. 2020): a greedy class-balanced sampler fills the memory during
    the stream (no training on it); after each task the network is re-initialised (fresh
    weights under ``model.init``) and trained from scratch on the memory only
    (``fit_epochs`` epochs, batches of ``minibatch_size``, the strategy's optimiser).
    GDumb's cutmix and SGDR schedule are not used.
    """

    Params = GDumbParams
    buffer_policy = "class_balanced"

    def phases(self, task: Task) -> list[Phase]:
        return [Phase("stream"), Phase("memory", epochs=self.params.fit_epochs)]

    def batches(self, phase: Phase, task_batches: Iterable[Any]) -> Iterable[Any]:
        return task_batches if phase.name == "stream" else MemoryBatches(self.buffer, self.params.minibatch_size)

    def before_phase(self, phase: Phase, task: Task) -> None:
        super().before_phase(phase, task)
        if phase.name == "memory":  # training from scratch: fresh weights under model.init
            reinitialise(self.backbone)

    def optimise(self, batch: Batch, optimizer: torch.optim.Optimizer) -> None:
        """The stream phase only fills the memory (no optimiser step); the memory phase trains."""
        if self.phase.name == "stream":
            self.buffer.add(*batch)
        else:
            super().optimise(batch, optimizer)


class MemoryBatches:
    """Every epoch: the whole memory in a fresh random order, in minibatches of ``batch_size``."""

    def __init__(self, buffer: Buffer, batch_size: int) -> None:
        self.buffer, self.batch_size = buffer, batch_size

    def __len__(self) -> int:
        return -(-self.buffer.size // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        mem = self.buffer.data()
        order = torch.randperm(self.buffer.size, device=mem.x.device)
        for idx in order.split(self.batch_size):
            yield mem.x[idx], mem.y[idx], mem.t[idx]


@register("lwf")
class LwF(Distilling):
    """Learning without Forgetting (Li & Hoiem 2017, Eq. 2), the functional regulariser.

    loss = CE(current task) + alpha * KD(new, old; T) on the current batch (alpha: ``alpha``, or
    ``alpha_per_task[t]`` during task t), where the old model is the network at the end of the
    previous task. A single head distils the outputs of all earlier classes jointly (one
    softmax); a multi-head model distils each earlier task's head separately and sums (the
    original).
    """

    Params = LwFParams

    def task_loss(self, step: Step) -> Tensor:
        net = cast(Backbone, self.backbone)
        step.features = z = net.features(step.x)
        head = net.head
        step.logits = head(z, step.t) if isinstance(head, MultiHead) else head(z)
        return F.cross_entropy(self.as_trained(step.logits, step.t), step.y)

    def replay_loss(self, step: Step) -> Tensor | None:
        if not bool(self.has_old):
            return None
        assert step.features is not None and step.logits is not None  # set by task_loss
        return self.alpha() * self.distill(step.x, step.features, step.logits)

    def alpha(self) -> float:
        """The distillation weight of the current task."""
        schedule = self.params.alpha_per_task
        return self.params.alpha if schedule is None else schedule[min(self.current_task, len(schedule) - 1)]

    def distill(self, x: Tensor, z: Tensor, logits: Tensor) -> Tensor:
        """Sum of the KD terms of the earlier tasks' outputs (``logits``: unmasked, current head)."""
        temperature = self.params.temperature
        if not isinstance(self.backbone.head, MultiHead):
            old = self.class_mask[: self.current_task].any(0)
            return distillation(logits[:, old], self.previous(lambda net: net(x))[:, old], temperature)
        z_old = self.previous(lambda net: cast(Backbone, net).features(x))
        total = z.new_zeros(())
        for k in range(self.current_task):  # one term per earlier task's head
            ids = torch.full((x.shape[0],), k, device=x.device)
            cols = self.class_mask[k]
            old_k = self.previous(lambda net: cast(Backbone, net).head(z_old, ids))[:, cols]
            total = total + distillation(self.backbone.head(z, ids)[:, cols], old_k, temperature)
        return total

    def after_task(self, task: Task) -> None:
        self.snapshot()
