"""Experiment configuration: omegaconf YAML groups, command-line dotlists, validation.

Composition, later wins: ``configs/default.yaml`` <- ``experiment=NAME`` (or
``--config FILE``) <- group selections on the command line (``scenario=``,
``model=``, ``strategy=``) <- every other ``key=value`` override.

A group value is a file name under ``configs/<group>/`` or a mapping; a
mapping may name a file to start from with ``_base: NAME``. Each entry of
``strategy`` is a *label*: ``configs/strategy/<label>.yaml`` (if present),
merged with ``strategies.<label>``; its ``class`` picks the registered
strategy (default: the label), ``optimizer`` / ``trainer`` override the global
ones for that strategy, every other key is a hyper-parameter of the class.

:func:`build_plan` validates everything and returns the list of runs before
any data is loaded or any model trained.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, cast

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


def shipped_configs() -> Path:
    """The YAML configs: ``cl_bench/configs`` of an installed wheel (hatch force-include), else ``configs/``
    of the source checkout beside the package."""
    package = Path(__file__).resolve().parent
    inside = package / "configs"
    return inside if (inside / "default.yaml").is_file() else package.parent / "configs"


#: ``$CL_BENCH_CONFIGS`` when set, else :func:`shipped_configs`
CONFIG_DIR = Path(os.environ.get("CL_BENCH_CONFIGS") or shipped_configs())
GROUPS = ("scenario", "model")
TOP_LEVEL_KEYS = (
    "name", "scenario", "settings", "model", "strategy", "strategies", "seeds",
    "trainer", "optimizer", "data", "output", "checks", "logger", "sweep", "experiment", "imports",
)
SETTINGS = ("class_il", "task_il", "domain_il")
CLIP_ALGORITHMS = ("norm", "value")  # trainer.gradient_clip_algorithm (Lightning's names)
SEED_RANGE = (0, 2**32 - 1)  # what every seeded generator (numpy, Lightning's seed_everything) accepts
#: sections that shape the runs but not the result of any one of them: left out of the default folder's hash
NOT_EXPERIMENT_KEYS = ("name", "output", "sweep", "logger", "seeds", "settings", "strategy", "strategies", "imports")
#: ``scenario.seed`` value that gives every run the scenario drawn from its own training seed
PER_RUN = "per_run"
#: scenario kinds whose published protocols draw the task transforms anew in every run (Mammoth's
#: Permuted- and Rotated-MNIST seed numpy with the run's seed before drawing them)
REDRAWN_PER_RUN = {"permuted": "permutations", "rotated": "rotation angles"}


class ScenarioDrawWarning(UserWarning):
    """Several training seeds share one draw of a scenario that published protocols redraw per run."""


class ConfigError(ValueError):
    """A configuration mistake; the message names the key and what to fix."""


AUTO_STEPS_PER_CALL = 16  # optimiser steps per Lightning step: Lightning's per-step cost spread over 16


@dataclass
class TrainerConfig:
    """Lightning Trainer and batching settings of every task."""

    epochs: int = 1
    max_steps: int = -1  # per task; -1 = run the epochs
    steps_per_call: Any = "auto"  # optimiser steps per Lightning training_step; see chunk_size
    compile: Any = False  # the step as one compiled graph: true | false | auto (runs of >= AUTO_MIN_STEPS steps)
    batch_size: int = 32
    eval_batch_size: int = 1024
    train_loss_probe: int = 1000
    eval_every: Any = 1  # evaluate every task after every n-th task (and the last); "last": after the last only
    mask_train_logits: bool = False
    mask_unseen_classes: bool = False  # training logits of classes of tasks not yet trained set to -inf
    gradient_clip_val: float | None = None  # clip every step's gradients (ContinualModule.clip_gradients_)
    gradient_clip_algorithm: str = "norm"  # norm: one global L2 norm <= val; value: every entry in [-val, val]
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    deterministic: bool = True
    num_threads: int = 0  # torch intra-op threads for this run; 0 = leave torch's default

    def __post_init__(self) -> None:
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {self.num_threads}")
        for key in ("epochs", "batch_size", "eval_batch_size", "num_nodes"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.train_loss_probe < 0:
            raise ValueError(f"train_loss_probe must be >= 0, got {self.train_loss_probe}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (off) or >= 1, got {self.max_steps}")
        spc = self.steps_per_call
        if spc != "auto" and (isinstance(spc, bool) or not isinstance(spc, int) or spc < 1):
            raise ValueError(f"steps_per_call must be 'auto' or an integer >= 1, got {spc!r}")
        if self.compile not in ("auto", True, False):
            raise ValueError(f"compile must be auto, true or false, got {self.compile!r}")
        every = self.eval_every
        if every != "last" and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"eval_every must be an integer >= 1 (every n-th task) or 'last', got {every!r}")
        if self.gradient_clip_val is not None and not self.gradient_clip_val > 0:
            raise ValueError(f"gradient_clip_val must be > 0 (or null: no clipping), got {self.gradient_clip_val}")
        if self.gradient_clip_algorithm not in CLIP_ALGORITHMS:
            raise ValueError(f"gradient_clip_algorithm={self.gradient_clip_algorithm!r}; "
                             f"valid: {', '.join(CLIP_ALGORITHMS)}")
        valid = precision_values()
        if str(self.precision) not in valid:
            raise ValueError(f"precision={self.precision!r} is not one of Lightning's: {', '.join(valid)}")

    def chunk_size(self, logged: bool = False) -> int:
        """Optimiser steps per Lightning ``training_step``: ``steps_per_call``, or with ``auto``
        :data:`AUTO_STEPS_PER_CALL`, and 1 when loggers are attached (Lightning logs once per
        ``training_step``, at its own batch count: per-step curves need one step per call)."""
        if self.steps_per_call != "auto":
            return int(self.steps_per_call)
        return 1 if logged else AUTO_STEPS_PER_CALL


    def evaluates_after(self, task: int, n_tasks: int) -> bool:
        """Whether every task is evaluated after training task ``task`` (0-based) of ``n_tasks``: after the
        last task always, after the others when ``eval_every`` = n divides ``task + 1``."""
        if task == n_tasks - 1:
            return True
        return self.eval_every != "last" and (task + 1) % int(self.eval_every) == 0


def precision_values() -> tuple[str, ...]:
    """The ``trainer.precision`` values Lightning's Trainer accepts."""
    from typing import get_args

    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    return (*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS))


