"""The task loop: fit task t -> after_task -> evaluate every task -> row t.

One Lightning ``Trainer`` per task (a fresh optimiser per task, as in Mammoth
and Avalanche); evaluation is a plain batched loop over device-resident test
tensors, so every row of the accuracy and loss matrices costs one pass.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sized, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import Tensor

from cl_bench import progress
from cl_bench.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cl_bench.compiled import AUTO_MIN_STEPS
from cl_bench.config import ConfigError, Plan, RunSpec, TrainerConfig, to_dataclass
from cl_bench.data import DatasetError, Scenario, Task, TaskBatches, build_scenario, iterate_eval
from cl_bench.data.batching import Augment, Chunks
from cl_bench.data.cache import ScenarioCache
from cl_bench.data.sources import load_source, resolve_root, source_fingerprint, user_source
from cl_bench.data.user_sources import describe
from cl_bench.geometry import ChecksConfig, GeometryTracker
from cl_bench.loggers import LoggerConfig, RunLogger, logger_config
from cl_bench.metrics import compute_metrics, validation_metrics
from cl_bench.models import build_model
from cl_bench.module import ContinualModule, NonFiniteLossError, OptimizerConfig, Phase
from cl_bench.registry import get_strategy, import_plugins, plugin_modules
from cl_bench.results import (
    RunResult,
    device_info,
    library_versions,
    load_result,
    result_files,
    save_result,
    write_fault,
)
from cl_bench.seeds import derive_seed
from cl_bench.state import UnsavedStateError, check_saved_state
from cl_bench.workers import adopt_environment, die_with, owner_streams, worker_context

#: called after each task with (spec, task index, module); tests use it to interrupt a run. The module is
#: None for a run trained in another process (sweep.backend=ray: reported from the run's checkpoints)
TaskCallback = Callable[[RunSpec, int, ContinualModule | None], None]


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer banners (GPU available, ...)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is an invalid configuration.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated.*")
    # a frozen feature extractor (cl_bench.external_models.Frozen) stays in eval mode while the head trains
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")


def resolve_device(cfg: TrainerConfig) -> str:
    """The device the Trainer of ``cfg`` trains on (its root device: ``cuda:<i>`` for ``devices=[i]``,
    or ``cpu``); the module, its batches, the evaluator and the checks all live there."""
    return _probe(cfg)[0]


@dataclass(frozen=True)
class Ranks:
    """This process's global rank among the ``world_size`` processes that train one run together."""

    rank: int = 0
    world_size: int = 1

    @property
    def lead(self) -> bool:
        """Rank 0: the process that evaluates, checks, prints and writes."""
        return self.rank == 0


def trainer_ranks(cfg: TrainerConfig) -> Ranks:
    """The ranks of the Trainers of ``cfg`` as Lightning resolves them: ``strategy=ddp`` with ``devices=N`` on
    ``num_nodes`` machines is N x num_nodes processes, this one's rank read from the environment that
    Lightning's launcher gives each process it starts (``LOCAL_RANK``, ``NODE_RANK``); else 0 of 1."""
    return _probe(cfg)[1]


_PROBES: dict[tuple[str, ...], tuple[str, Ranks]] = {}


def _probe(cfg: TrainerConfig) -> tuple[str, Ranks]:
    """The root device and the ranks of a Trainer of ``cfg``, memoised per process on its device settings and
    the environment (every run asks, and building a Trainer takes about 10 ms)."""
    key = (cfg.accelerator, repr(cfg.devices), repr(cfg.strategy), repr(cfg.num_nodes),
           repr(sorted(os.environ.items())))
    if key not in _PROBES:
        trainer = _probe_trainer(cfg)
        _PROBES[key] = (str(trainer.strategy.root_device), Ranks(trainer.global_rank, trainer.world_size))
    return _PROBES[key]


def process_is_lead() -> bool:
    """Whether this process is rank 0 of its data-parallel group (or trains alone)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "NODE_RANK"))


#: the CUDA devices (ids of :func:`visible_gpus`) this worker process was given; None: not a placed worker
_ASSIGNED_GPUS: list[int] | None = None
GPU_ACCELERATORS = ("gpu", "cuda")


def visible_gpus() -> list[int]:
    """The ids of the CUDA devices this process sees, in the order of its device ordinals: the entries of
    ``CUDA_VISIBLE_DEVICES`` when they are integers (as Ray sets them), else ``0 .. device_count - 1``."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if len(listed) == count and all(d.isdigit() for d in listed):
        return [int(d) for d in listed]
    return list(range(count))


def worker_gpus(slot: int, visible: list[int]) -> list[int]:
    """The GPU of pool worker ``slot``: ``visible[slot mod len(visible)]`` (one each while there are
    enough, then shared in turn); none without GPUs."""
    return [visible[slot % len(visible)]] if visible else []


def placed_devices(devices: Any, assigned: list[int], visible: list[int]) -> list[int]:
    """``trainer.devices`` of a run in a worker given the GPU ids ``assigned`` to it, as device ordinals of
    this process (ordinal i is the GPU of id ``visible[i]``): an explicit list of ids is honoured as given
    (each must be visible), a count N (1, or -1 / "auto": all assigned) takes the first N assigned."""
    if isinstance(devices, (list, tuple)):
        wanted = [int(d) for d in devices]
        missing = [d for d in wanted if d not in visible]
        if missing:
            raise ConfigError(f"trainer.devices={list(devices)}: GPU(s) {missing} are not visible to this worker "
                              f"(it sees {visible}); name visible ones or leave trainer.devices=1")
    else:
        n = len(assigned) if str(devices) in ("-1", "auto") else int(devices)
        if n > len(assigned):
            raise ConfigError(f"trainer.devices={devices}: this worker was given {len(assigned)} GPU(s) "
                              f"({assigned}); ask for at most that many (sweep.ray.gpus_per_run on Ray)")
        wanted = assigned[:n]
    return [visible.index(d) for d in wanted]


def trainer_config(spec: RunSpec) -> TrainerConfig:
    """The trainer settings of ``spec`` as this process trains them: in a worker given its own GPUs (a pool
    worker, a Ray task) a GPU run's ``devices`` become :func:`placed_devices` (the spec, and so the run's
    identity, is unchanged)."""
    cfg = TrainerConfig(**spec.trainer)
    if _ASSIGNED_GPUS is None or cfg.accelerator not in (*GPU_ACCELERATORS, "auto") or not torch.cuda.is_available():
        return cfg
    cfg.devices = placed_devices(cfg.devices, _ASSIGNED_GPUS, visible_gpus())
    if cfg.accelerator == "auto":
        cfg.accelerator = "gpu"
    return cfg


