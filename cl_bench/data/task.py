"""The data contract: a scenario is a list of tasks, each a set of tensors.

Images stay ``uint8`` ``[N, C, H, W]`` until a batch is drawn; labels are
``int64``. In class-IL and task-IL the labels are the dataset's global class
ids; in domain-IL they are the within-task index (``0..n_outputs-1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

Setting = Literal["class_il", "task_il", "domain_il"]
SETTINGS: tuple[str, ...] = ("class_il", "task_il", "domain_il")


@dataclass
class Task:
    """One task of a scenario (tensors on CPU until a batcher moves them)."""

    id: int
    classes: list[int]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_val: Tensor | None = None
    y_val: Tensor | None = None

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.y_test.shape[0])


@dataclass
class Scenario:
    """A task sequence and what a model needs to know about it."""

    name: str
    setting: Setting
    tasks: list[Task]
    n_outputs: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] = field(default_factory=tuple)
    std: tuple[float, ...] = field(default_factory=tuple)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def task_classes(self) -> list[list[int]]:
        """Output indices belonging to each task (used for task-IL masking)."""
        return [t.classes for t in self.tasks]

    def class_mask(self) -> Tensor:
        """Boolean ``[n_tasks, n_outputs]``: which outputs each task may use."""
        mask = torch.zeros(self.n_tasks, self.n_outputs, dtype=torch.bool)
        for t in self.tasks:
            mask[t.id, t.classes] = True
        return mask
