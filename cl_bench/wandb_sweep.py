"""Grid sweeps over hyper-parameters, locally or handed to W&B Sweeps (``cl-bench sweep --wandb``).

Convention: in a composed config, a list where the schema expects a scalar is a
sweep axis: ``strategies.ewc.lam=[1,10,100]``, ``strategies.er.optimizer.lr=[0.01,0.1]``,
``optimizer.lr=[0.01,0.1]``, ``trainer.epochs=[1,5]``. The schema is the strategy's
``Params`` dataclass, ``OptimizerConfig`` and ``TrainerConfig``; list-typed fields
(``strategies.packnet.prune_ratios``) and ``Any`` ones (``trainer.devices``) hold
lists as values. ``seeds``, ``settings`` and ``strategy`` are lists by nature
(``build_plan`` expands them); lists in ``model`` / ``scenario`` are not axes (one
experiment per model / scenario).

:func:`apply_grid` folds every axis into strategy labels: label ``ewc`` with axes
``lam`` and ``optimizer.lr`` becomes ``ewc@lam=1,optimizer.lr=0.01``, ... (one label
per grid point, its entry holding the scalars; a global axis such as
``optimizer.lr`` overrides the strategy's own value). The grid is then an
ordinary plan, ``build_plan(apply_grid(cfg))``: results, checkpoints, resume, the
aggregate and the report treat every grid point as a strategy.

W&B Sweeps (:func:`write_wandb_sweep`) writes ``experiment.yaml`` (the folded
config, W&B logger on) and ``sweep.yaml`` (``method: grid`` over strategy x
settings x seeds; ``command: cl-bench run --config experiment.yaml
${args_no_hyphens}``), so every agent assignment is exactly one (strategy,
setting, seed) run, logged to the W&B run the agent created (``WANDB_RUN_ID``)::

    cl-bench sweep --wandb --out sweeps/NAME strategies.ewc.lam=[1,10,100] seeds=[0,1,2]
    wandb sweep sweeps/NAME/sweep.yaml          # once; prints ENTITY/PROJECT/SWEEP_ID
    wandb agent ENTITY/PROJECT/SWEEP_ID         # on each machine, from the same working directory

Each agent asks the W&B server for the next assignment and runs e.g.
``cl-bench run --config sweeps/NAME/experiment.yaml strategy=ewc@lam=10 settings=class_il
seeds=0`` (:func:`agent_command`); results land in that machine's ``output.dir``,
and an assignment run again reuses its finished result (or continues from its
last per-task checkpoint).
"""

from __future__ import annotations

import copy
import itertools
import os
import types
import typing
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from cl_bench.config import ConfigError, Plan, TrainerConfig

SCALARS = (int, float, str, bool, type(None))
GLOBAL_SECTIONS = ("optimizer", "trainer")


# --------------------------------------------------------------------- axes
def _expects_scalar(cls: type, key: str) -> bool:
    """Whether dataclass field ``key`` of ``cls`` holds a scalar (unknown keys: False, build_plan names them)."""
    hints = typing.get_type_hints(cls)
    if key not in hints:
        return False
    tp = hints[key]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return all(_expects_scalar_type(a) for a in typing.get_args(tp) if a is not type(None))
    return _expects_scalar_type(tp)


def _expects_scalar_type(tp: Any) -> bool:
    return tp is not Any and tp not in (list, tuple, dict) and typing.get_origin(tp) not in (list, tuple, dict)


def _optimizer_config() -> type:
    from cl_bench.module import OptimizerConfig

    return OptimizerConfig


def _axis(key: str, values: ListConfig) -> list[Any]:
    vals = cast(list[Any], OmegaConf.to_container(values, resolve=True))
    if not vals:
        raise ConfigError(f"{key}: an empty list is no sweep axis; give one or more values")
    bad = [v for v in vals if not isinstance(v, SCALARS)]
    if bad:
        raise ConfigError(f"{key}: sweep values must be scalars, got {bad}")
    if len(set(map(repr, vals))) != len(vals):
        raise ConfigError(f"{key}: repeated sweep values in {vals}")
    return vals


