"""ContinualModule: the LightningModule every strategy extends.

A strategy reads like one method: it overrides the few hooks it needs.

- ``before_task(task)`` / ``after_task(task)``: called by the runner around
  ``Trainer.fit`` on each task (consolidate Fisher, fill a buffer, grow a basis).
- ``penalty()``: a regulariser added to the task loss in ``training_step``.
- Lightning's own hooks (``on_after_backward``, ``on_before_optimizer_step``,
  ``optimizer_step``) for gradient surgery and projection.
- ``eval_logits(x, task_ids)``: scores used for evaluation (iCaRL swaps in its
  nearest-mean classifier).

State that must survive a checkpoint (anchors, importances, buffers, masks,
bases) lives in registered buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.data.task import Scenario, Task

OPTIMIZERS = ("sgd", "adam", "adamw")


class NonFiniteLossError(FloatingPointError):
    """A NaN/inf training loss; the message names the task and the step."""


@dataclass
class OptimizerConfig:
    """Optimiser of every task (a fresh one per task, as in Mammoth and Avalanche)."""

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0

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


class ContinualModule(L.LightningModule):
    """Base strategy: plain fine-tuning with cross-entropy (the ``naive`` baseline).

    ``backbone(x, task_ids)`` returns logits over all outputs of the scenario;
    in task-IL the logits of other tasks' classes are masked at evaluation (and
    in training too when ``mask_train_logits``).
    """

    name: ClassVar[str] = "base"
    family: ClassVar[str] = "baseline"
    Params: ClassVar[type] = NoParams
    #: the runner trains a ``joint`` strategy once on the union of all tasks
    joint: ClassVar[bool] = False

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
        self.setting = scenario.setting
        self.n_tasks = scenario.n_tasks
        self.mask_train_logits = mask_train_logits and scenario.setting == "task_il"
        self.register_buffer("class_mask", scenario.class_mask(), persistent=False)
        self.current_task = 0

    def __setattr__(self, name: str, value: Any) -> None:
        """Lightning sets ``_current_fx_name`` around every hook call (~40 times a step); a plain
        attribute needs none of ``nn.Module.__setattr__``'s parameter/buffer/submodule bookkeeping."""
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ---------------------------------------------------------------- model
    def forward(self, x: Tensor, task_ids: Tensor | None = None) -> Tensor:
        return self.backbone(x, task_ids)

    def mask_logits(self, logits: Tensor, task_ids: Tensor) -> Tensor:
        """Task-IL: logits of classes outside each sample's task set to -inf."""
        return logits.masked_fill(~self.class_mask[task_ids], float("-inf"))

    def train_logits(self, x: Tensor, task_ids: Tensor) -> Tensor:
        logits = self(x, task_ids)
        return self.mask_logits(logits, task_ids) if self.mask_train_logits else logits

    @torch.no_grad()
    def eval_logits(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """Scores used to evaluate; masked to the task's classes in task-IL."""
        logits = self(x, task_ids)
        return self.mask_logits(logits, task_ids) if self.setting == "task_il" else logits

    # ------------------------------------------------------------- training
    def penalty(self) -> Tensor:
        """Regulariser added to the task loss (0 for fine-tuning)."""
        return torch.zeros((), device=self.device)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        loss = F.cross_entropy(self.train_logits(x, t), y) + self.penalty()
        self.check_finite(loss, batch_idx)
        self.log_step(loss)
        return loss

    def check_finite(self, loss: Tensor, batch_idx: int) -> None:
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(
                f"{self.name}: non-finite loss {loss.item()} in task {self.current_task}, "
                f"epoch {self.current_epoch}, step {batch_idx}"
            )

    def log_step(self, loss: Tensor) -> None:
        """Per-step training loss, only when a logger is attached."""
        if self._trainer is not None and self.trainer.loggers:
            self.log(f"train/loss_task{self.current_task}", loss, on_step=True, on_epoch=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optim_cfg.build([p for p in self.parameters() if p.requires_grad])

    # ------------------------------------------------------------ task hooks
    def before_task(self, task: Task) -> None:
        """Called before ``Trainer.fit`` on ``task``."""
        self.current_task = task.id

    def after_task(self, task: Task) -> None:
        """Called after ``Trainer.fit`` on ``task``: consolidate what the strategy keeps."""

    def state_bytes(self) -> int:
        """Memory the strategy keeps besides the network (its own buffers)."""
        own = (b for n, b in self.named_buffers() if not n.startswith("backbone.") and n != "class_mask")
        return sum(b.numel() * b.element_size() for b in own)
