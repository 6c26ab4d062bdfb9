"""Registries: strategy names -> ContinualModule subclasses, model names -> factories, dataset names -> factories.

The built-in strategies live in the top-level package :mod:`strategies` (beside
``cl_bench``) and register themselves with :func:`register`; :func:`strategy_names` imports every module of
that package once, so adding a file there is all a new method needs. Code of
one's own registers the same way once its module is imported: ``cl-bench run
--import my_pkg.my_module``, the config key ``imports: [my_pkg.my_module]``, or
an installed package's entry point in the group ``cl_bench.plugins``
(:data:`ENTRY_POINT_GROUP`). Every process that builds runs imports the same
modules (:func:`load_plugins`; pool workers get them from
:func:`plugin_modules`). ``strategy.class`` may also name a class directly,
``package.module:Class``. A strategy's family may be any name (listed after the
built-in families).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from cl_bench.module import ContinualModule

_REGISTRY: dict[str, type[ContinualModule]] = {}
#: model name -> factory ``(input_shape, n_outputs, **model keys) -> nn.Module`` (:func:`register_model`)
MODELS: dict[str, Callable[..., Any]] = {}
#: dataset name -> factory ``() -> dict of tensors`` (:func:`register_dataset`)
DATASETS: dict[str, Callable[..., Any]] = {}
#: listing order of the built-in families; other families follow, by name
FAMILIES = ("baseline", "local", "global", "isolation")
#: the entry-point group whose modules are imported as plug-ins (``[project.entry-points."cl_bench.plugins"]``)
ENTRY_POINT_GROUP = "cl_bench.plugins"
#: comma-separated modules imported as plug-ins in every process (set by :func:`import_plugins`)
IMPORTS_ENV = "CL_BENCH_IMPORTS"
T = TypeVar("T", bound="type[ContinualModule]")
F = TypeVar("F", bound=Callable[..., Any])
_IMPORTED: list[str] = []
_LOADED = {"builtins": False, "entry_points": False}


class PluginImportError(ImportError):
    """A plug-in module (``--import``, ``imports:``, an entry point) cannot be imported; names the module."""


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a strategy available under ``name``."""

    def wrap(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"strategy name {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _add(table: dict[str, Callable[..., Any]], what: str, name: str) -> Callable[[F], F]:
    def wrap(fn: F) -> F:
        if name in table and table[name] is not fn:
            raise ValueError(f"{what} name {name!r} registered twice")
        table[name] = fn
        return fn

    return wrap


def register_model(name: str) -> Callable[[F], F]:
    """Decorator: ``model.name=<name>`` builds its network with this factory.

    The factory is called as ``factory(input_shape, n_outputs, **keys)`` with the other keys of the
    ``model`` section (``head`` and ``init`` excepted). It returns either a :class:`~cl_bench.models.Backbone`
    (used as it is) or any ``nn.Module`` mapping a batch to features ``[B, D]``, which gets the head
    of ``model.head`` (``single`` or ``multi``, one per task for task-IL) like the built-in models.
    """
    return _add(MODELS, "model", name)


def register_dataset(name: str) -> Callable[[F], F]:
    """Decorator: ``scenario.source=<name>`` reads its tensors from this factory.

    The factory is called without arguments (or with the keys of ``scenario.options``) and returns a
    mapping with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (images ``[N, C, H, W]`` or
    ``[N, H, W]``, ``uint8`` or float; integer labels ``0..C-1``) and optionally ``class_names``;
    every scenario kind (split, permuted, rotated) applies to it as to a built-in dataset.
    """
    return _add(DATASETS, "dataset", name)


def plugin_modules() -> list[str]:
    """The plug-in modules imported in this process, in order (to import again in a worker process)."""
    return list(_IMPORTED)


def import_plugins(modules: list[str], where: str = "--import") -> None:
    """Import the user's modules that register strategies, models or datasets (found from the working
    directory too, after the installed packages); a module that fails is a :class:`PluginImportError`
    naming it and ``where`` it was given. The modules are recorded for worker processes."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # an import runs the module: any error of its code is the plug-in's
            raise PluginImportError(f"{where} {name}: cannot import it ({type(err).__name__}: {err})") from err
        if name not in _IMPORTED:
            _IMPORTED.append(name)
    os.environ[IMPORTS_ENV] = ",".join(_IMPORTED)


#: the built-in strategies' folder: beside the cl_bench package, in a checkout and in an installed wheel
BUILTIN_STRATEGIES = Path(__file__).resolve().parent.parent / "strategies"


def builtin_strategies() -> Any:
    """The package ``strategies`` of cl-bench's own methods; a PluginImportError when another folder of
    that name (a user's ``strategies/`` ahead on ``sys.path``) would stand in for it."""
    package = importlib.import_module("strategies")
    where = Path(getattr(package, "__file__", None) or next(iter(package.__path__), ".")).resolve()
    if BUILTIN_STRATEGIES not in (where, where.parent):
        raise PluginImportError(
            f"the package 'strategies' is {where.parent if where.suffix else where}, not cl-bench's built-in "
            f"strategies ({BUILTIN_STRATEGIES}): rename your folder (e.g. my_strategies/) and import it with "
            "--import my_strategies.NAME")
    return package


def load_plugins() -> None:
    """The built-in strategies, the installed packages' entry points and the modules of
    :data:`IMPORTS_ENV`, each imported once per process."""
    if not _LOADED["builtins"]:
        package = builtin_strategies()
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"strategies.{info.name}")
        _LOADED["builtins"] = True
    if not _LOADED["entry_points"]:
        _LOADED["entry_points"] = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as err:
                raise PluginImportError(f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}): cannot "
                                        f"import it ({type(err).__name__}: {err})") from err
    pending = [m for m in os.environ.get(IMPORTS_ENV, "").split(",") if m and m not in _IMPORTED]
    if pending:
        import_plugins(pending, where=IMPORTS_ENV)


def family_rank(family: str) -> tuple[int, str]:
    """Built-in families in their order, then any other family by name."""
    return (FAMILIES.index(family), "") if family in FAMILIES else (len(FAMILIES), family)


def strategy_names() -> list[str]:
    """All registered names, by family, each family in its definition order."""
    load_plugins()
    return sorted(_REGISTRY, key=lambda n: family_rank(_REGISTRY[n].family))


def class_by_path(path: str) -> Any:
    """The object named ``package.module:Name`` (its module imported); errors are KeyErrors naming ``path``."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise KeyError(f"{path!r}: cannot import {module_name} ({type(err).__name__}: {err})") from err
    if not hasattr(module, attr):
        raise KeyError(f"{path!r}: module {module_name} has no attribute {attr!r}")
    return getattr(module, attr)


def get_strategy(name: str) -> type[ContinualModule]:
    """The class registered as ``name`` (``a+b``: :func:`combine`; ``package.module:Class``: that class);
    unknown names list the valid ones."""
    from cl_bench.module import ContinualModule

    load_plugins()
    if "+" in name:
        return combine(name.split("+"))
    if ":" in name:
        cls = class_by_path(name)
        if not (inspect.isclass(cls) and issubclass(cls, ContinualModule)):
            raise KeyError(f"{name!r} is not a ContinualModule subclass")
        return cls
    if name not in _REGISTRY:
        raise KeyError(f"unknown strategy {name!r}; valid: {', '.join(strategy_names())} "
                       "(or package.module:Class; your own modules: --import MODULE or imports: [MODULE])")
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
