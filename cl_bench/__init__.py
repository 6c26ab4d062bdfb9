"""cl-bench: continual-learning benchmarks on PyTorch Lightning.

The Python API (names load on first use, so ``import cl_bench`` and ``cl-bench --help`` stay fast)::

    import cl_bench

    @cl_bench.register("my_anchor")
    class MyAnchor(cl_bench.ContinualModule): ...

    results = cl_bench.run(overrides=["strategy=[naive,my_anchor]", "seeds=[0,1]"])
    results.aggregate["class_il/my_anchor"]["acc"]["mean"]
    cl_bench.load_results("results/default-1a2b3c4d")

:func:`run` and :func:`load_results` are in :mod:`cl_bench.api`; :func:`register`,
:func:`register_model`, :func:`register_dataset` in :mod:`cl_bench.registry`; the base
classes in :mod:`cl_bench.module`, :mod:`cl_bench.models` and :mod:`cl_bench.data`.
See docs/writing_a_strategy.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cl_bench.api import Results, load_results, run
    from cl_bench.config import ConfigError
    from cl_bench.data.task import Scenario, Task
    from cl_bench.models import Backbone, MultiHead
    from cl_bench.module import ContinualModule, NoParams, Phase, Step
    from cl_bench.registry import register, register_dataset, register_model
    from cl_bench.results import RunResult
    from cl_bench.state import resize_buffers

_EXPORTS = {
    "run": "cl_bench.api", "load_results": "cl_bench.api", "Results": "cl_bench.api",
    "register": "cl_bench.registry", "register_model": "cl_bench.registry", "register_dataset": "cl_bench.registry",
    "ContinualModule": "cl_bench.module", "Step": "cl_bench.module", "Phase": "cl_bench.module",
    "NoParams": "cl_bench.module", "Backbone": "cl_bench.models", "MultiHead": "cl_bench.models",
    "Scenario": "cl_bench.data.task", "Task": "cl_bench.data.task", "RunResult": "cl_bench.results",
    "ConfigError": "cl_bench.config", "resize_buffers": "cl_bench.state",
}
__all__ = [
    "Backbone", "ConfigError", "ContinualModule", "MultiHead", "NoParams", "Phase", "Results", "RunResult",
    "Scenario", "Step", "Task", "load_results", "register", "register_dataset", "register_model",
    "resize_buffers", "run",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cl_bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
