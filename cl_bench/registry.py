"""Strategy registry: names -> ContinualModule subclasses.

Strategies live in the top-level ``strategies`` package and register
themselves with :func:`register`; :func:`strategy_names` imports every module
of that package once, so adding a file there is all a new method needs.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:
    from cl_bench.module import ContinualModule

_REGISTRY: dict[str, type[ContinualModule]] = {}
#: listing order of the families (the mission's: baselines, local, global, isolation)
FAMILIES = ("baseline", "local", "global", "isolation")
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


def _discover() -> None:
    import strategies

    for info in pkgutil.iter_modules(strategies.__path__):
        importlib.import_module(f"strategies.{info.name}")


def strategy_names() -> list[str]:
    """All registered names, by family, each family in its module's definition order."""
    _discover()
    return sorted(_REGISTRY, key=lambda n: FAMILIES.index(_REGISTRY[n].family))


def get_strategy(name: str) -> type[ContinualModule]:
    """The class registered as ``name``; unknown names list the valid ones."""
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"unknown strategy {name!r}; valid: {', '.join(strategy_names())}")
    return _REGISTRY[name]