def sweep_axes(cfg: DictConfig) -> dict[str, list[Any]]:
    """Every sweep axis of a composed config: ``{dotted key: values}`` (global sections first, then per label)."""
    from cl_bench.registry import get_strategy

    axes: dict[str, list[Any]] = {}

    def scan(node: Any, cls: type, prefix: str, skip: tuple[str, ...] = ()) -> None:
        for key, value in (node or {}).items():
            if key not in skip and isinstance(value, ListConfig) and _expects_scalar(cls, str(key)):
                axes[f"{prefix}.{key}"] = _axis(f"{prefix}.{key}", value)

    optimizer = _optimizer_config()
    scan(cfg.get("optimizer"), optimizer, "optimizer")
    scan(cfg.get("trainer"), TrainerConfig, "trainer")
    for label in cfg.strategy:
        entry = cfg.strategies[label]
        try:
            params = get_strategy(str(entry.get("class", label))).Params
        except KeyError as err:
            raise ConfigError(f"strategies.{label}.class: {err.args[0]}") from err
        scan(entry, params, f"strategies.{label}", skip=("class", "optimizer", "trainer"))
        scan(entry.get("optimizer"), optimizer, f"strategies.{label}.optimizer")
        scan(entry.get("trainer"), TrainerConfig, f"strategies.{label}.trainer")
    return axes


def expand_grid(cfg: DictConfig) -> list[dict[str, Any]]:
    """The grid: one ``{dotted key: value}`` assignment per point of the cartesian product of the axes
    (``[{}]`` without axes). ``OmegaConf.update(cfg, key, value)`` for each item gives that point's config."""
    axes = sweep_axes(cfg)
    return [dict(zip(axes, point)) for point in itertools.product(*axes.values())]


def _check_label(label: str) -> str:
    if "/" in label or OmegaConf.from_dotlist([f"strategy={label}"]).strategy != label:
        raise ConfigError(f"sweep label {label!r} cannot be a strategy label (no '/' and no value that "
                          "reads as a non-string); change the swept values")
    return label


