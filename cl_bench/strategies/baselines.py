"""Baselines: fine-tuning (lower bound) and joint training (upper bound)."""

from __future__ import annotations

from torch import Tensor

from cl_bench.data import Scenario, Task, concat_tasks
from cl_bench.module import ContinualModule
from cl_bench.registry import register


@register("naive")
class Naive(ContinualModule):
    """Fine-tuning: cross-entropy on the current task only; nothing protects the past."""


@register("joint")
class Joint(ContinualModule):
    """Joint training on the union of all tasks: the multi-task upper bound.

    One training task holds every task's training data (each sample keeps its
    own task id), so the result has a single accuracy row (the final model),
    used for ``intransigence``.
    """

    def training_tasks(self, scenario: Scenario) -> list[tuple[Task, Tensor]]:
        x, y, ids = concat_tasks(scenario.tasks)
        classes = sorted({c for t in scenario.tasks for c in t.classes})
        last = scenario.tasks[-1]
        return [(Task(last.id, classes, x, y, last.x_test, last.y_test), ids)]