def _probe_trainer(cfg: TrainerConfig) -> L.Trainer:
    """A Trainer of ``cfg``'s devices and strategy (built, never fitted), or a :class:`ConfigError` naming them."""
    if cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={cfg.accelerator} but no CUDA device is visible; "
                          "use trainer.accelerator=cpu (or auto)")
    quiet_lightning()
    try:
        trainer = L.Trainer(accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy,
                            num_nodes=cfg.num_nodes, barebones=True)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as err:
        raise ConfigError(f"trainer.accelerator={cfg.accelerator}, trainer.devices={cfg.devices}: {err}") from err
    return trainer


# ------------------------------------------------------------------ scenarios
def scenario_key(spec: RunSpec) -> str:
    """A key equal for runs that build the same scenario from the same data (settings, not digests)."""
    data = {k: v for k, v in spec.data.items() if k not in ("files", "source")}
    return repr(sorted(spec.scenario.items())) + repr(sorted(data.items()))


def load_scenario(spec: RunSpec, cache_dir: Path | None = None) -> Scenario:
    """The scenario of a run (augmentation is left to the batcher); with ``cache_dir`` loaded from the
    disk cache when a process built it before (:mod:`cl_bench.data.cache`), else built and cached."""
    cfg = {k: v for k, v in spec.scenario.items() if k != "augment"}
    root = spec.data.get("root")

    def build() -> Scenario:
        return build_scenario(cfg, root=root, download=bool(spec.data.get("download", False)))

    return ScenarioCache(cache_dir).get(cfg, root, build) if cache_dir is not None else build()


#: scenarios a process holds, by scenario seed, then :func:`scenario_key`
HeldScenarios = dict[int, dict[str, Scenario]]


def draw_seed(spec: RunSpec) -> int:
    """The seed of the run's scenario draw (with ``scenario.seed: per_run``, its training seed)."""
    return int(spec.scenario.get("seed", 0))


def held_scenarios(specs: list[RunSpec], held: HeldScenarios, cache_dir: Path | None = None) -> list[Scenario]:
    """The scenarios of ``specs``, taken from ``held`` or loaded (:func:`load_scenario`) into it; first the
    draws of other scenario seeds are dropped from ``held``, so a process holds the draws of one scenario seed
    at a time: one per setting for a fixed ``scenario.seed``, one training seed's with ``per_run``."""
    dropped = set(held) - {draw_seed(s) for s in specs}
    for seed in dropped:
        del held[seed]
    if dropped:
        gc.collect()  # a finished training's Trainer and module hold cycles that may still reach a dropped draw
    out = []
    for spec in specs:
        draws = held.setdefault(draw_seed(spec), {})
        key = scenario_key(spec)
        if key not in draws:
            draws[key] = load_scenario(spec, cache_dir)
        out.append(draws[key])
    return out


def augment_of(spec: RunSpec) -> Augment | None:
    """The training augmentation of the scenario, or None."""
    aug = spec.scenario.get("augment")
    return Augment(**aug) if aug else None