def apply_grid(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` with every sweep axis folded into strategy labels (``cfg`` itself without axes)."""
    axes = sweep_axes(cfg)
    if not axes:
        return cfg
    out = copy.deepcopy(cfg)
    shared = {k: v for k, v in axes.items() if k.split(".", 1)[0] in GLOBAL_SECTIONS}
    for key, values in shared.items():  # every label overrides it with its own grid value
        OmegaConf.update(out, key, values[0])
    labels: list[str] = []
    entries: dict[str, Any] = {}
    for label in cfg.strategy:
        prefix = f"strategies.{label}."
        own = {k[len(prefix):]: v for k, v in axes.items() if k.startswith(prefix)}
        clash = sorted(set(own) & set(shared))
        if clash:
            raise ConfigError(f"both {clash[0]} and {prefix}{clash[0]} are sweep axes; keep one of them")
        grid = {**shared, **own}  # keys relative to the strategy's entry
        base = cast(dict[str, Any], OmegaConf.to_container(cfg.strategies[label], resolve=False))
        if not grid:
            labels.append(label)
            entries[label] = base
            continue
        for point in itertools.product(*grid.values()):
            name = _check_label(f"{label}@" + ",".join(f"{k}={v}" for k, v in zip(grid, point)))
            entry = OmegaConf.create({**base, "class": base.get("class", label)})
            for key, value in zip(grid, point):
                OmegaConf.update(entry, key, value)
            labels.append(name)
            entries[name] = entry
    out.strategy = labels
    out.strategies = entries
    return out


#: what sweeps select on: the final validation accuracy (cl_bench.metrics.VALIDATION_METRICS)
SELECTION_METRIC = "val/acc"


# ---------------------------------------------------------------- W&B Sweeps
def _settings(cfg: DictConfig) -> list[str]:
    settings: Any = OmegaConf.to_container(cfg.settings) if isinstance(cfg.settings, ListConfig) else cfg.settings
    return list(settings) if isinstance(settings, list) else [settings or cfg.scenario.get("setting", "class_il")]


def _seeds(cfg: DictConfig) -> list[int]:
    return list(cfg.seeds) if isinstance(cfg.seeds, ListConfig) else [int(cfg.seeds)]


def wandb_sweep_spec(folded: DictConfig, experiment_yaml: str) -> dict[str, Any]:
    """W&B sweep spec: a grid over strategy labels x settings x seeds of an :func:`apply_grid` config."""
    from cl_bench.loggers import logger_config

    w = logger_config(folded.get("logger")).wandb
    spec: dict[str, Any] = {
        "name": str(folded.name),
        "project": w.project,
        "method": "grid",
        "metric": {"name": f"metrics/{SELECTION_METRIC}", "goal": "maximize"},  # validation, never test
        "parameters": {
            "strategy": {"values": list(folded.strategy)},
            "settings": {"values": _settings(folded)},
            "seeds": {"values": _seeds(folded)},
        },
        "command": ["${env}", "cl-bench", "run", "--config", experiment_yaml, "${args_no_hyphens}"],
    }
    if w.entity:
        spec["entity"] = w.entity
    return spec


def assignments(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every assignment of a grid spec, in W&B's order (the cartesian product of the parameters)."""
    params = spec["parameters"]
    return [dict(zip(params, point)) for point in itertools.product(*(p["values"] for p in params.values()))]


def agent_command(spec: dict[str, Any], assignment: dict[str, Any]) -> list[str]:
    """The command ``wandb agent`` runs for one assignment: the spec's ``command`` with ``${env}``
    and ``${args_no_hyphens}`` expanded by W&B's own argument formatter."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in assignment.items()}})
    macros["env"] = ["/usr/bin/env"]
    out: list[str] = []
    for item in spec["command"]:
        out += macros[item[2:-1]] if item.startswith("${") and item.endswith("}") else [item]
    return out


def check_validation_split(cfg: DictConfig) -> None:
    """A sweep selects on the validation splits: ``scenario.val_fraction`` must be > 0 (a ConfigError else)."""
    if not float(cfg.scenario.get("val_fraction") or 0) > 0:
        raise ConfigError("a sweep selects hyper-parameters on validation accuracy (metrics/val/acc), never on test: "
                          "set scenario.val_fraction (e.g. scenario.val_fraction=0.1) to hold out a validation split")


def write_wandb_sweep(cfg: DictConfig, out_dir: Path, mode: str = "online") -> Path:
    """Write ``experiment.yaml``, ``sweep.yaml`` and a ``README.md`` with the agent instructions into
    ``out_dir``; return the path of ``sweep.yaml``. ``mode``: the W&B mode of the agents' runs. The sweep's
    metric is the validation accuracy (:data:`SELECTION_METRIC`), so ``scenario.val_fraction`` must be > 0."""
    from cl_bench.loggers import logger_config

    check_validation_split(cfg)
    folded = apply_grid(cfg)
    lg = logger_config(folded.get("logger"))
    lg.use = [*lg.use, "wandb"] if "wandb" not in lg.use else lg.use
    lg.wandb.mode = mode
    folded.logger = OmegaConf.structured(lg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    experiment = out_dir / "experiment.yaml"
    experiment.write_text(OmegaConf.to_yaml(folded))
    spec = wandb_sweep_spec(folded, str(experiment))
    path = out_dir / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    runs = assignments(spec)
    example = " ".join(agent_command(spec, runs[0])[1:])
    (out_dir / "README.md").write_text(
        f"# W&B sweep: {folded.name}\n\n"
        f"{len(runs)} runs: {len(folded.strategy)} strategy labels x {len(_settings(folded))} settings x "
        f"{len(_seeds(folded))} seeds (`method: grid`).\n\n"
        "```bash\n"
        f"wandb sweep {path}          # once; prints ENTITY/PROJECT/SWEEP_ID\n"
        "wandb agent ENTITY/PROJECT/SWEEP_ID    # on each machine, from this working directory\n"
        "```\n\n"
        "Each machine needs this checkout (with this folder), the data under `data.root` / `$CL_BENCH_DATA`, "
        "and W&B credentials (`wandb login`). An agent runs one (strategy, setting, seed) per assignment, e.g.\n\n"
        f"```bash\n{example}\n```\n\n"
        "Results go to that machine's `output.dir`; an assignment run again reuses its finished result.\n\n"
        f"The sweep's metric is `metrics/{SELECTION_METRIC}`, the accuracy on the validation splits "
        "(`scenario.val_fraction`), never a test metric. After the sweep, `cl-bench collect` the agents' folders "
        f"and `cl-bench best DIR --metric {SELECTION_METRIC}` prints the selected configuration and its test metrics.\n"
    )
    return path


def check_agent_plan(plan: Plan) -> None:
    """Under ``wandb agent`` (``WANDB_SWEEP_ID`` set) a ``cl-bench run`` must be one run: its W&B run is
    the one the agent created for the assignment."""
    if os.environ.get("WANDB_SWEEP_ID") and len(plan.runs) != 1:
        raise ConfigError(
            f"under `wandb agent` a cl-bench run must be a single run, got {len(plan.runs)} "
            f"({', '.join(s.run_id for s in plan.runs[:3])}...); sweep over strategy, settings and seeds instead"
        )
