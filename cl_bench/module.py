"""ContinualModule: the LightningModule every strategy extends.

A strategy is its loss terms plus the task hooks it needs. One optimiser step
of every strategy is::

    loss = task_loss(step) + replay_loss(step) + penalty()

followed by the strategy's gradient transform and the optimiser step. The
runner (``cl_bench.runner``) drives every event below; a strategy overrides
only the ones it needs, and every optimiser step goes through the Trainer the
runner builds (same configuration, devices and callbacks).

Order of events of a run::

    for task in training_tasks(scenario)         # every task in order; joint: their union
        before_task(task)                        # may touch: any state; the network is about to train
        for phase in phases(task)                # each phase is one Trainer.fit (default: "train")
            before_phase(phase, task)            # e.g. PackNet prunes before "retrain", GDumb re-draws weights
            Trainer.fit(chunks of batches(phase, task)):
                configure_optimizers             # a fresh optimiser per phase (optimizer.carry_over: one per run)
                on_train_start                   # Lightning's hook; masks and bases are read here
                for each chunk of trainer.steps_per_call minibatches:
                    training_step(chunk): for each minibatch (x, y, t), one optimise():
                        StepCallback.on_step_start   # e.g. the leakage check's per-step parameter change
                        task_loss(step)          # the current batch's term; fills step.logits
                        replay_loss(step)        # stored examples or a stored model (0 by default)
                        penalty()                # a function of the parameters only (0 by default)
                        keep_terms               # each term's value of the step (terms), on the device
                        observe(step)            # after the loss: add the batch to a buffer
                        check_finite(loss)       # kept on the device; raised at the epoch's end
                        backward                 # Lightning's manual_backward only for hooks, DDP, mixed precision
                        transform_gradients()    # surgery, masks, projections
                        clip_gradients_()        # trainer.gradient_clip_val (norm | value), after the transform
                        optimizer.step()
                        transform_update(before) # the step's parameter change
                    on_train_batch_end           # the last step's terms to the loggers (train/<term>_task<t>)
                on_train_epoch_end               # report_non_finite: the epoch's first NaN/inf loss, if any
        after_task(task)                         # consolidate: Fisher, anchors, buffer, masks, bases
        (runner) evaluate every task -> row t; geometry checks of tasks < t, then task t's snapshot

Runs whose training is identical (class-IL and task-IL without ``mask_train_logits``,
unless the class declares ``setting_in_training``) share one module: the runner
trains it once and, after each task, evaluates it in each run's setting
(``select_setting``); while it trains for several settings, ``self.setting`` is
unreadable.

``eval_logits(x, task_ids)`` gives the scores used for evaluation (iCaRL swaps in
its nearest-mean classifier). State that must survive a checkpoint (anchors,
importances, buffers, masks, bases) lives in registered buffers (:mod:`cl_bench.state`: buffers the
module owns are loaded at the checkpoint's shape; a tensor kept as a plain attribute stops the run). The network's
flat parameter vector is defined once, in :mod:`cl_bench.layout`; frozen copies
kept beside the network (a teacher) are named in ``frozen_copies``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn

from cl_bench.compiled import CompiledStep, NotCompilable, why_not_compiled
from cl_bench.data.task import Scenario, Task
from cl_bench.layout import network_parameters
from cl_bench.state import resize_buffers

OPTIMIZERS = ("sgd", "adam", "adamw")
#: Lightning's hooks around backward; a step skips Lightning's wrapper only when neither is overridden
#: (:meth:`ContinualModule.direct_backward`)
BACKWARD_HOOKS = ("on_before_backward", "on_after_backward")
log = logging.getLogger(__name__)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm running statistics, no dropout) and autograd on, restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        module.train(was_training)


class NonFiniteLossError(FloatingPointError):
    """A NaN/inf training loss; the message names the task and the step."""


class SettingReadInSharedTraining(RuntimeError):
    """A strategy read ``self.setting`` while one training served several settings."""


@dataclass
class OptimizerConfig:
    """Optimiser of every task: a fresh one per task and phase (as in Mammoth and Avalanche), or with
    ``carry_over`` one optimiser, with its state (momentum, Adam's moments and step count), kept through
    every task and phase of the run (as in Hsu et al. 2018's and van de Ven et al.'s code)."""

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    carry_over: bool = False

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer.name={self.name!r}; valid: {', '.join(OPTIMIZERS)}")
        if not self.lr > 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError("optimizer.momentum and optimizer.weight_decay must be >= 0")

    def build(self, params: Any) -> torch.optim.Optimizer:
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        cls = torch.optim.Adam if self.name == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)


@dataclass
class NoParams:
    """A strategy without hyper-parameters."""


@dataclass
class Step:
    """One minibatch of the current task and what the task term computed on it."""

    x: Tensor  # [B, ...] normalised inputs
    y: Tensor  # [B] labels
    t: Tensor  # [B] task ids
    logits: Tensor | None = None  # [B, C] unmasked outputs on x, set by task_loss
    features: Tensor | None = None  # [B, F] backbone features, where a task term computes them


Batch = tuple[Tensor, Tensor, Tensor]  # (x [B, ...], y [B], t [B])


class StepCallback(L.Callback):
    """A Lightning callback that also runs before every optimiser step (Lightning's batch hooks run once
    per chunk of ``trainer.steps_per_call`` steps)."""

    def on_step_start(self, module: ContinualModule) -> None:
        """Before the step's loss; may read the module, must not change it."""


@dataclass(frozen=True)
class Phase:
    """One ``Trainer.fit`` of a task: ``name`` says what it does, ``epochs`` overrides ``trainer.epochs``."""

    name: str = "train"
    epochs: int | None = None


class ContinualModule(L.LightningModule):
    """Base strategy: plain fine-tuning with cross-entropy (the ``naive`` baseline).

    ``backbone(x, task_ids)`` returns logits over all outputs of the scenario;
    in task-IL the logits of other tasks' classes are masked at evaluation (and
    in training too when ``mask_train_logits``).
    """

    name: ClassVar[str] = "base"
    family: ClassVar[str] = "baseline"
    Params: ClassVar[type] = NoParams
    #: submodules that are frozen copies of the network (teachers): outside the parameter layout
    frozen_copies: ClassVar[tuple[str, ...]] = ()
    #: True when training (terms, transforms, task hooks) reads ``self.setting``: one training per setting
    setting_in_training: ClassVar[bool] = False
    #: False when the loss terms cannot be traced by ``torch.compile`` (see :mod:`cl_bench.compiled`)
    compilable: ClassVar[bool] = True
    #: plain tensor attributes recomputed from saved state, exempt from :func:`cl_bench.state.check_saved_state`
    transient_state: ClassVar[tuple[str, ...]] = ()
    class_mask: Tensor  # registered buffer [T, n_outputs]
    _setting: str | None
    _bad_step: Tensor  # [] long: batch index of the epoch's first non-finite loss, -1: none
    _bad_loss: Tensor  # [] that loss
    epoch_step: int  # optimiser steps taken in the current epoch
    terms: dict[str, Tensor]  # the last step's task_loss / replay_loss / penalty (detached, on the device)
    #: gradient clipping of every step (trainer.gradient_clip_val / gradient_clip_algorithm); None: off
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    #: class-IL training: logits of classes of tasks not yet trained set to -inf (trainer.mask_unseen_classes)
    mask_unseen_classes: bool = False
    _carried: torch.optim.Optimizer | None = None  # the optimiser kept across tasks (optimizer.carry_over)
    _carried_state: dict[str, Any] | None = None  # its state from a checkpoint, loaded when it is built

    def __init__(
        self,
        backbone: nn.Module,
        scenario: Scenario,
        params: Any = None,
        optimizer: OptimizerConfig | None = None,
        mask_train_logits: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.params = params if params is not None else self.Params()
        self.optim_cfg = optimizer or OptimizerConfig()
        self._setting = scenario.setting
        self.n_tasks = scenario.n_tasks
        self.mask_train_logits = mask_train_logits and scenario.setting == "task_il"
        self.register_buffer("class_mask", scenario.class_mask(), persistent=False)
        self.current_task = 0
        self.phase = Phase()
        self.automatic_optimization = False  # training_step runs the optimiser steps of a chunk itself
        self.steps_in_epoch = 0  # the epoch's minibatches, set by the runner before each fit
        self._step_callbacks: list[StepCallback] = []
        self.compile_step = False  # the runner's trainer.compile decision for this run
        self.step_graph: CompiledStep | None = None
        self._compile_refused = False
        self.fit_steps = 0  # optimiser steps of the current fit
        self._direct_backward = False  # set per fit by on_fit_start
        self.on_train_epoch_start()

    def __setattr__(self, name: str, value: Any) -> None:
        """Lightning sets ``_current_fx_name`` around every hook call (~40 times a step); a plain
        attribute needs none of ``nn.Module.__setattr__``'s parameter/buffer/submodule bookkeeping."""
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Own buffers take the checkpoint's shapes first (:func:`cl_bench.state.resize_buffers`): grown
        anchors, bases and importances load without code of the strategy's own."""
        resize_buffers(self, state_dict, prefix, list(self._buffers))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def setting(self) -> str:
        """The setting evaluated (class_il, task_il, domain_il); unreadable while one training serves several."""
        if self._setting is None:
            raise SettingReadInSharedTraining(
                f"{self.name} reads self.setting while training: its class must declare setting_in_training = True "
                "(then class-IL and task-IL train separately)")
        return self._setting

    def select_setting(self, setting: str | None) -> None:
        """The setting to evaluate next; None while one training serves several settings."""
        self._setting = setting

    def shares_training(self) -> bool:
        """Whether class-IL and task-IL runs train the identical network (only their evaluation differs)."""
        return not (self.mask_train_logits or self.setting_in_training)

    # ---------------------------------------------------------------- model
    def forward(self, x: Tensor, task_ids: Tensor | None = None) -> Tensor:
        return self.backbone(x, task_ids)

    def mask_logits(self, logits: Tensor, task_ids: Tensor) -> Tensor:
        """Task-IL: logits of classes outside each sample's task set to -inf."""
        return logits.masked_fill(~self.class_mask[task_ids], float("-inf"))

    def train_logits(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """The logits the training loss uses (masked to the task's classes only with ``mask_train_logits``)."""
        return self.as_trained(self(x, task_ids), task_ids)

    def as_trained(self, logits: Tensor, task_ids: Tensor) -> Tensor:
        """Unmasked logits -> the ones the training loss uses: masked to each sample's task with
        ``mask_train_logits`` (task-IL), to the classes of tasks 0..current_task with ``mask_unseen_classes``."""
        if self.mask_train_logits:
            return self.mask_logits(logits, task_ids)
        if self.mask_unseen_classes:
            return logits.masked_fill(~self.seen_classes(), float("-inf"))
        return logits

    def seen_classes(self) -> Tensor:
        """Bool ``[n_outputs]``: the outputs of tasks 0..current_task (the classes trained so far)."""
        return self.class_mask[: self.current_task + 1].any(0)

    def setting_logits(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """The network's logits as the setting evaluates them: masked to the task's classes in task-IL."""
        logits = self(x, task_ids)
        return self.mask_logits(logits, task_ids) if self.setting == "task_il" else logits

    @torch.no_grad()
    def eval_logits(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """Scores used to evaluate; masked to the task's classes in task-IL."""
        return self.setting_logits(x, task_ids)

    def network(self) -> list[nn.Parameter]:
        """The network's parameters in the order of the flat layout (``cl_bench.layout``)."""
        return [p for _, p in network_parameters(self)]

    def isolated_mask(self, task_id: int) -> Tensor | None:
        """Bool ``[P]`` in the layout of :mod:`cl_bench.layout`: the parameters task ``task_id``'s
        evaluated outputs depend on, as declared at the end of that task; None: nothing declared."""
        return None

    # ------------------------------------------------------------ the terms
    def task_loss(self, step: Step) -> Tensor:
        """CE(f(x), y) on the current batch (logits masked to the task in task-IL with ``mask_train_logits``)."""
        step.logits = self(step.x, step.t)
        return F.cross_entropy(self.as_trained(step.logits, step.t), step.y)

    def replay_loss(self, step: Step) -> Tensor | None:
        """The past through stored examples or a stored model; None: no such term."""
        return None

    def penalty(self) -> Tensor | None:
        """A regulariser of the parameters alone; None: no such term."""
        return None

    def observe(self, step: Step) -> None:
        """After the loss of a step: what the strategy keeps of the batch (a buffer insertion)."""

    def transform_gradients(self) -> None:
        """Between backward and the optimiser step: edit the parameters' ``.grad`` in place."""

    def guarded_parameters(self) -> list[nn.Parameter]:
        """Parameters whose change by the optimiser step :meth:`transform_update` corrects."""
        return []

    def transform_update(self, params: list[nn.Parameter], before: list[Tensor]) -> None:
        """After the optimiser step: rewrite ``params`` given their values ``before`` it (no grad)."""

    # ------------------------------------------------------------- training
    def training_step(self, chunk: list[Batch] | Batch, chunk_idx: int) -> None:
        """One Lightning step: one optimiser step per minibatch of ``chunk`` (a list of
        ``trainer.steps_per_call`` of them, fewer at the end of the epoch; or one minibatch), in order;
        stops at ``trainer.max_steps``."""
        optimizer = cast(torch.optim.Optimizer, self.optimizers())
        raw = cast(Any, optimizer).optimizer  # the torch optimiser inside Lightning's wrapper
        if self.compile_step and not self._compile_refused and (
                self.step_graph is None or (self.step_graph.optimizer is not raw and not self.step_graph.rebind(raw))):
            self.step_graph = self.compiled_step(raw)
        for batch in chunk if isinstance(chunk, list) else [chunk]:
            if 0 <= self.trainer.max_steps <= self.fit_steps:
                self.trainer.should_stop = True
                return
            self.optimise(batch, optimizer)

    def optimise(self, batch: Batch, optimizer: torch.optim.Optimizer) -> None:
        """One optimiser step on one minibatch, every event in order (the module docstring's list)."""
        for callback in self._step_callbacks:
            callback.on_step_start(self)
        step = Step(*batch)
        if self.step_graph is not None:
            try:
                loss, terms, step.logits = self.step_graph(step)
                self.after_loss(step, loss, terms)
            except NotCompilable as err:
                self.refuse_compile(f"{self.name}'s terms break the graph ({err})")
                self.optimise_eagerly(step, optimizer)
        else:
            self.optimise_eagerly(step, optimizer)
        self.epoch_step += 1
        self.fit_steps += 1

    def optimise_eagerly(self, step: Step, optimizer: torch.optim.Optimizer) -> None:
        """Loss, backward, gradient transform, optimiser step and update correction, op by op."""
        loss = self.step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        if self._direct_backward:
            loss.backward()
        else:
            self.manual_backward(loss)
        self.transform_gradients()
        self.clip_gradients_()
        params = self.guarded_parameters()
        before = [p.detach().clone() for p in params]
        optimizer.step()
        if params:
            with torch.no_grad():
                self.transform_update(params, before)

    def clip_gradients_(self) -> None:
        """Clip the gradients of the trainable parameters in place, after :meth:`transform_gradients`, with
        c = ``gradient_clip_val``: ``norm``: g <- g * min(1, c / (||g||_2 + 1e-6)) with one global norm over
        all parameters (``torch.nn.utils.clip_grad_norm_``'s rule); ``value``: every entry to [-c, c]."""
        c = self.gradient_clip_val
        if c is None:
            return
        grads = [p.grad for p in self.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        with torch.no_grad():
            if self.gradient_clip_algorithm == "value":
                for g in grads:
                    g.clamp_(-c, c)
                return
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads]))
            scale = (c / (norm + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(scale.to(g.dtype))

    def loss_terms(self, step: Step) -> dict[str, Tensor | None]:
        """The step's terms by name (None: the strategy has no such term)."""
        return {"task_loss": self.task_loss(step), "replay_loss": self.replay_loss(step), "penalty": self.penalty()}

    def step_loss(self, step: Step) -> Tensor:
        """``task_loss + replay_loss + penalty`` of one minibatch, then :meth:`after_loss`."""
        terms = self.loss_terms(step)
        loss = cast(Tensor, terms["task_loss"])
        for term in (terms["replay_loss"], terms["penalty"]):
            if term is not None:
                loss = loss + term
        self.after_loss(step, loss, terms)
        return loss

    def after_loss(self, step: Step, loss: Tensor, terms: Mapping[str, Tensor | None]) -> None:
        """Keep the terms, observe the batch, check the loss is finite (on the device), log it."""
        self.keep_terms(terms)
        self.observe(step)
        self.check_finite(loss, self.epoch_step)
        self.log_step(loss)

    def compiled_step(self, optimizer: torch.optim.Optimizer) -> CompiledStep | None:
        """The compiled step for ``optimizer`` (:mod:`cl_bench.compiled`), or None, said once, where the
        strategy's step cannot be compiled."""
        reason = why_not_compiled(self, optimizer)
        if reason is None and self.gradient_clip_val is not None:
            reason = "the compiled step does not clip gradients (trainer.gradient_clip_val)"
        if reason is None and self._trainer is not None:
            if self.trainer.world_size > 1:
                reason = "the compiled step does not synchronise gradients across processes"
            elif str(self.trainer.precision) not in ("32-true", "64-true"):
                reason = f"the compiled step has no mixed precision ({self.trainer.precision})"
        if reason is not None:
            self.refuse_compile(reason)
            return None
        return CompiledStep(self, optimizer)

    def refuse_compile(self, reason: str) -> None:
        """Train eagerly from now on, saying why once."""
        if not self._compile_refused:
            log.warning("trainer.compile: %s; training eagerly", reason)
        self._compile_refused, self.step_graph = True, None

    def keep_terms(self, terms: Mapping[str, Tensor | None]) -> None:
        """Each term's value at this step (``terms``), detached, on the device; a term that is None at a step
        is left out."""
        self.terms = {}
        for name, v in terms.items():
            if v is not None:
                self.add_term(name, v)

    def add_term(self, name: str, value: Tensor) -> None:
        """One more named quantity of this step, kept like the loss terms (e.g. the share of the gradient a
        projection removed, recorded from ``transform_gradients``)."""
        self.terms[name] = value.detach()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the optimiser step: every kept term of the step to the loggers, ``train/<term>_task<t>``
        (Lightning writes them every ``log_every_n_steps``; nothing is read on the host here)."""
        if self._trainer is not None and self.trainer.loggers:
            for name, v in self.terms.items():
                self.log(f"train/{name}_task{self.current_task}", v, on_step=True, on_epoch=False)

    def on_fit_start(self) -> None:
        """The callbacks that run before every optimiser step (:class:`StepCallback`), and whether backward
        may skip Lightning's wrapper (:meth:`direct_backward`)."""
        callbacks = self.trainer.callbacks  # type: ignore[attr-defined]
        self._step_callbacks = [cb for cb in callbacks if isinstance(cb, StepCallback)]
        self._direct_backward = self.direct_backward()
        self.fit_steps = 0

    def direct_backward(self) -> bool:
        """Whether a step may call ``loss.backward()`` instead of Lightning's ``manual_backward``: one process,
        full precision and no callback or module that overrides ``on_before_backward`` or
        ``on_after_backward``. The wrapper then adds nothing but its dispatch (two hook calls a step): the
        same arithmetic without it. The optimiser step stays Lightning's, which counts ``global_step``."""
        trainer = self.trainer
        if trainer.world_size > 1 or str(trainer.precision) not in ("32-true", "64-true"):
            return False
        listeners = [self, *trainer.callbacks]  # type: ignore[attr-defined]
        return not any(is_overridden(hook, obj, L.LightningModule if obj is self else L.Callback)
                       for hook in BACKWARD_HOOKS for obj in listeners)

    def on_train_epoch_start(self) -> None:
        self.epoch_step = 0
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._bad_loss = torch.zeros((), device=self.device)
        self.terms = {}

    def on_train_epoch_end(self) -> None:
        self.report_non_finite()

    def on_train_end(self) -> None:
        self.report_non_finite()  # a fit cut by max_steps inside an epoch

    def check_finite(self, loss: Tensor, batch_idx: int) -> None:
        """Keep the first non-finite loss of the epoch and its step, on the device (no host sync per step):
        bad_step <- batch_idx where the loss is NaN/inf and bad_step < 0."""
        first = ~torch.isfinite(loss.detach()) & (self._bad_step < 0)
        self._bad_step = torch.where(first, batch_idx, self._bad_step)
        self._bad_loss = torch.where(first, loss.detach().to(self._bad_loss.dtype), self._bad_loss)

    def report_non_finite(self) -> None:
        """Raise for the first non-finite loss kept by :meth:`check_finite` (one host sync)."""
        step = int(self._bad_step)
        if step >= 0:
            raise NonFiniteLossError(
                f"{self.name}: non-finite loss {float(self._bad_loss)} in task {self.current_task}, "
                f"epoch {self.current_epoch}, step {step}"
            )

    def log_step(self, loss: Tensor) -> None:
        """Per-step training loss, only when a logger is attached."""
        if self._trainer is not None and self.trainer.loggers:
            self.log(f"train/loss_task{self.current_task}", loss, on_step=True, on_epoch=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """A fresh optimiser of the trainable parameters; with ``optimizer.carry_over`` the run's one
        optimiser (built at the first fit, its state restored from a checkpoint), given the parameters
        that became trainable since as a new parameter group."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not self.optim_cfg.carry_over:
            return self.optim_cfg.build(params)
        if self._carried is None:
            self._carried = self.optim_cfg.build(params)
            if self._carried_state is not None:
                self._carried.load_state_dict(self._carried_state)
                self._carried_state = None
            return self._carried
        held = {id(p) for group in self._carried.param_groups for p in group["params"]}
        new = [p for p in params if id(p) not in held]
        if new:
            self._carried.add_param_group({"params": new})
        return self._carried

    def optimizer_state(self) -> dict[str, Any] | None:
        """The carried optimiser's state (``optimizer.carry_over``) for a checkpoint; None without one."""
        if self._carried is not None:
            return self._carried.state_dict()
        return self._carried_state

    def load_optimizer_state(self, state: dict[str, Any] | None) -> None:
        """Restore the carried optimiser from :meth:`optimizer_state` (when it is next built)."""
        self._carried, self._carried_state = None, state

    # ------------------------------------------------------------ task hooks
    def training_tasks(self, scenario: Scenario) -> list[tuple[Task, Tensor]]:
        """What the runner trains on, in order, with each training sample's task id: every task."""
        return [(t, torch.full((t.n_train,), t.id)) for t in scenario.tasks]

    def phases(self, task: Task) -> list[Phase]:
        """The fits of one task, in order (one Trainer each)."""
        return [Phase()]

    def batches(self, phase: Phase, task_batches: Iterable[Any]) -> Iterable[Any]:
        """The minibatches of ``phase`` (default: the task's training batches)."""
        return task_batches

    def before_task(self, task: Task) -> None:
        """Before the first fit of ``task``."""
        self.current_task = task.id

    def before_phase(self, phase: Phase, task: Task) -> None:
        """Before the fit of ``phase``."""
        self.phase = phase

    def after_task(self, task: Task) -> None:
        """After the last fit of ``task``: consolidate what the strategy keeps."""

    def state_bytes(self) -> int:
        """Memory the strategy keeps besides the network (its own buffers)."""
        own = (b for n, b in self.named_buffers() if not n.startswith("backbone.") and n != "class_mask")
        return sum(b.numel() * b.element_size() for b in own)