@dataclass
class DataConfig:
    """Where the datasets are read from (``root``: null = ``CL_BENCH_DATA`` or the cache folder)."""

    root: str | None = None
    download: bool = False


@dataclass
class OutputConfig:
    """The experiment's output folder (results.json, runs/, checkpoints/);
    null: ``results/<name>-<hash>`` (:func:`default_output_dir`). ``checkpoint_every_s``: a run writes
    its checkpoint after a task once at least this many seconds of its work are unsaved (0: after every
    task); an interrupted run loses at most that much, and shorter runs write none."""

    dir: str | None = None
    checkpoint_every_s: float = 0.0

    def __post_init__(self) -> None:
        if self.dir is not None and not str(self.dir).strip():
            raise ValueError(EMPTY_OUTPUT_DIR)
        if not self.checkpoint_every_s >= 0:
            raise ValueError(f"checkpoint_every_s must be >= 0 seconds, got {self.checkpoint_every_s}")


EMPTY_OUTPUT_DIR = "dir is empty: name the output folder (e.g. output.dir=results/my_experiment) or leave it unset"


SWEEP_BACKENDS = ("local", "ray")


@dataclass
class RayConfig:
    """The Ray cluster the runs of ``sweep.backend=ray`` go to, and what each run asks of it."""

    address: str | None = None  # null: a one-machine cluster for this command; "auto": the `ray start` one here
    cpus_per_run: float = 1.0
    gpus_per_run: float | None = None  # null: 1 for runs on a GPU accelerator, else 0
    max_retries: int = 3  # a run whose worker dies is started again (from its last checkpoint) this many times

    def __post_init__(self) -> None:
        if not self.cpus_per_run > 0:
            raise ValueError(f"ray.cpus_per_run must be > 0, got {self.cpus_per_run}")
        if self.gpus_per_run is not None and self.gpus_per_run < 0:
            raise ValueError(f"ray.gpus_per_run must be >= 0 (or null), got {self.gpus_per_run}")
        if self.max_retries < 0:
            raise ValueError(f"ray.max_retries must be >= 0, got {self.max_retries}")


