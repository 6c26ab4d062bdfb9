"""Baselines: fine-tuning (lower bound) and joint training (upper bound)."""

from __future__ import annotations

from cl_bench.module import ContinualModule
from cl_bench.registry import register


@register("naive")
class Naive(ContinualModule):
    """Fine-tuning: cross-entropy on the current task only; nothing protects the past."""


@register("joint")
class Joint(ContinualModule):
    """Joint training on the union of all tasks: the multi-task upper bound.

    The runner trains it once on every task's data together, so its result has
    a single accuracy row (the final model), used for ``intransigence``.
    """

    joint = True
