"""Strategy registry: names -> ContinualModule subclasses.

The built-in strategies live in the top-level ``strategies`` package installed
beside ``cl_bench`` and register themselves with :func:`register`;
:func:`strategy_names` imports every module of that package once, so adding a
file there is all a new method needs. A strategy defined anywhere else
registers the same way once its module is imported (``cl-bench run --import
my_pkg.my_module``, which worker processes inherit); its family may be any
name (listed after the built-in families).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from cl_bench.module import ContinualModule

_REGISTRY: dict[str, type[ContinualModule]] = {}
#: listing order of the built-in families; other families follow, by name
FAMILIES = ("baseline", "local", "global", "isolation")
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "strategies"
T = TypeVar("T", bound="type[ContinualModule]")


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a strategy available under ``name``."""

    def wrap(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"strategy name {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


#: comma-separated modules imported with the built-in strategies (``cl-bench run --import``; inherited by workers)
IMPORTS_ENV = "CL_BENCH_IMPORTS"


def import_plugins(modules: list[str]) -> None:
    """Import the user's modules that register strategies (found from the working directory too)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ImportError(f"--import {name}: {err}") from err


def _discover() -> None:
    import strategies

    found = Path(strategies.__file__ or "").resolve().parent
    if found != BUILTIN_DIR:
        raise ImportError(f"{found} is imported as 'strategies' and hides cl-bench's built-in strategies "
                          f"({BUILTIN_DIR}): rename that folder or run from another directory")
    for info in pkgutil.iter_modules(strategies.__path__):
        importlib.import_module(f"strategies.{info.name}")
    import_plugins([m for m in os.environ.get(IMPORTS_ENV, "").split(",") if m])


def family_rank(family: str) -> tuple[int, str]:
    """Built-in families in their order, then any other family by name."""
    return (FAMILIES.index(family), "") if family in FAMILIES else (len(FAMILIES), family)


def strategy_names() -> list[str]:
    """All registered names, by family, each family in its definition order."""
    _discover()
    return sorted(_REGISTRY, key=lambda n: family_rank(_REGISTRY[n].family))


def get_strategy(name: str) -> type[ContinualModule]:
    """The class registered as ``name`` (``a+b``: :func:`combine`); unknown names list the valid ones."""
    _discover()
    if "+" in name:
        return combine(name.split("+"))
    if name not in _REGISTRY:
        raise KeyError(f"unknown strategy {name!r}; valid: {', '.join(strategy_names())}")
    return _REGISTRY[name]


#: what a strategy may define at most once in a combination (the task hooks chain instead)
TERMS = ("task_loss", "replay_loss", "penalty", "observe", "transform_gradients", "transform_update",
         "guarded_parameters", "phases", "batches", "training_tasks", "forward", "eval_logits", "training_step")


def combine(names: list[str]) -> type[ContinualModule]:
    """One strategy from several whose terms differ: ``ewc+er`` trains with ER's replay and EWC's penalty.

    The classes are combined in the given order (Python's method resolution order); each term of
    :data:`TERMS` may come from one of them only, ``before_task`` / ``after_task`` run for every one
    of them, and the parameters are the union of their ``Params`` fields.
    """
    from cl_bench.module import ContinualModule

    classes = [get_strategy(n) for n in names]
    if len(set(classes)) != len(classes):
        raise KeyError(f"strategy {'+'.join(names)!r} names a strategy twice")
    for term in TERMS:
        owners = [n for n, c in zip(names, classes) if getattr(c, term) is not getattr(ContinualModule, term)]
        if len(owners) > 1:
            raise KeyError(f"strategy {'+'.join(names)!r}: {' and '.join(owners)} both define {term}; "
                           "combine strategies whose terms differ")
    fields = [f.name for c in classes for f in dataclasses.fields(c.Params)]
    clash = sorted({f for f in fields if fields.count(f) > 1})
    if clash:
        raise KeyError(f"strategy {'+'.join(names)!r}: parameters {clash} are defined by more than one of them")
    bases = tuple(c.Params for c in classes)

    def post_init(self: Any) -> None:
        for base in bases:
            if hasattr(base, "__post_init__"):
                base.__post_init__(self)

    params = dataclasses.make_dataclass(f"{'_'.join(names)}_params", [], bases=bases,
                                        namespace={"__post_init__": post_init})
    doc = " + ".join(f"{n} ({(c.__doc__ or '').strip().splitlines()[0]})" for n, c in zip(names, classes))
    combined: type[ContinualModule] = type("+".join(names), tuple(classes), {"Params": params, "__doc__": doc})
    combined.name = "+".join(names)
    return combined