@dataclass
class SweepConfig:
    """How the runs of one experiment are executed: in this process, a local pool, or a Ray cluster."""

    workers: int = 1  # processes in the local pool; 1 = in this process
    backend: str = "local"  # local | ray
    ray: RayConfig = field(default_factory=RayConfig)
    scenario_cache: bool = True  # built scenarios cached on disk (cl_bench.data.cache); false: built in every process
    cache_dir: Optional[str] = None  # null: $CL_BENCH_CACHE/scenarios, else ~/.cache/cl_bench/scenarios

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.backend not in SWEEP_BACKENDS:
            raise ValueError(f"backend={self.backend!r}; valid: {', '.join(SWEEP_BACKENDS)}")


#: protocol options whose default leaves training and evaluation unchanged: left out of a run's identity
#: at that value, so a run that does not use them keeps the hash (and stored result) it has without them
OPTIONAL_AT_DEFAULT: dict[str, dict[str, Any]] = {
    "trainer": {"eval_every": 1, "mask_unseen_classes": False, "gradient_clip_val": None,
                "gradient_clip_algorithm": "norm", "steps_per_call": "auto", "compile": False},
    "optimizer": {"carry_over": False},
}


@dataclass
class RunSpec:
    """One training run: a strategy (with its hyper-parameters) x setting x seed."""

    label: str
    strategy_class: str
    setting: str
    seed: int
    params: dict[str, Any]
    trainer: dict[str, Any]
    optimizer: dict[str, Any]
    model: dict[str, Any]
    scenario: dict[str, Any]
    data: dict[str, Any]
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return f"{self.setting}/{self.label}/seed{self.seed}"

    def identity(self) -> dict[str, Any]:
        """Everything that determines the result; the options of :data:`OPTIONAL_AT_DEFAULT` only when set."""
        fields = dataclasses.asdict(self)
        for section, defaults in OPTIONAL_AT_DEFAULT.items():
            for key, value in defaults.items():
                if fields[section].get(key, value) == value:
                    fields[section].pop(key, None)
        return fields

    def config_hash(self) -> str:
        """Hash of :meth:`identity` (identifies a run on resume and its stored result)."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Plan:
    """A validated experiment: its runs, output folder, composed config and worker count."""

    name: str
    output_dir: Path
    runs: list[RunSpec]
    config: DictConfig
    workers: int = 1
    sweep: SweepConfig = field(default_factory=SweepConfig)
    cache_dir: Path | None = None  # where built scenarios are cached; None: not cached
    checkpoint_every_s: float = 0.0  # OutputConfig.checkpoint_every_s


# ----------------------------------------------------------------- loading
def load_yaml(path: str | Path, what: str) -> DictConfig:
    """A YAML mapping from ``path``; any other content is a :class:`ConfigError` naming ``what`` and the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} {path}: file not found")
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a directory; name a YAML file")
    try:
        loaded = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {path}: cannot be read ({err})") from err
    except Exception as err:  # yaml.YAMLError and omegaconf's own errors: both name the line
        raise ConfigError(f"{what} {path}: not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(loaded, DictConfig):
        kind = "list" if isinstance(loaded, ListConfig) else type(loaded).__name__
        raise ConfigError(f"{what} {path}: the file holds a {kind}, not a mapping of keys (name: ..., scenario: ...)")
    return loaded


def _group_file(group: str, name: str) -> Path:
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.exists():
        valid = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        raise ConfigError(f"unknown {group} {name!r}; valid: {', '.join(valid)}")
    return path


def _resolve_group(group: str, value: Any) -> DictConfig:
    """A group value (file name or mapping with optional ``_base``) -> mapping."""
    if isinstance(value, str):
        return load_yaml(_group_file(group, value), group)
    if isinstance(value, DictConfig):
        base = value.get("_base")
        rest = OmegaConf.masked_copy(value, cast(list[str], [k for k in value if k != "_base"]))
        return cast(DictConfig, OmegaConf.merge(load_yaml(_group_file(group, base), group), rest)) if base else rest
    raise ConfigError(f"{group} must be a name from configs/{group}/ or a mapping, got {value!r}")


def _parse_overrides(overrides: list[str]) -> tuple[DictConfig, DictConfig]:
    """Split ``key=value`` items into group selections and field overrides."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if item.split("=", 1)[0] == "output.dir" and not item.split("=", 1)[1].strip():
            raise ConfigError(f"output: {EMPTY_OUTPUT_DIR}")
    selections = [o for o in overrides if o.split("=", 1)[0] in (*GROUPS, "strategy", "experiment")]
    fields = [o for o in overrides if o not in selections]
    try:
        return OmegaConf.from_dotlist(selections), OmegaConf.from_dotlist(fields)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse overrides: {err}") from err


def _file_layers(selections: DictConfig, config_file: str | None) -> list[Any]:
    """default.yaml, then the selected experiment's file, then ``config_file``: the layers under the overrides."""
    layers: list[Any] = [load_yaml(CONFIG_DIR / "default.yaml", "defaults")]
    experiment = selections.get("experiment")
    if experiment:
        layers.append(load_yaml(_group_file("experiment", str(experiment)), "experiment"))
    if config_file:
        layers.append(load_yaml(config_file, "--config"))
    return layers


def pool_requested(overrides: list[str] | None = None, config_file: str | None = None) -> bool:
    """Whether the experiment asks for a process pool (``sweep.workers`` > 1, not Ray), read from its layers
    alone, before any strategy is imported; False where they do not parse (:func:`load_config` says why)."""
    try:
        selections, fields = _parse_overrides(list(overrides or []))
        sweeps = [layer.get("sweep") or {} for layer in _file_layers(selections, config_file)]
        sweep = cast(DictConfig, OmegaConf.merge(*sweeps, fields.get("sweep") or {}))
        return int(sweep.get("workers", 1)) > 1 and sweep.get("backend", "local") != "ray"
    except (ConfigError, OmegaConfBaseException, TypeError, ValueError):
        return False


def load_config(overrides: list[str] | None = None, config_file: str | None = None) -> DictConfig:
    """Compose the experiment configuration (no validation beyond group names)."""
    selections, fields = _parse_overrides(list(overrides or []))
    cfg, *layers = _file_layers(selections, config_file)
    selections.pop("experiment", None)
    for layer in (*layers, selections):
        # a group replaced by a new name or mapping must not be merged into the old one
        for key in (*GROUPS, "strategy"):
            if key in layer:
                cfg[key] = None
        cfg = cast(DictConfig, OmegaConf.merge(cfg, layer))
    import_config_plugins(cfg, fields)
    cfg.scenario = _resolve_group("scenario", cfg.scenario)
    suggested = cfg.scenario.pop("model", None)  # a scenario names the model its protocol uses
    if cfg.model is None:
        if suggested is None:
            raise ConfigError("model is null and the scenario suggests none: set model=NAME (configs/model/)")
        cfg.model = suggested
    cfg.model = _resolve_group("model", cfg.model)
    cfg.strategies = _resolve_strategies(cfg)
    try:
        cfg = cast(DictConfig, OmegaConf.merge(cfg, fields))
    except OmegaConfBaseException as err:
        raise ConfigError(f"override: {err}") from err
    unknown = sorted(set(cfg) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; valid: {', '.join(TOP_LEVEL_KEYS)}")
    return cfg


def import_config_plugins(cfg: DictConfig, fields: DictConfig) -> None:
    """Import the modules of ``imports:`` (a list of module names, the overrides' last) before anything
    looks up a strategy, model or dataset; a module that fails is a :class:`ConfigError` naming it."""
    from cl_bench.registry import PluginImportError, import_plugins

    value = fields.get("imports", cfg.get("imports")) or []
    modules = _container(value)
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ConfigError(f"imports must be a list of module names (imports: [my_pkg.my_module]), got {modules!r}")
    try:
        import_plugins(modules, where="imports:")
    except PluginImportError as err:
        raise ConfigError(str(err)) from err


def _strategy_labels(value: Any) -> list[str]:
    from cl_bench.registry import strategy_names

    if value == "all":
        return strategy_names()
    if isinstance(value, str):
        return [value]
    if isinstance(value, ListConfig) and all(isinstance(v, str) for v in value) and len(value) > 0:
        repeated = sorted({v for v in value if list(value).count(v) > 1})
        if repeated:
            raise ConfigError(f"strategy lists {repeated} more than once: each label is one set of runs; "
                              "remove the repeats (or sweep a hyper-parameter for variants)")
        return list(value)
    raise ConfigError(f"strategy must be a name, a non-empty list of names, or 'all'; got {value!r}")


def _resolve_strategies(cfg: DictConfig) -> DictConfig:
    labels = _strategy_labels(cfg.strategy)
    cfg.strategy = labels
    given = cfg.get("strategies") or OmegaConf.create({})
    out = OmegaConf.create({})
    for label in labels:
        path = CONFIG_DIR / "strategy" / f"{label}.yaml"
        base = load_yaml(path, "strategy") if path.exists() else OmegaConf.create({})
        out[label] = OmegaConf.merge(base, given.get(label) or {})
    return out


def _check_strategy_entries(given: DictConfig, labels: list[str]) -> None:
    """An entry under ``strategies:`` names a label of ``strategy``, a registered strategy (settings kept for
    when it is selected) or a variant with its own ``class``; anything else is a misspelt label whose
    settings would silently not apply."""
    from difflib import get_close_matches

    from cl_bench.registry import strategy_names

    known = set(labels) | set(strategy_names())
    for key, entry in given.items():
        label = str(key)
        if label in known or (isinstance(entry, DictConfig) and "class" in entry):
            continue
        close = get_close_matches(label, labels, n=1)
        hint = f"did you mean strategies.{close[0]}? " if close else ""
        raise ConfigError(f"strategies.{label!s}: no such label; {hint}the labels of `strategy` are "
                          f"{', '.join(labels)} (an entry for a new variant needs `class: <strategy>`)")


# -------------------------------------------------------------- validation
def to_dataclass(cls: type, data: Any, where: str) -> Any:
    """Merge ``data`` into dataclass ``cls`` with type checks; errors name ``where.key``. The same
    (plain, JSON-expressible) data is validated once per process; each call gets its own copy."""
    plain = _container(data)
    try:
        key = json.dumps(plain, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):  # not expressible as JSON: validated as it is, every time
        return _merged(cls, plain, where)
    return copy.deepcopy(_validated(cls, key, where))


@functools.lru_cache(maxsize=1024)
def _validated(cls: type, data: str, where: str) -> Any:
    return _merged(cls, json.loads(data), where)


def _merged(cls: type, data: Any, where: str) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), data or {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", "")
        valid = ", ".join(f.name for f in dataclasses.fields(cls))
        first = str(getattr(err, "msg", err)).splitlines()[0]  # omegaconf appends full_key / object_type lines
        raise ConfigError(f"{where}.{key}: {first} (valid keys: {valid})") from err
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def build_plan(cfg: DictConfig) -> Plan:
    """Validate the whole configuration and expand it into runs (no training)."""
    from cl_bench.data.avalanche_benchmarks import check_benchmark
    from cl_bench.data.scenarios import parse_scenario_cfg
    from cl_bench.data.sources import DatasetError
    from cl_bench.geometry.config import ChecksConfig
    from cl_bench.module import OptimizerConfig
    from cl_bench.registry import get_strategy

    name = str(cfg.name)
    settings = _container(cfg.settings) or [cfg.scenario.get("setting", "class_il")]
    if isinstance(settings, str):
        settings = [settings]
    for s in settings:
        if s not in SETTINGS:
            raise ConfigError(f"settings: unknown setting {s!r}; valid: {', '.join(SETTINGS)}")
    scenario_cfg = _container(cfg.scenario)
    per_run = scenario_cfg.get("seed") == PER_RUN
    for s in settings:
        try:
            parse_scenario_cfg({**scenario_cfg, "setting": s, **({"seed": 0} if per_run else {})})
        except (ValueError, KeyError, DatasetError) as err:
            raise ConfigError(str(err.args[0]) if err.args else str(err)) from err
    seeds = _container(cfg.seeds)
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if not isinstance(seeds, list) or not seeds \
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"seeds must be an int or a non-empty list of ints, got {seeds!r}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"seeds lists {repeated} more than once: each seed is one run (repeats would fake "
                          "the statistics); remove the repeats")
    low, high = SEED_RANGE
    outside = [s for s in seeds if not low <= s <= high]
    if outside:
        raise ConfigError(f"seeds {outside} outside [{low}, {high}] (the range of the seeded generators)")
    _check_finite(_container(cfg), "")
    warn_shared_draw(scenario_cfg, seeds)
    data = to_dataclass(DataConfig, _container(cfg.get("data")), "data")
    for s in settings:  # an Avalanche benchmark is built here: its data, arguments and task labels checked
        try:
            check_benchmark({**scenario_cfg, "setting": s, **({"seed": 0} if per_run else {})}, data.root,
                            data.download)
        except (ValueError, KeyError, DatasetError) as err:
            raise ConfigError(str(err.args[0]) if err.args else str(err)) from err
    output = to_dataclass(OutputConfig, _container(cfg.get("output")), "output")
    to_dataclass(TrainerConfig, cfg.trainer, "trainer")  # global sections are checked even when
    to_dataclass(OptimizerConfig, cfg.optimizer, "optimizer")  # every strategy overrides them

    runs: list[RunSpec] = []
    _check_strategy_entries(cfg.strategies, list(cfg.strategy))
    for label in cfg.strategy:
        entry = cfg.strategies[label]
        class_name = str(entry.get("class", label))
        try:
            cls = get_strategy(class_name)
        except KeyError as err:
            raise ConfigError(f"strategies.{label}.class: {err.args[0]}") from err
        hparams = {k: v for k, v in entry.items() if k not in ("class", "optimizer", "trainer")}
        params = dataclasses.asdict(to_dataclass(cls.Params, hparams, f"strategies.{label}"))
        s_trainer = dataclasses.asdict(
            to_dataclass(TrainerConfig, OmegaConf.merge(cfg.trainer, entry.get("trainer") or {}),
                         f"strategies.{label}.trainer")
        )
        s_optim = dataclasses.asdict(
            to_dataclass(OptimizerConfig, OmegaConf.merge(cfg.optimizer, entry.get("optimizer") or {}),
                         f"strategies.{label}.optimizer")
        )
        for setting in settings:
            for seed in seeds:
                runs.append(
                    RunSpec(
                        label=label, strategy_class=class_name, setting=setting, seed=seed, params=params,
                        trainer=s_trainer, optimizer=s_optim, model=_container(cfg.model),
                        scenario=run_scenario(scenario_cfg, setting, seed),
                        data=_container(cfg.data) or {}, checks=_container(cfg.get("checks")) or {},
                    )
                )
    to_dataclass(ChecksConfig, cfg.get("checks"), "checks")
    sweep = to_dataclass(SweepConfig, cfg.get("sweep"), "sweep")
    out = Path(output.dir) if output.dir is not None else default_output_dir(cfg)
    from cl_bench.data.cache import cache_folder

    cache = cache_folder(sweep.cache_dir) if sweep.scenario_cache else None
    return Plan(name=name, output_dir=out, runs=runs, config=cfg, workers=sweep.workers, sweep=sweep,
                cache_dir=cache, checkpoint_every_s=output.checkpoint_every_s)


def run_scenario(scenario: dict[str, Any], setting: str, seed: int) -> dict[str, Any]:
    """The scenario section of one run: its setting, and with ``seed: per_run`` the run's training seed
    as the scenario seed (its own class order, permutations, angles and subsets)."""
    return {**scenario, "setting": setting, **({"seed": seed} if scenario.get("seed") == PER_RUN else {})}


def warn_shared_draw(scenario: dict[str, Any], seeds: list[int]) -> None:
    """A :class:`ScenarioDrawWarning` when several seeds train on one fixed draw of a scenario kind whose
    published protocols redraw it in every run: their spread then leaves out the spread over draws."""
    what = REDRAWN_PER_RUN.get(str(scenario.get("kind")))
    if what is None or len(seeds) < 2 or scenario.get("seed") == PER_RUN:
        return
    import warnings

    warnings.warn(ScenarioDrawWarning(
        f"scenario.seed={scenario.get('seed', 0)}: all {len(seeds)} seeds train on one draw of the {what}, "
        f"while published {scenario.get('kind')} protocols (e.g. Mammoth's) draw them anew per run; "
        f"set scenario.seed={PER_RUN} for a draw per seed (docs/protocols.md)"), stacklevel=2)


def _check_finite(node: Any, where: str) -> None:
    """Refuse NaN and infinite numbers anywhere in the configuration, naming the key."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_finite(value, f"{where}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{where}={node} is not a finite number; give a finite value")


def default_output_dir(cfg: DictConfig) -> Path:
    """``results/<name>-<hash>``: the hash (8 hex digits) covers every section that changes a run's result
    except the strategies and seeds, so experiments that differ in scenario, model, trainer, optimizer,
    data or checks never share a folder, while more strategies or seeds of one experiment join it."""
    body = {k: v for k, v in _container(cfg).items() if k not in NOT_EXPERIMENT_KEYS}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path("results") / f"{cfg.name}-{digest}"
