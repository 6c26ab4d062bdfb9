"""Local strategies: a quadratic model of every past task's loss around its solution.

    penalty(theta) = lam/2 * sum_o (theta - theta_o*)^T F_o (theta - theta_o*)

One core, :class:`QuadraticPenalty`; a strategy says only

- how F_o is estimated (:meth:`~QuadraticPenalty.importance`),
- the form of F_o (:meth:`~QuadraticPenalty.quadratic`: diagonal by default,
  identity, Kronecker-factored per layer, dense), and
- how anchors accumulate (``online``: one running anchor theta* = the latest
  solution and F <- decay * F + F_t; otherwise one (theta_o*, F_o) per task).

Anchors and curvatures are registered buffers stacked over tasks (``[O, ...]``);
a checkpoint holding O tasks loads into a fresh module (the buffers are
resized first), and ``state_bytes`` reports their memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Optional, cast

import torch
from torch import Tensor, nn

from cl_bench.data import Scenario, Task, iterate_eval
from cl_bench.geometry.fisher import (
    DENSE_KINDS,
    FISHER_KINDS,
    TaskOutputs,
    dense_curvature,
    diag_fisher,
    mas_importance,
)
from cl_bench.geometry.kfac import KFAC_KINDS, LayerBlock, kfac_factors, kron_quadratic, layer_delta, linear_blocks
from cl_bench.layout import ParamLayout, flatten, grad_vector
from cl_bench.models import MultiHead
from cl_bench.module import ContinualModule
from cl_bench.registry import register


def _check_samples(value: int | None, key: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{key} must be >= 1 or null (the whole training set of the task), got {value}")


def _check_positive(value: float, key: str, strict: bool = False) -> None:
    if value < 0 or (strict and value == 0):
        raise ValueError(f"{key} must be {'> 0' if strict else '>= 0'}, got {value}")


@dataclass
class QuadraticParams:
    """``lam``: weight of the penalty lam/2 * sum_o D_o^T F_o D_o."""

    lam: float = 1.0

    def __post_init__(self) -> None:
        _check_positive(self.lam, "lam")


@dataclass
class ProbeParams(QuadraticParams):
    """Curvature estimated on ``samples`` random training samples of the task (null: all of them),
    in batches of ``probe_batch_size``, in eval mode."""

    samples: Optional[int] = 1024
    probe_batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_samples(self.samples, "samples")
        if self.probe_batch_size < 1:
            raise ValueError(f"probe_batch_size must be >= 1, got {self.probe_batch_size}")


class QuadraticPenalty(ContinualModule):
    """penalty = lam/2 * sum_o (theta - theta_o*)^T F_o (theta - theta_o*) over all trainable parameters."""

    family: ClassVar[str] = "local"
    Params: ClassVar[type] = QuadraticParams
    #: True: a single anchor (the latest solution) and F <- decay() * F + F_t
    online: ClassVar[bool] = False
    # registered buffers: anchors theta_o* [O, P]; curv_<key> [O, *shape] (curv_diag for the default shapes)
    anchors: Tensor
    curv_diag: Tensor

    def __init__(self, backbone: nn.Module, scenario: Scenario, *args: Any, **kwargs: Any) -> None:
        super().__init__(backbone, scenario, *args, **kwargs)
        self.data_mean, self.data_std = scenario.mean, scenario.std
        self.n_params = ParamLayout.of(self).dim
        self.register_buffer("anchors", torch.zeros(0, self.n_params))
        for key, shape in self.curvature_shapes().items():
            self.register_buffer(f"curv_{key}", torch.zeros(0, *shape))

    # ------------------------------------------------------- what a strategy says
    def curvature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each curvature tensor of one task (buffers ``curv_<key>`` stack them over tasks)."""
        return {"diag": (self.n_params,)}

    def importance(self, task: Task) -> dict[str, Tensor]:
        """F_t at the current parameters (eval mode, gradients enabled)."""
        raise NotImplementedError

    def quadratic(self, delta: Tensor) -> Tensor:
        """sum_o delta_o^T F_o delta_o for ``delta [O, P]``; diagonal F_o by default."""
        return (self.curv_diag * delta.square()).sum()

    def decay(self) -> float:
        """Factor on the running curvature of an ``online`` strategy."""
        return 1.0

    # ----------------------------------------------------------------- the core
    def theta(self) -> Tensor:
        """The parameters theta ``[P]`` (differentiable)."""
        return flatten(self.network())

    def penalty(self) -> Tensor:
        if self.anchors.shape[0] == 0:
            return torch.zeros((), device=self.device)
        delta = self.theta()[None] - self.anchors
        return 0.5 * self.params.lam * self.quadratic(delta)

    def after_task(self, task: Task) -> None:
        was_training = self.training
        self.eval()
        with torch.enable_grad():
            curvature = self.importance(task)
        self.train(was_training)
        self.consolidate(curvature, self.theta().detach())
        super().after_task(task)

    @torch.no_grad()
    def consolidate(self, curvature: dict[str, Tensor], anchor: Tensor) -> None:
        """Append (theta_t*, F_t), or fold them into the running anchor and curvature (``online``)."""
        running = self.online and self.anchors.shape[0] > 0
        for key, value in curvature.items():
            old = getattr(self, f"curv_{key}")
            setattr(self, f"curv_{key}", self.decay() * old + value[None] if running else torch.cat([old, value[None]]))
        self.anchors = anchor[None].clone() if self.online else torch.cat([self.anchors, anchor[None]])

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Resize the per-task buffers to the checkpoint's number of tasks, then load."""
        for name in ("anchors", *(f"curv_{k}" for k in self.curvature_shapes())):
            if prefix + name in state_dict:
                setattr(self, name, getattr(self, name).new_empty(state_dict[prefix + name].shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --------------------------------------------------------------- probe data
    def probe(self, task: Task, samples: int | None,
              batch_size: int) -> tuple[TaskOutputs, Iterator[tuple[Tensor, Tensor]]]:
        """The task's likelihood model and batches ``(x, y)`` of ``samples`` random training samples.

        Labels are indices into the likelihood's outputs: the task's classes for a
        multi-head model or when training masks other tasks' logits, else all outputs.
        """
        restricted = isinstance(self.backbone.head, MultiHead) or self.mask_train_logits
        classes = task.classes if restricted else None
        idx = torch.randperm(task.n_train)[:samples] if samples is not None else torch.arange(task.n_train)
        y = task.y_train[idx]
        if classes is not None:  # label -> its position among the likelihood's outputs
            lut = torch.full((self.class_mask.shape[1],), -1, dtype=torch.long)
            lut[torch.tensor(classes)] = torch.arange(len(classes))
            y = lut[y]
        model = TaskOutputs(self.backbone, task.id, classes).to(self.device)
        dtype = self.anchors.dtype
        batches = iterate_eval(task.x_train[idx], y, batch_size, device=self.device, mean=self.data_mean,
                               std=self.data_std)
        return model, ((x.to(dtype), yb) for x, yb in batches)


# ======================================================================= L2
@dataclass
class L2Params(QuadraticParams):
    """As the quadratic penalty, with a smaller default ``lam``."""

    lam: float = 0.1


@register("l2")
class L2(QuadraticPenalty):
    """F_o = I: penalty = lam/2 * sum_o ||theta - theta_o*||^2 (one anchor per task)."""

    Params = L2Params

    def curvature_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def importance(self, task: Task) -> dict[str, Tensor]:
        return {}

    def quadratic(self, delta: Tensor) -> Tensor:
        return delta.square().sum()


# ====================================================================== EWC
@dataclass
class EWCParams(ProbeParams):
    """``fisher``: exact | sampled | argmax | empirical | empirical_weighted | batch (cl_bench.geometry.fisher).

    Default ``exact``: the Fisher of the model's own predictive distribution, all
    classes enumerated: no label noise, and what EWC's Laplace argument calls for
    (van de Ven et al. 2022 use it); ``empirical`` is a different matrix, not an
    approximation of it (Kunstner et al. 2019). Costs K per-sample gradients.
    """

    lam: float = 10.0
    fisher: str = "exact"
    samples: Optional[int] = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fisher not in FISHER_KINDS:
            raise ValueError(f"fisher={self.fisher!r} is not valid; choose one of {list(FISHER_KINDS)}")


@register("ewc")
class EWC(QuadraticPenalty):
    """EWC (Kirkpatrick et al. 2017, Eq. 3): one anchor and one diagonal Fisher per task.

    After task o (``after_task``: eval mode, then ``consolidate`` appends to the buffers
    ``anchors [O, P]`` and ``curv_diag [O, P]``), on ``samples`` training samples S_o of the task:

        theta_o* = the parameters at the end of task o
        F_o,i = 1/|S_o| sum_{x in S_o} sum_y p(y | x; theta_o*) (d log p(y | x; theta_o*) / d theta_i)^2

    (``fisher: exact``; ``sampled`` draws y ~ p, ``argmax`` takes the predicted label, ``empirical`` the
    true one, ``batch`` squares minibatch gradients: ``cl_bench.geometry.fisher.diag_fisher``). During
    every later task the step's loss adds

        penalty(theta) = lam/2 * sum_o sum_i F_o,i (theta_i - theta_o,i*)^2.
    """

    Params = EWCParams

    def importance(self, task: Task) -> dict[str, Tensor]:
        """F_o at the current parameters theta_o*."""
        model, batches = self.probe(task, self.params.samples, self.params.probe_batch_size)
        return {"diag": diag_fisher(model, batches, self.params.fisher)}

    def quadratic(self, delta: Tensor) -> Tensor:
        """sum_o sum_i F_o,i delta_o,i^2 for ``delta = theta - theta_o*`` stacked ``[O, P]``."""
        return (self.curv_diag * delta.square()).sum()


@dataclass
class OnlineEWCParams(EWCParams):
    """``gamma``: decay of the running Fisher."""

    gamma: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(self.gamma, "gamma")


@register("online_ewc")
class OnlineEWC(EWC):
    """Online EWC (Schwarz et al. 2018, Sec. 4): F <- gamma F + F_t, one anchor = the latest solution."""

    Params = OnlineEWCParams
    online = True

    def decay(self) -> float:
        return self.params.gamma


# ======================================================================= SI
@dataclass
class SIParams(QuadraticParams):
    """``lam`` = 2c of Zenke et al. (their surrogate is c * sum Omega (theta - theta~)^2); ``xi`` the damping.

    ``omega_grad``: the gradient in omega = -sum_t g_t * d_t: ``task`` = the task loss alone (the
    unregularised gradient, as in the paper and its code), ``total`` = the loss with the penalty
    (Avalanche's and Mammoth's SI). ``clip``: the penalty uses min(Omega, clip) (Avalanche clips
    its cumulative Omega at 0.001; null: no clipping, as in the paper).
    """

    lam: float = 2.0
    xi: float = 0.1
    omega_grad: str = "task"
    clip: Optional[float] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(self.xi, "xi", strict=True)
        if self.clip is not None:
            _check_positive(self.clip, "clip", strict=True)
        if self.omega_grad not in ("task", "total"):
            raise ValueError(f"omega_grad={self.omega_grad!r} is not valid; choose one of ['task', 'total']")


@register("si")
class SI(QuadraticPenalty):
    """Synaptic Intelligence (Zenke et al. 2017, Eqs. 3-5).

    Per step omega += -g_t * (theta_{t+1} - theta_t); at the task's end
    Omega += omega / (Delta^2 + xi), Delta = theta_end - theta_start; one anchor
    (the latest solution) with cumulative Omega. Omega is not clipped: it can be
    negative where a parameter moved against the gradient, as in the paper.
    """

    Params = SIParams
    online = True
    transient_state = ("_grad",)  # the current step's gradient, written before it is read
    omega: Tensor  # registered buffers [P]: this task's path integral, theta at the task's start
    task_start: Tensor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("omega", torch.zeros(self.n_params))
        self.register_buffer("task_start", torch.zeros(self.n_params))
        self._grad = torch.zeros(self.n_params)

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self.omega.zero_()
        self.task_start.copy_(self.theta().detach())

    def penalty_importance(self) -> Tensor:
        """The penalty's importance ``[O, P]``: the cumulative Omega, clipped at ``clip`` if set."""
        return self.curv_diag if self.params.clip is None else self.curv_diag.clamp(max=self.params.clip)

    def quadratic(self, delta: Tensor) -> Tensor:
        return (self.penalty_importance() * delta.square()).sum()

    def penalty_grad(self) -> Tensor:
        """The gradient d penalty / d theta = lam * sum_o Omega_o * (theta - theta_o*) (closed form, no backward)."""
        if self.anchors.shape[0] == 0:
            return torch.zeros(self.n_params, device=self.device)
        return self.params.lam * (self.penalty_importance() * (self.theta().detach()[None] - self.anchors)).sum(0)

    @torch.no_grad()
    def transform_gradients(self) -> None:
        """Keep g_t (the task loss's gradient when ``omega_grad: task``) for the path integral."""
        g = grad_vector(self.network())
        self._grad = g - self.penalty_grad() if self.params.omega_grad == "task" else g

    def guarded_parameters(self) -> list[nn.Parameter]:
        return self.network()

    def transform_update(self, params: list[nn.Parameter], before: list[Tensor]) -> None:
        """The path integral: omega -= g_t * (theta_{t+1} - theta_t)."""
        self.omega -= self._grad * (flatten(params) - flatten(before))

    @torch.no_grad()
    def importance(self, task: Task) -> dict[str, Tensor]:
        delta = self.theta() - self.task_start
        return {"diag": self.omega / (delta.square() + self.params.xi)}


# ====================================================================== MAS
@dataclass
class MASParams(ProbeParams):
    """``gamma``: decay of the running importance (1: accumulate over tasks, as Aljundi et al.)."""

    lam: float = 0.1
    gamma: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(self.gamma, "gamma")


@register("mas")
class MAS(QuadraticPenalty):
    """Memory Aware Synapses (Aljundi et al. 2018, Eq. 4): Omega = mean_x |d ||f(x)||_2^2 / d theta|,
    accumulated over tasks with one anchor (the latest solution)."""

    Params = MASParams
    online = True

    def decay(self) -> float:
        return self.params.gamma

    def importance(self, task: Task) -> dict[str, Tensor]:
        model, batches = self.probe(task, self.params.samples, self.params.probe_batch_size)
        return {"diag": mas_importance(model, batches)}


# ================================================================= KFAC-EWC
@dataclass
class KFACParams(EWCParams):
    """As EWC; a smaller default ``lam``: the Kronecker factors keep the large off-diagonal curvature."""

    lam: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fisher not in KFAC_KINDS:
            raise ValueError(f"fisher={self.fisher!r} is not valid for kfac_ewc; choose one of {list(KFAC_KINDS)}")


@register("kfac_ewc")
class KFACEWC(EWC):
    """EWC with a Kronecker-factored Fisher per Linear layer (Ritter et al. 2018, Sec. 3):
    F_o,l ~= A_o,l (x) G_o,l and the penalty sum_{o,l} tr(D^T G D A) (no Kronecker product formed)."""

    Params = KFACParams

    @cached_property
    def blocks(self) -> list[LayerBlock]:
        return list(linear_blocks(self.backbone).values())

    def curvature_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for i, b in enumerate(self.blocks):
            shapes[f"A{i}"] = (b.a_dim, b.a_dim)
            shapes[f"G{i}"] = (b.out_features, b.out_features)
        return shapes

    def importance(self, task: Task) -> dict[str, Tensor]:
        model, batches = self.probe(task, self.params.samples, self.params.probe_batch_size)
        factors = list(kfac_factors(model, batches, self.params.fisher).values())
        return {key: f for i, (a, g) in enumerate(factors) for key, f in ((f"A{i}", a), (f"G{i}", g))}

    def quadratic(self, delta: Tensor) -> Tensor:
        return cast(Tensor, sum(
            kron_quadratic(getattr(self, f"curv_A{i}"), getattr(self, f"curv_G{i}"), layer_delta(delta, b))
            for i, b in enumerate(self.blocks)
        ))


# =========================================================== quadratic_exact
@dataclass
class QuadraticExactParams(ProbeParams):
    """``curvature``: ggn (PSD; = the exact Fisher for cross-entropy) | hessian (the true second-order
    Taylor term; can be indefinite away from a minimum). ``max_params``: largest P allowed (P x P per task)."""

    lam: float = 1.0
    curvature: str = "ggn"
    probe_batch_size: int = 32
    max_params: int = 5000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.curvature not in DENSE_KINDS:
            raise ValueError(f"curvature={self.curvature!r} is not valid; choose one of {list(DENSE_KINDS)}")
        if self.max_params < 1:
            raise ValueError(f"max_params must be >= 1, got {self.max_params}")


@register("quadratic_exact")
class QuadraticExact(QuadraticPenalty):
    """The full second-order model of each past loss: F_o = Hessian or GGN at theta_o*, dense.

    The sum is kept expanded around the latest anchor theta_T (u = theta - theta_T, e_o = theta_T - theta_o*):
        sum_o (u + e_o)^T F_o (u + e_o) = u^T A u + 2 u^T g + c,
        A = sum_o F_o,  g = A theta_T - b,  b = sum_o F_o theta_o*,  c = sum_o e_o^T F_o e_o,
    so a step costs one P x P product whatever the number of past tasks (autograd would add two more),
    and only A is dense.
    """

    Params = QuadraticExactParams
    curv_sum: Tensor  # registered buffers: A [P, P], b [P] (float64), sum_o theta_o*^T F_o theta_o*, g [P], c
    curv_b: Tensor
    curv_tt: Tensor
    lin: Tensor
    const: Tensor

    def __init__(self, backbone: nn.Module, scenario: Scenario, params: Any = None, *args: Any, **kwargs: Any) -> None:
        params = params if params is not None else self.Params()
        n = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
        if n > params.max_params:
            raise ValueError(
                f"quadratic_exact keeps a dense P x P curvature: the model has P={n} trainable "
                f"parameters > max_params={params.max_params} ({4 * n * n / 2**20:.1f} MiB in float32); "
                "raise max_params or use a smaller model"
            )
        super().__init__(backbone, scenario, params, *args, **kwargs)
        self.register_buffer("curv_sum", torch.zeros(self.n_params, self.n_params))  # A
        self.register_buffer("curv_b", torch.zeros(self.n_params, dtype=torch.float64))  # b
        self.register_buffer("curv_tt", torch.zeros((), dtype=torch.float64))  # sum_o theta_o*^T F_o theta_o*
        self.register_buffer("lin", torch.zeros(self.n_params))  # g
        self.register_buffer("const", torch.zeros(()))  # c

    def curvature_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}  # the per-task F_o are folded into A, b and the scalars above

    def importance(self, task: Task) -> dict[str, Tensor]:
        model, batches = self.probe(task, self.params.samples, self.params.probe_batch_size)
        return {"dense": dense_curvature(model, batches, self.params.curvature).detach()}

    @torch.no_grad()
    def consolidate(self, curvature: dict[str, Tensor], anchor: Tensor) -> None:
        f = curvature["dense"]
        self.curv_sum += f
        self.curv_b += (f @ anchor).double()
        self.curv_tt += anchor.double() @ (f @ anchor).double()
        self.anchors = torch.cat([self.anchors, anchor[None]])
        a_theta = (self.curv_sum @ anchor).double()
        self.lin = (a_theta - self.curv_b).to(self.lin.dtype)
        self.const = (anchor.double() @ a_theta - 2 * anchor.double() @ self.curv_b + self.curv_tt).to(self.const.dtype)

    def penalty(self) -> Tensor:
        if self.anchors.shape[0] == 0:
            return torch.zeros((), device=self.device)
        u = self.theta() - self.anchors[-1]
        au = self.curv_sum @ u.detach()  # the one P x P product: A u is also the gradient of u^T A u / 2
        quad = u @ au - 0.5 * u.detach() @ au  # value u^T A u / 2, gradient A u (A symmetric)
        return self.params.lam * (quad + u @ self.lin + 0.5 * self.const)