# ----------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """Per-task test accuracy, test loss and training-probe loss after one task; with the confusion
    matrices on, ``confusion[j][y][p]`` = test samples of task j with label y scored as class p."""

    acc: list[float]
    loss: list[float]
    train_loss: list[float]
    confusion: list[list[list[int]]] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)  # per task, on its validation split (scenario.val_fraction)


class Evaluator:
    """Accuracy and loss of a module on every task's test set and training probe (``confusion``: also
    each task's test confusion matrix over the scenario's ``n_outputs`` classes)."""

    def __init__(self, scenario: Scenario, device: str, batch_size: int, train_probe: int, seed: int = 0,
                 confusion: bool = False) -> None:
        self.scenario, self.device, self.batch_size = scenario, device, batch_size
        self.n_classes = scenario.n_outputs if confusion else 0
        gen = torch.Generator().manual_seed(seed)
        probes = [torch.randperm(t.n_train, generator=gen)[:train_probe] for t in scenario.tasks]
        # device-resident copies, made once: (task, test x, test y, train-probe x, train-probe y)
        self.data = [
            (t, t.x_test.to(device), t.y_test.to(device), t.x_train[p].to(device), t.y_train[p].to(device))
            for t, p in zip(scenario.tasks, probes)
        ]
        self.val = [(t, t.x_val.to(device), t.y_val.to(device)) for t in scenario.tasks
                    if t.x_val is not None and t.y_val is not None]

    def _pass(self, module: ContinualModule, task: Task, x: Tensor, y: Tensor,
              train: bool) -> tuple[float, float, list[list[int]]]:
        """Accuracy, mean cross-entropy and confusion matrix (test only, when on) of the scores (test) or of
        the network's logits as the setting evaluates them (training probe: masked to the task's classes in
        task-IL). Confusion counts accumulate on the device, read once: sum over the batch of
        onehot(y)^T onehot(argmax) (a matmul in float64, exact for counts < 2^53 and deterministic on CUDA,
        where bincount has no deterministic kernel)."""
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        C = 0 if train else self.n_classes
        counts = torch.zeros(C, C, device=self.device, dtype=torch.float64)
        n = 0
        s = self.scenario
        for xb, yb in iterate_eval(x, y, self.batch_size, device=self.device, mean=s.mean, std=s.std):
            tb = torch.full_like(yb, task.id)
            logits = module.setting_logits(xb, tb) if train else module.eval_logits(xb, tb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
            pred = logits.argmax(1)
            correct += (pred == yb).sum()
            if C:
                counts += F.one_hot(yb, C).double().T @ F.one_hot(pred, C).double()
            n += yb.numel()
        return int(correct) / max(n, 1), float(loss_sum) / max(n, 1), counts.long().tolist()

    @torch.no_grad()
    def __call__(self, module: ContinualModule) -> Evaluation:
        was_training = module.training
        module.eval()
        out = Evaluation([], [], [])
        for task, x_test, y_test, x_probe, y_probe in self.data:
            a, l, confusion = self._pass(module, task, x_test, y_test, train=False)
            out.acc.append(a)
            out.loss.append(l)
            if self.n_classes:
                out.confusion.append(confusion)
            if len(y_probe):  # trainer.train_loss_probe=0 turns the training-loss matrix off
                out.train_loss.append(self._pass(module, task, x_probe, y_probe, train=True)[1])
        for task, x_val, y_val in self.val:  # scored as the test sets are
            out.val_acc.append(self._pass(module, task, x_val, y_val, train=False)[0])
        module.train(was_training)
        return out


# ------------------------------------------------------------------- training
def make_trainer(
    cfg: TrainerConfig, loggers: list | None = None, callbacks: list | None = None, log_every_n_steps: int = 10,
    epochs: int | None = None,
) -> L.Trainer:
    """A Trainer with no per-step overhead beyond the optimisation itself
    (Lightning's ``barebones`` mode unless loggers are attached)."""
    quiet = {"barebones": True} if not loggers else {
        "logger": loggers, "log_every_n_steps": log_every_n_steps, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False,
    }
    return L.Trainer(
        max_epochs=cfg.epochs if epochs is None else epochs,
        max_steps=cfg.max_steps,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        precision=cast(Any, cfg.precision),  # a string the Trainer validates (typed as its literals)
        deterministic=cfg.deterministic,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **quiet,
    )


def build_module(spec: RunSpec, scenario: Scenario) -> ContinualModule:
    """The strategy module of a run around a fresh backbone."""
    cls = get_strategy(spec.strategy_class)
    backbone = build_model(spec.model, scenario.input_shape, scenario.n_outputs, scenario.task_classes())
    params = to_dataclass(cls.Params, spec.params, f"strategies.{spec.label}")
    trainer = TrainerConfig(**spec.trainer)
    module = cls(backbone, scenario, params, OptimizerConfig(**spec.optimizer), trainer.mask_train_logits)
    module.gradient_clip_val = trainer.gradient_clip_val
    module.gradient_clip_algorithm = trainer.gradient_clip_algorithm
    module.mask_unseen_classes = trainer.mask_unseen_classes
    return module


def _peak_memory(device: str) -> dict[str, int]:
    out = {"cpu_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.device(device).type == "cuda":
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


@dataclass
class RunState:
    """Everything one run carries from task to task (the module may serve several runs: :func:`run_group`)."""

    spec: RunSpec
    scenario: Scenario
    module: ContinualModule
    device: str
    trainer_cfg: TrainerConfig
    schedule: list[tuple[Task, Tensor]]
    evaluator: Evaluator
    tracker: GeometryTracker | None
    result: RunResult
    start: float
    run_logger: RunLogger | None = None
    checkpoint: Path | None = None
    saved: dict[str, Any] | None = None  # the checkpoint it resumed from
    ranks: Ranks = Ranks()
    saved_at: float = field(default_factory=time.perf_counter)  # when its work was last saved (or opened)

    @property
    def done(self) -> int:
        """Rows recorded so far (tasks finished)."""
        return len(self.result.acc)


def seeded_module(spec: RunSpec, scenario: Scenario) -> tuple[ContinualModule, str]:
    """Threads and seed of the run, then its module on its device."""
    quiet_lightning()
    trainer_cfg = trainer_config(spec)
    device = resolve_device(trainer_cfg)
    if torch.device(device).type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.reset_peak_memory_stats(device)
    if trainer_cfg.num_threads:
        torch.set_num_threads(trainer_cfg.num_threads)
    L.seed_everything(spec.seed, verbose=False)
    return build_module(spec, scenario).to(device), device


def open_run(spec: RunSpec, scenario: Scenario, module: ContinualModule, device: str,
             run_logger: RunLogger | None, checkpoint: Path | None) -> RunState:
    """The evaluator and the tracker of a run; its partial result from the checkpoint of an interrupted
    run, else the untrained row (the module itself is restored by the caller)."""
    trainer_cfg = trainer_config(spec)
    ranks = trainer_ranks(trainer_cfg)
    log_cfg = run_logger.cfg if run_logger is not None else LoggerConfig()
    evaluator = Evaluator(scenario, device, trainer_cfg.eval_batch_size, trainer_cfg.train_loss_probe,
                          confusion=log_cfg.records_confusion(scenario.n_outputs))
    schedule = module.training_tasks(scenario)
    joint = len(schedule) != scenario.n_tasks
    checks = to_dataclass(ChecksConfig, spec.checks, "checks")
    tracker = GeometryTracker(checks, scenario, device) if checks.enabled and not joint and ranks.lead else None
    start = time.perf_counter()
    saved = load_checkpoint(checkpoint, spec.config_hash()) if checkpoint else None
    if saved is not None:
        result = RunResult(**saved["result"])
        if tracker is not None:
            tracker.load_state_dict(saved["tracker"], module)
        start -= result.timings["elapsed"]
    else:
        module.select_setting(spec.setting)
        init = evaluator(module) if ranks.lead else Evaluation([], [], [])  # other ranks get rank 0's rows
        result = RunResult(
            run_id=spec.run_id, label=spec.label, strategy=spec.strategy_class, family=module.family,
            setting=spec.setting, seed=spec.seed, scenario=scenario.name, config=asdict(spec),
            scenario_seed=int(spec.scenario.get("seed", 0)),
            config_hash=spec.config_hash(), joint=joint, acc_init=init.acc, loss_init=init.loss,
            train_loss_init=init.train_loss,
            task_sizes={"train": [t.n_train for t in scenario.tasks], "test": [t.n_test for t in scenario.tasks]},
            versions=library_versions(), device=device_info(device),
            timings={"fit": [], "after_task": [], "eval": [], "checks": []},
        )
    return RunState(spec, scenario, module, device, trainer_cfg, schedule, evaluator, tracker, result, start,
                    run_logger, checkpoint, saved, ranks)


def start_group(specs: list[RunSpec], scenarios: list[Scenario], run_loggers: list[RunLogger | None],
                checkpoints: list[Path | None]) -> list[RunState]:
    """One module for runs that train identically (:func:`training_key`), opened for each of them.

    Every run opens from the same random state, the last one last, so the state the training
    starts from is the one a run of the last spec alone would train from. The module resumes
    from the checkpoint of the run with the fewest finished tasks (with none: from scratch).
    """
    module, device = seeded_module(specs[-1], scenarios[-1])
    fresh = rng_state()
    runs = []
    for spec, scenario, run_logger, ckpt in zip(specs, scenarios, run_loggers, checkpoints):
        set_rng_state(fresh)
        runs.append(open_run(spec, scenario, module, device, run_logger, ckpt))
    behind = min(runs, key=lambda r: r.done)
    if behind.saved is not None:
        module.load_state_dict(behind.saved["module"])
        module.load_optimizer_state(behind.saved.get("optimizer"))
        set_rng_state(behind.saved["rng"])
    module.select_setting(specs[0].setting if len(specs) == 1 else None)
    module.compile_step = wants_compile(runs[-1].trainer_cfg, runs[-1].schedule)
    progress.emit(kind="run_start", runs=[r.spec.run_id for r in runs], task=behind.done,
                  tasks=len(runs[-1].schedule))
    return runs


def wants_compile(cfg: TrainerConfig, schedule: list[tuple[Task, Tensor]]) -> bool:
    """``trainer.compile``: true, false, or with ``auto`` whether the run takes at least
    :data:`~cl_bench.compiled.AUTO_MIN_STEPS` optimiser steps (compiling takes seconds)."""
    if cfg.compile != "auto":
        return bool(cfg.compile)
    per_epoch = sum(-(-task.n_train // cfg.batch_size) for task, _ in schedule)
    steps = per_epoch * cfg.epochs if cfg.max_steps < 0 else min(per_epoch * cfg.epochs, cfg.max_steps * len(schedule))
    return steps >= AUTO_MIN_STEPS


class SampleCounter(L.Callback):
    """The training samples this process stepped on (the batches Lightning handed ``training_step``)."""

    def __init__(self) -> None:
        self.samples = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        chunk = batch if isinstance(batch, list) else [batch]  # one training_step's minibatches
        self.samples += sum(int(b[1].shape[0]) for b in chunk)


def train_task(runs: list[RunState], task: Task, task_ids: Tensor) -> tuple[int, float, float, list[int]]:
    """``before_task``, one fit per phase of the task (:func:`fit_phases`), ``after_task``, for every run
    of ``runs`` at once (their callbacks and loggers attached); returns the optimiser steps taken, the
    seconds of the fits and of ``after_task``, and, data-parallel, the samples each rank trained on."""
    lead = runs[-1]
    spec, module, cfg, ranks = lead.spec, lead.module, lead.trainer_cfg, lead.ranks
    batches = TaskBatches(
        task.x_train, task.y_train, task_ids, cfg.batch_size, device=lead.device,
        seed=derive_seed(spec.seed, task.id), mean=lead.scenario.mean, std=lead.scenario.std,
        augment=augment_of(spec), rank=ranks.rank, world_size=ranks.world_size,
    )
    loggers = [lg for r in runs if r.run_logger is not None for lg in r.run_logger.lightning_loggers()] or None
    log_every = next((r.run_logger.cfg.log_every_n_steps for r in runs if r.run_logger is not None), 10)

    k = cfg.chunk_size(logged=bool(loggers))
    counter = SampleCounter() if ranks.world_size > 1 else None

    def new_trainer(phase: Phase) -> L.Trainer:
        callbacks = [r.tracker.callback() for r in runs if r.tracker is not None] + ([counter] if counter else [])
        callbacks.append(progress.EpochEvents([r.spec.run_id for r in runs]))
        return make_trainer(cfg, loggers, callbacks, log_every, epochs=phase.epochs)

    t0 = time.perf_counter()
    module.before_task(task)
    steps = fit_phases(module, task, batches, new_trainer, k)
    t1 = time.perf_counter()
    module.after_task(task)
    after_s = time.perf_counter() - t1
    samples: list[Any] = []
    if counter is not None:
        samples = [None] * ranks.world_size
        torch.distributed.all_gather_object(samples, counter.samples)
    return steps, t1 - t0, after_s, samples


def share_lead_state(runs: list[RunState]) -> None:
    """Data-parallel: rank 0's module state (every parameter and registered buffer: anchors, importances,
    buffers, masks, bases), random state and results become every rank's, one broadcast after each task,
    so that every rank starts the next task from the state one process would have."""
    lead = runs[-1]
    if lead.ranks.world_size > 1:
        for run, result in zip(runs, broadcast_from_lead(lead.module, [r.result for r in runs])):
            run.result = result


def broadcast_from_lead(module: torch.nn.Module, results: list[RunResult]) -> list[RunResult]:
    """Rank 0's ``module.state_dict()`` (through the CPU), random state and ``results``, loaded into this
    rank's module and random generators; returns rank 0's results (one ``broadcast_object_list``)."""
    lead = torch.distributed.get_rank() == 0
    payload: list[Any] = [None]
    if lead:
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        payload = [(state, rng_state(), results)]
    torch.distributed.broadcast_object_list(payload, src=0)
    if lead:
        return results
    state, rng, shared = payload[0]
    module.load_state_dict(state)
    set_rng_state(rng)
    return shared


def fit_phases(module: ContinualModule, task: Task, batches: Iterable[Any],
               new_trainer: Callable[[Phase], L.Trainer], steps_per_call: int = 1) -> int:
    """Every phase of ``task``: ``before_phase``, then one fit of a new Trainer over the phase's minibatches
    in chunks of ``steps_per_call`` (one ``training_step`` each); returns the optimiser steps."""
    steps = 0
    for phase in module.phases(task):
        module.before_phase(phase, task)
        trainer = new_trainer(phase)
        phase_batches = module.batches(phase, batches)
        module.steps_in_epoch = len(cast(Sized, phase_batches))
        trainer.fit(module, train_dataloaders=Chunks(phase_batches, steps_per_call))
        steps += module.fit_steps
    return steps


def record_ranks(run: RunState, steps: int, samples: list[int]) -> None:
    """What each rank of a data-parallel training did in the task: its optimiser steps and samples."""
    dp = run.result.data_parallel
    dp["world_size"] = run.ranks.world_size
    dp["batch_size_per_rank"] = run.trainer_cfg.batch_size // run.ranks.world_size
    dp.setdefault("steps", []).append(steps)
    dp.setdefault("samples", []).append(samples)


def record_row(run: RunState, task: Task, steps: int) -> None:
    """Evaluate every task (row t of the matrices), then the checks of past tasks and task t's snapshot."""
    result, module = run.result, run.module
    t0 = time.perf_counter()
    evaluated = run.trainer_cfg.evaluates_after(len(result.acc), len(run.schedule))
    row = run.evaluator(module) if evaluated else skipped_row(run)
    t1 = time.perf_counter()
    result.timings["eval"].append(t1 - t0)
    if run.tracker is not None:  # checks of every past task at theta_t, then task t's own snapshot
        run.tracker.check(module, task.id)  # (probed on task t's own data, not what a schedule mixed into it)
        run.tracker.snapshot(module, next(t for t in run.scenario.tasks if t.id == task.id))
        result.timings["checks"].append(time.perf_counter() - t1)
    result.acc.append(row.acc)
    result.loss.append(row.loss)
    result.train_loss.append(row.train_loss)
    if row.confusion or (run.evaluator.n_classes and not evaluated):
        result.confusion.append(row.confusion)  # an unevaluated row: [] (rows stay aligned with acc)
    if row.val_acc:
        result.val_acc.append(row.val_acc)
    result.strategy_memory_bytes.append(module.state_bytes())
    result.steps.append(steps)
    if run.run_logger is not None:
        if evaluated:
            run.run_logger.log_task_end(task.id, row.acc, row.loss, steps=steps, confusion=row.confusion or None)
        if len(result.acc) == len(run.schedule):
            run.run_logger.log_model(module)


def skipped_row(run: RunState) -> Evaluation:
    """The row of a task after which ``trainer.eval_every`` evaluates nothing: None for every entry
    (JSON null; the metrics that need the row are undefined, never 0)."""
    n = run.scenario.n_tasks
    probes = bool(run.result.train_loss_init)
    return Evaluation([None] * n, [None] * n, [None] * n if probes else [])  # type: ignore[list-item]


def save_progress(run: RunState, every_s: float = 0.0) -> None:
    """Checkpoint after a task once ``every_s`` seconds of work are unsaved (not after the last task: the
    result file replaces it)."""
    if run.checkpoint is None or run.done >= len(run.schedule) or time.perf_counter() - run.saved_at < every_s:
        return
    run.result.timings["elapsed"] = time.perf_counter() - run.start
    save_checkpoint(
        run.checkpoint,
        {"config_hash": run.spec.config_hash(), "module": run.module.state_dict(), "result": run.result.to_dict(),
         "optimizer": run.module.optimizer_state(),
         "rng": rng_state(), "tracker": run.tracker.state_dict() if run.tracker is not None else None,
         "logger": run.run_logger.state() if run.run_logger is not None else None},
    )
    run.saved_at = time.perf_counter()


def finish(run: RunState, group: list[RunState]) -> RunResult:
    """Timings, the checks' summary, peak memory, the runs it shared its training with and the metric variants."""
    result = run.result
    result.timings.pop("elapsed", None)
    if run.module.step_graph is not None:
        result.timings["compile"] = run.module.step_graph.first_step_seconds
    result.timings["total"] = time.perf_counter() - run.start
    if run.tracker is not None:
        result.checks = run.tracker.summary()
    result.peak_memory = _peak_memory(run.device)
    result.shared_training = [r.spec.run_id for r in group if r is not run]
    if result.status == "ok":
        fill_metrics(result)
    return result


def run_group(
    specs: list[RunSpec],
    scenarios: list[Scenario],
    run_loggers: list[RunLogger | None] | None = None,
    on_task_end: TaskCallback | None = None,
    checkpoints: list[Path | None] | None = None,
    checkpoint_every_s: float = 0.0,
) -> list[RunResult]:
    """Train once for runs of one :func:`training_key` and evaluate that training in each of them.

    After every task each run records its row (evaluated in its own setting, with its own
    checks), all from the random state the training left, the last run last: each run gets the
    result it would get alone. A run whose checkpoint is ahead of the others' skips the rows it has.
    Checkpoints are written after a task once ``checkpoint_every_s`` seconds of work are unsaved.
    """
    runs = start_group(specs, scenarios, run_loggers or [None] * len(specs), checkpoints or [None] * len(specs))
    module = runs[-1].module
    shared = module.setting if len(runs) == 1 else None
    try:
        for i, (task, task_ids) in enumerate(runs[-1].schedule):
            if all(r.done > i for r in runs):
                continue
            ids = [r.spec.run_id for r in runs if r.done == i]
            progress.emit(kind="task_start", runs=ids, task=i, tasks=len(runs[-1].schedule),
                          epochs=runs[-1].trainer_cfg.epochs)
            steps, fit_s, after_s, samples = train_task(runs, task, task_ids)
            if any(r.checkpoint is not None for r in runs):  # before the first checkpoint is written
                check_saved_state(module, f"after task {task.id}")
            after = rng_state()
            for run in (r for r in runs if r.done == i and r.ranks.lead):
                set_rng_state(after)
                module.select_setting(run.spec.setting)
                run.result.timings["fit"].append(fit_s)
                run.result.timings["after_task"].append(after_s)
                if samples:
                    record_ranks(run, steps, samples)
                record_row(run, task, steps)
                save_progress(run, checkpoint_every_s)
            module.select_setting(shared)
            share_lead_state(runs)
            progress.emit(kind="task_end", runs=ids, task=i)
            if on_task_end is not None:
                for run in runs:
                    on_task_end(run.spec, task.id, module)
    except (NonFiniteLossError, UnsavedStateError) as err:
        for run in runs:
            run.result.status, run.result.error = "failed", str(err)
    module.select_setting(runs[-1].spec.setting)
    return [finish(r, runs) for r in runs]


def run_one(
    spec: RunSpec,
    scenario: Scenario,
    run_logger: RunLogger | None = None,
    on_task_end: TaskCallback | None = None,
    checkpoint: Path | None = None,
) -> RunResult:
    """Train one strategy through the scenario and evaluate after every task.

    With ``checkpoint``, the state after every task is saved there, and a run
    that finds a checkpoint of the same configuration continues after its
    last finished task (the same result as an uninterrupted run).
    """
    (result,) = run_group([spec], [scenario], [run_logger], on_task_end, [checkpoint])
    return result


def fill_metrics(result: RunResult, joint_acc: list[float] | None = None) -> None:
    """Metric variants from the stored matrices (a joint run has only its final row), and the
    validation metrics (:func:`cl_bench.metrics.validation_metrics`) where the scenario has validation splits."""
    fill_test_metrics(result, joint_acc)
    if result.val_acc:
        result.metrics.update(validation_metrics(result.val_acc))


def fill_test_metrics(result: RunResult, joint_acc: list[float] | None = None) -> None:
    """The metrics of the test matrices."""
    if result.joint:  # final-row metrics only
        report = compute_metrics([result.acc[0]] * len(result.acc[0]), None, result.task_sizes["test"], result.setting)
        keep = ("acc", "acc_sample_weighted")
        result.metrics = {k: report.values[k] for k in keep}
        result.metrics_undefined = {"*": "joint training has no task sequence: only final-model metrics"}
        return
    report = compute_metrics(
        result.acc, result.acc_init, result.task_sizes["test"], result.setting,
        train_loss=result.train_loss if result.train_loss_init else None, joint_acc=joint_acc,
    )
    result.metrics, result.metrics_per_task, result.metrics_undefined = report.values, report.per_task, report.undefined


# ------------------------------------------------------------------ the plan
def result_path(output_dir: Path, spec: RunSpec) -> Path:
    """``<output_dir>/runs/<setting>/<label>/seed<k>.json``."""
    return output_dir / "runs" / spec.setting / spec.label / f"seed{spec.seed}.json"


def superseded_path(output_dir: Path, spec: RunSpec, config_hash: str) -> Path:
    """``<output_dir>/superseded/<setting>/<label>/seed<k>-<hash>.json``: a result another configuration replaced."""
    return output_dir / "superseded" / spec.setting / spec.label / f"seed{spec.seed}-{config_hash}.json"


def result_spec(plan: Plan, result: RunResult) -> RunSpec:
    """The run of the plan that produced ``result``."""
    return next(s for s in plan.runs if s.run_id == result.run_id)


def finished(path: Path, spec: RunSpec) -> RunResult | None:
    """The stored result of ``spec`` if it finished with the same configuration and data
    (the digests of its data files are put into ``spec`` first: :func:`identify_run`)."""
    identify_run(spec)
    if not path.exists():
        return None
    try:
        stored = load_result(path)
    except (ValueError, OSError, TypeError):
        return None
    return stored if stored.config_hash == spec.config_hash() and stored.status == "ok" else None


def folder_results(output_dir: Path) -> list[RunResult]:
    """Every readable run result under ``<output_dir>/runs`` (the runs of every experiment run into the folder)."""
    out = []
    for path in result_files(output_dir):
        try:
            out.append(load_result(path))
        except (ValueError, OSError):
            continue
    return out


def set_aside(output_dir: Path, spec: RunSpec) -> None:
    """Move the stored result of ``spec``'s path out of the way when another configuration (or no
    readable one) made it, so that re-training never overwrites it; say so on stderr."""
    path = result_path(output_dir, spec)
    if not path.exists():
        return
    try:
        old_hash = load_result(path).config_hash
    except (ValueError, OSError):
        old_hash = "unreadable"
    if old_hash == spec.config_hash():
        return
    aside = superseded_path(output_dir, spec, old_hash)
    aside.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, aside)
    print(f"note: {path} held a result of another configuration ({old_hash}, now {spec.config_hash()}); "
          f"moved to {aside}", file=sys.stderr)


def restore_superseded(output_dir: Path, spec: RunSpec) -> RunResult | None:
    """The result of ``spec``'s configuration that :func:`set_aside` once moved away, put back in place."""
    aside = superseded_path(output_dir, spec, spec.config_hash())
    done = finished(aside, spec)
    if done is not None:
        set_aside(output_dir, spec)
        os.replace(aside, result_path(output_dir, spec))
        print(f"note: {result_path(output_dir, spec)}: the result of this configuration restored from {aside}",
              file=sys.stderr)
    return done


def identify_run(spec: RunSpec) -> None:
    """Put the digests of the data files the run reads into its spec (``data.files``), so that its
    configuration hash changes with the data and a result of other data is never reused; a dataset of one's
    own is also described there (``data.source``: name, shapes, dtype, classes; for an Avalanche benchmark its
    name, arguments and experiences: :func:`~cl_bench.data.avalanche_benchmarks.describe_benchmark`)."""
    if spec.scenario.get("kind") == "avalanche":
        from cl_bench.data.avalanche_benchmarks import describe_benchmark

        kept = {k: v for k, v in spec.data.items() if k not in ("files", "source")}
        about = describe_benchmark(spec.scenario, kept.get("root"), bool(kept.get("download", False)))
        spec.data = {**kept, "source": about}
        return
    source, path = str(spec.scenario["source"]), spec.scenario.get("path")
    files = source_fingerprint(source, path or spec.data.get("root"))
    kept = {k: v for k, v in spec.data.items() if k not in ("files", "source")}
    described = {"source": describe(load_source(source, path))} if user_source(source) else {}
    spec.data = {**kept, **({"files": files} if files else {}), **described}


def identify_data(plan: Plan) -> None:
    """:func:`identify_run` of every run of the plan."""
    for spec in plan.runs:
        identify_run(spec)


#: trainer keys read only by the evaluation
EVALUATION_ONLY = ("eval_batch_size", "train_loss_probe", "eval_every")


def training_key(spec: RunSpec, module: ContinualModule) -> str:
    """Equal for runs that train the identical network: everything of the spec but its label and the
    evaluation-only trainer keys, and the setting between class-IL and task-IL where the module's
    training does not depend on it (:meth:`ContinualModule.shares_training`)."""
    fields = asdict(spec)
    del fields["label"]
    for key in EVALUATION_ONLY:
        fields["trainer"].pop(key, None)
    if spec.setting in ("class_il", "task_il") and module.shares_training():
        fields["setting"] = fields["scenario"]["setting"] = "class_il|task_il"
    return json.dumps(fields, sort_keys=True, default=str)


@dataclass
class Prepared:
    """What training needs of a checked plan: the scenarios still held (:func:`held_scenarios`: the draws of
    the last scenario seed checked), the :func:`training_key` of every run (by run id) and the free space a
    run needs in the output folder (the largest :func:`needed_bytes`)."""

    scenarios: HeldScenarios
    training: dict[str, str]
    needed_bytes: int


def prepare(plan: Plan) -> Prepared:
    """Load every scenario and build every module once: all errors before training. The draws are checked
    one scenario seed at a time and dropped after (with the disk cache on, written there for the trainings)."""
    held: HeldScenarios = {}
    training: dict[str, str] = {}
    need = 0
    by_draw: dict[int, list[RunSpec]] = {}
    for spec in plan.runs:
        by_draw.setdefault(draw_seed(spec), []).append(spec)
    for specs in by_draw.values():
        try:
            scenarios = held_scenarios(specs, held, plan.cache_dir)
        except DatasetError:
            raise
        except (ValueError, KeyError) as err:
            raise ConfigError(f"scenario: {err}") from err
        for spec, scenario in zip(specs, scenarios):
            training[spec.run_id], run_need = check_run(spec, scenario)
            need = max(need, run_need)
        del scenarios, scenario  # the next scenario seed's draws replace these in ``held``
    identify_data(plan)
    return Prepared(held, training, need)


def check_run(spec: RunSpec, scenario: Scenario) -> tuple[str, int]:
    """The :func:`training_key` and :func:`needed_bytes` of a run, from its module built once (a
    :class:`ConfigError` naming the run if it cannot be built or keeps state it does not save)."""
    try:
        module = build_module(spec, scenario)
        check_saved_state(module, "after construction")
        return training_key(spec, module), needed_bytes(spec, module, scenario)
    except (ValueError, KeyError, UnsavedStateError) as err:
        raise ConfigError(f"{spec.run_id}: {err}") from err


def training_groups(specs: list[RunSpec], keys: dict[str, str]) -> list[list[RunSpec]]:
    """``specs`` grouped by training key, in the order of each group's first run."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault(keys[spec.run_id], []).append(spec)
    return list(groups.values())


def checkpoint_path(output_dir: Path, spec: RunSpec) -> Path:
    """``<output_dir>/checkpoints/<setting>/<label>/seed<k>.pt``."""
    return output_dir / "checkpoints" / spec.setting / spec.label / f"seed{spec.seed}.pt"


def needed_bytes(spec: RunSpec, module: ContinualModule, scenario: Scenario) -> int:
    """An estimate of the free space the run ``spec`` (its ``module`` built) needs in the output folder: a
    checkpoint written beside the previous one, 2 x (module state x (1 + k x n_tasks) with the geometry
    snapshots), + 1 MiB."""
    state = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    checks = to_dataclass(ChecksConfig, spec.checks, "checks")
    snapshots = 1 + checks.k * len(scenario.tasks) if checks.enabled else 1
    return 2 * state * snapshots + (1 << 20)


def preflight(plan: Plan, prepared: Prepared) -> None:
    """What would otherwise fail after training started: the devices of every run, and an output
    folder that can be created, written and has room (a :class:`ConfigError` naming the fix)."""
    for spec in plan.runs:
        accelerator = str(spec.trainer.get("accelerator", "cpu"))
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(f"{spec.run_id}: trainer.accelerator={accelerator} but no CUDA device is visible; "
                              "use trainer.accelerator=cpu (or auto)")
        devices = spec.trainer.get("devices", 1)
        if accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > torch.cuda.device_count():
            raise ConfigError(f"{spec.run_id}: trainer.devices={devices} but {torch.cuda.device_count()} CUDA "
                              "device(s) are visible")
    resolved: set[str] = set()
    for spec in plan.runs:  # every distinct device setting as the Trainer resolves it (a bad index, ...)
        cfg = TrainerConfig(**spec.trainer)
        where = json.dumps([cfg.accelerator, cfg.devices, cfg.strategy, cfg.num_nodes])
        if where not in resolved:
            resolve_device(cfg)
            resolved.add(where)
        check_data_parallel(plan, spec, cfg)
    if plan.sweep.backend == "ray":
        from cl_bench.ray_backend import check_ray_plan

        check_ray_plan(plan)
    out = plan.output_dir
    try:  # a 4 KiB probe file, written, fsynced and removed
        out.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=out, prefix=".cl_bench_write_probe")
        try:
            os.write(fd, b"0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as err:
        raise ConfigError(f"output.dir={out}: {write_fault(err)}") from err
    free, need = shutil.disk_usage(out).free, prepared.needed_bytes
    if free < need:
        raise ConfigError(f"output.dir={out}: {free / 2**20:.1f} MiB free, a run needs about {need / 2**20:.1f} MiB; "
                          "free space or choose another output.dir")


def check_data_parallel(plan: Plan, spec: RunSpec, cfg: TrainerConfig) -> None:
    """A data-parallel run (``world_size`` > 1) splits every batch evenly over its ranks and runs its ranks
    itself: its batch size must be a multiple of the world size, and the plan runs in this process."""
    world = trainer_ranks(cfg).world_size
    if world == 1:
        return
    if cfg.batch_size % world:
        raise ConfigError(f"{spec.run_id}: trainer.batch_size={cfg.batch_size} does not split over the "
                          f"{world} processes of trainer.strategy={cfg.strategy}; use a multiple of {world}")
    if plan.workers > 1 or plan.sweep.backend != "local":
        raise ConfigError(f"{spec.run_id}: trainer.strategy={cfg.strategy} starts its own {world} processes; "
                          "run it with sweep.workers=1 and sweep.backend=local")


def check_checkpoint(output_dir: Path, spec: RunSpec) -> None:
    """Read the checkpoint of ``spec`` once: an unreadable one is moved aside (with a warning naming it)."""
    load_checkpoint(checkpoint_path(output_dir, spec), spec.config_hash())


def run_and_save(
    specs: list[RunSpec],
    scenarios: list[Scenario],
    output_dir: Path,
    log_cfg: LoggerConfig | None = None,
    experiment: str = "",
    on_task_end: TaskCallback | None = None,
    checkpoint_every_s: float = 0.0,
) -> list[RunResult]:
    """The runs of one training (:func:`run_group`) with per-task checkpoints (``checkpoint_every_s``:
    :class:`~cl_bench.config.OutputConfig`) and their loggers (a
    RunLogger without loggers still carries the logger config: logger.confusion); each result file
    replaces its checkpoint when done. Data-parallel, only rank 0 logs and writes."""
    ckpts: list[Path | None] = [checkpoint_path(output_dir, spec) for spec in specs]
    lead = trainer_ranks(trainer_config(specs[-1])).lead
    with ExitStack() as stack:
        run_loggers: list[RunLogger | None] = [None] * len(specs)
        if log_cfg is not None and lead:
            for i, (spec, ckpt) in enumerate(zip(specs, ckpts)):
                saved = load_checkpoint(cast(Path, ckpt), spec.config_hash())
                run_loggers[i] = stack.enter_context(
                    RunLogger(log_cfg, spec, experiment, output_dir, state=saved and saved.get("logger")))
        results = run_group(specs, scenarios, run_loggers, on_task_end, ckpts, checkpoint_every_s)
        for run_logger, result in zip(run_loggers, results):
            if run_logger is not None:
                run_logger.log_result(result)
    if not lead:
        return results
    for spec, result, ckpt in zip(specs, results, ckpts):
        if spec.data.get("files") or spec.scenario.get("kind") == "avalanche":  # read from the data root
            result.data_root = str(resolve_root(spec.data.get("root")))
        save_result(result, result_path(output_dir, spec))
        cast(Path, ckpt).unlink(missing_ok=True)
    return results


_WORKER_SCENARIOS: HeldScenarios = {}


def _init_worker(threads: int, owner: int, env: dict[str, str], streams: Any, slots: Any, plugins: list[str],
                 events: Any = None) -> None:
    """A pool worker: dies with ``owner`` (the pool's process) and takes its environment ``env`` and its
    standard ``streams`` (:func:`cl_bench.workers.owner_streams`; None: inherited), leaves
    Ctrl-C to it (the owner ends the pool), uses ``threads``, takes the next slot of ``slots`` (a queue of
    0 .. workers - 1): its own GPU (:func:`worker_gpus`), imports the owner's plug-in modules (their
    strategies, models and datasets registered here too) and sends its progress events to the queue
    ``events`` (when given)."""
    global _ASSIGNED_GPUS
    die_with(owner)
    adopt_environment(env)
    if streams is not None:
        streams.adopt()
    import_plugins(plugins)
    progress.set_sink(progress.queue_sink(events) if events is not None else None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)  # a run's trainer.num_threads, when set, takes precedence
    _ASSIGNED_GPUS = worker_gpus(slots.get(), visible_gpus())


def _worker_run(specs: list[RunSpec], output_dir: Path, log_cfg: LoggerConfig, experiment: str,
                cache_dir: Path | None = None, checkpoint_every_s: float = 0.0) -> list[RunResult]:
    scenarios = held_scenarios(specs, _WORKER_SCENARIOS, cache_dir)
    return run_and_save(specs, scenarios, output_dir, log_cfg, experiment, checkpoint_every_s=checkpoint_every_s)


class RunInterrupted(BaseException):
    """Ctrl-C during :func:`execute`; the message says where the runs stopped and how to resume.

    Not a ``KeyboardInterrupt``: Lightning turns that into ``sys.exit(1)`` inside ``fit``."""


def _interrupt(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not interrupt the cleanup
    raise RunInterrupted


def tasks_done(output_dir: Path, spec: RunSpec) -> int:
    """The tasks of ``spec`` saved in its checkpoint (0 without one)."""
    path = checkpoint_path(output_dir, spec)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
    except Exception:  # a checkpoint cut by the interrupt counts as none
        saved = None
    return len(saved["result"]["acc"]) if isinstance(saved, dict) and "result" in saved else 0


def interrupted_message(output_dir: Path, specs: list[RunSpec]) -> str:
    """``interrupted after task t of run R; re-run the same command to resume`` (every unfinished run)."""
    parts = []
    for spec in specs:
        done = tasks_done(output_dir, spec)
        parts.append(f"task {done - 1} of run {spec.run_id}" if done else f"no task of run {spec.run_id}")
    return f"interrupted after {' and '.join(parts) or 'no task'}; re-run the same command to resume"


def execute(
    plan: Plan, resume: bool = True, on_task_end: TaskCallback | None = None, workers: int = 1,
    on_progress: Callable[[progress.Event], None] | None = None,
) -> Iterator[RunResult]:
    """Run every spec of the plan; yield results as they finish.

    With ``resume`` (the default) finished runs with the same configuration are
    loaded instead of re-trained and interrupted runs continue from their last
    checkpoint; otherwise both are discarded. A stored result of another
    configuration is moved aside (:func:`set_aside`), never overwritten. Runs of
    one :func:`training_key` are trained once (without loggers: a logger follows
    one run's training). ``workers > 1`` runs trainings in a process pool
    (``on_task_end`` is then not called) whose workers die with this process;
    ``sweep.backend=ray`` runs each training as a Ray task (:mod:`cl_bench.ray_backend`).
    Ctrl-C (in the main thread) ends every run and raises :class:`RunInterrupted`.
    ``on_progress`` gets the :mod:`cl_bench.progress` events of every run, from this process or the pool's.
    """
    progress.set_sink(on_progress)
    main = threading.current_thread() is threading.main_thread()
    previous: Any = None
    try:
        progress.emit(kind="note", text=f"loading the data and checking {len(plan.runs)} runs")
        prepared = prepare(plan)
        preflight(plan, prepared)
        log_cfg = logger_config(plan.config.get("logger"))
        lead = process_is_lead()
        todo = []
        for spec in plan.runs:
            done = finished(result_path(plan.output_dir, spec), spec) if resume else None
            if done is None and resume and lead:
                done = restore_superseded(plan.output_dir, spec)
            if done is not None:
                yield done
                continue
            if lead:
                set_aside(plan.output_dir, spec)
                if resume:
                    check_checkpoint(plan.output_dir, spec)
                else:
                    checkpoint_path(plan.output_dir, spec).unlink(missing_ok=True)
            todo.append(spec)
        keys = {s.run_id: s.run_id for s in todo} if log_cfg.use else prepared.training
        groups = training_groups(todo, keys)
        if main:
            previous = signal.signal(signal.SIGINT, _interrupt)
        if plan.sweep.backend == "ray" or (workers > 1 and len(groups) > 1):
            prepared.scenarios.clear()  # other processes train; they load their draws (the disk cache holds them)
        if plan.sweep.backend == "ray":
            from cl_bench.ray_backend import execute_ray

            yield from execute_ray(plan, groups, log_cfg, on_task_end, on_progress)
            return
        if workers <= 1 or len(groups) <= 1:
            for group in groups:
                try:
                    yield from run_and_save(group, held_scenarios(group, prepared.scenarios, plan.cache_dir),
                                            plan.output_dir, log_cfg, plan.name, on_task_end, plan.checkpoint_every_s)
                except RunInterrupted:
                    raise RunInterrupted(interrupted_message(plan.output_dir, group)) from None
            return
        yield from _execute_pool(plan, groups, log_cfg, workers, on_progress)
    finally:
        progress.set_sink(None)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _execute_pool(plan: Plan, groups: list[list[RunSpec]], log_cfg: LoggerConfig, workers: int,
                  on_progress: Callable[[progress.Event], None] | None = None) -> Iterator[RunResult]:
    """The trainings of ``groups`` in a pool of ``workers`` processes, results as they finish (the workers'
    progress events through a queue to ``on_progress``)."""
    threads = max(1, torch.get_num_threads() // workers)
    context = worker_context()
    slots = context.Queue()
    for slot in range(workers):
        slots.put(slot)
    events = context.Queue() if on_progress is not None else None
    drain = progress.Drain(events, on_progress) if events is not None and on_progress is not None else None
    if drain is not None:
        drain.start()
    progress.emit(kind="note", text=f"starting {workers} worker processes for {len(groups)} trainings")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(threads, os.getpid(), dict(os.environ), owner_streams(context), slots,
                                         plugin_modules(), events))
    futures: dict[Future, list[RunSpec]] = {}
    try:
        futures = {pool.submit(_worker_run, group, plan.output_dir, log_cfg, plan.name, plan.cache_dir,
                               plan.checkpoint_every_s): group
                   for group in groups}
        for future in as_completed(futures):
            yield from future.result()
    except (RunInterrupted, GeneratorExit) as stop:
        for process in list((pool._processes or {}).values()):  # the pool's own workers (no public accessor)
            process.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(stop, GeneratorExit):
            raise
        unfinished = [spec for f, group in futures.items() if not f.done() or f.cancelled() or f.exception()
                      for spec in group]
        raise RunInterrupted(interrupted_message(plan.output_dir, unfinished)) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if drain is not None:
            drain.stop()


def add_intransigence(results: list[RunResult]) -> None:
    """Intransigence needs the joint model of the same setting and seed (Chaudhry et al. 2018)."""
    joint = {(r.setting, r.seed): r.acc[0] for r in results if r.status == "ok" and r.joint}
    for r in results:
        if r.status == "ok" and not r.joint and (r.setting, r.seed) in joint:
            fill_metrics(r, joint_acc=joint[(r.setting, r.seed)])
