"""``sweep.backend=ray``: every training of a plan as one Ray task on a Ray cluster.

A task is one run, or the runs that share one training (:func:`cl_bench.runner.training_groups`);
it asks the cluster for ``sweep.ray.cpus_per_run`` CPUs and ``sweep.ray.gpus_per_run`` GPUs and
runs :func:`cl_bench.runner.run_and_save` on whichever node Ray schedules it: the result files and
the per-task checkpoints go to the output folder, which every node must reach at the same path (one
machine, or a shared filesystem). Ray restarts a task whose worker process dies (``max_retries``);
the new attempt resumes from the run's last per-task checkpoint. Results stream back to the
driver as tasks finish, so the caller aggregates them exactly as it does those of the local backend.
The tasks' :mod:`cl_bench.progress` events, tagged with their node, go through a Ray queue (an actor)
that the driver drains while it waits for the results.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cl_bench import progress, runner
from cl_bench.config import ConfigError, Plan, RayConfig, RunSpec, TrainerConfig
from cl_bench.loggers import LoggerConfig
from cl_bench.registry import IMPORTS_ENV, load_plugins
from cl_bench.results import RunResult

#: environment a run reads that the driver's shell may set but a cluster's worker processes do not inherit
FORWARDED_ENV = ("CL_BENCH_DATA", "CUBLAS_WORKSPACE_CONFIG", "WANDB_MODE", "WANDB_DIR", IMPORTS_ENV)
PROGRESS_PERIOD_S = 1.0
#: the characters of a Ray node id that name a node in the progress view and the lines of finished runs
NODE_CHARS = 12
INSTALL_HINT = "sweep.backend=ray needs Ray: install the extra (pip install 'cl-bench[ray]', or uv sync --extra ray)"


def check_ray_plan(plan: Plan) -> None:
    """What would stop a Ray plan after it started: Ray missing, or a run that names its own GPUs
    (Ray chooses them; ``trainer.devices`` is a count there)."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(INSTALL_HINT)
    for spec in plan.runs:
        devices = spec.trainer.get("devices", 1)
        if isinstance(devices, (list, tuple)):
            raise ConfigError(f"{spec.run_id}: trainer.devices={list(devices)} names GPUs, but on Ray the cluster "
                              "gives each run its GPUs; set trainer.devices=1 (and sweep.ray.gpus_per_run)")


def run_resources(spec: RunSpec, cfg: RayConfig) -> dict[str, float]:
    """The Ray resources of a run: ``cpus_per_run`` CPUs; ``gpus_per_run`` GPUs, by default one per device
    of a run on a GPU accelerator (``trainer.devices``, a count) and none for a CPU run."""
    trainer = TrainerConfig(**spec.trainer)
    gpus = cfg.gpus_per_run
    if gpus is None:
        gpus = float(trainer.devices if isinstance(trainer.devices, int) and trainer.devices > 0 else 1) \
            if trainer.accelerator in runner.GPU_ACCELERATORS else 0.0
    return {"num_cpus": cfg.cpus_per_run, "num_gpus": gpus}


def queue_sink(events: Any, node: str) -> progress.Sink:
    """A sink putting each event, with ``node`` added, on the Ray queue ``events``; once the queue is gone
    (its driver ended) the events are dropped and the training goes on."""
    from ray.exceptions import RayActorError

    def put(event: progress.Event) -> None:
        try:
            events.put({**event, "node": node})
        except RayActorError:
            progress.set_sink(None)

    return put


def train_on_worker(specs: list[RunSpec], output_dir: Path, log_cfg: LoggerConfig, experiment: str,
                    env: dict[str, str], threads: int, events: Any = None,
                    checkpoint_every_s: float = 0.0) -> tuple[list[RunResult], dict[str, Any]]:
    """One Ray task: the runs of ``specs`` on this worker's share of the node (its CPUs as torch threads,
    Ray's GPUs as the runs' devices), resumed from their checkpoints (written after a task once
    ``checkpoint_every_s`` seconds of work are unsaved), their progress events on the Ray queue
    ``events`` (when given); returns the results and where they ran (node id, process id, tasks each run
    found already done)."""
    import ray

    os.environ.update(env)
    load_plugins()  # the driver's --import / imports: modules (importable on every node), registered here too
    torch.set_num_threads(threads)  # a run's trainer.num_threads, when set, takes precedence
    runner._ASSIGNED_GPUS = [int(g) for g in ray.get_gpu_ids()]
    node = ray.get_runtime_context().get_node_id()
    where = {"node": node, "pid": os.getpid(),
             "resumed_after": {s.run_id: runner.tasks_done(output_dir, s) for s in specs}}
    progress.set_sink(queue_sink(events, node[:NODE_CHARS]) if events is not None else None)
    try:
        return runner._worker_run(specs, output_dir, log_cfg, experiment,
                                  checkpoint_every_s=checkpoint_every_s), where
    finally:
        progress.set_sink(None)  # Ray reuses the worker process for other tasks


def relay(events: Any, on_progress: progress.Sink) -> None:
    """Hand every event waiting on the Ray queue ``events`` to ``on_progress``, in the order they were put."""
    waiting = events.qsize()
    if waiting:
        for event in events.get_nowait_batch(waiting):
            on_progress(event)


def execute_ray(plan: Plan, groups: list[list[RunSpec]], log_cfg: LoggerConfig,
                on_task_end: runner.TaskCallback | None = None,
                on_progress: progress.Sink | None = None) -> Iterator[RunResult]:
    """The trainings of ``groups`` as Ray tasks on the cluster of ``sweep.ray.address`` (null: a cluster of
    this machine started for the call and stopped after it), results as they finish. ``on_task_end`` is
    called (without a module) as the runs' checkpoints show finished tasks; ``on_progress`` gets the
    tasks' progress events (each with its ``node``), those of a task before its results; Ctrl-C cancels
    every task."""
    # the nodes run their own installation of cl-bench: the driver's `uv run` environment is not shipped to them
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    cfg = plan.sweep.ray
    started = not ray.is_initialized()
    if started:
        ray.init(address=cfg.address, include_dashboard=False, logging_level=logging.WARNING,
                 configure_logging=True, log_to_driver=False)
    out = plan.output_dir.resolve()
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    if "CL_BENCH_DATA" in env:
        env["CL_BENCH_DATA"] = str(Path(env["CL_BENCH_DATA"]).resolve())
    events = None
    pending: dict[Any, list[RunSpec]] = {}
    try:
        if on_progress is not None:
            from ray.util.queue import Queue

            events = Queue(actor_options={"num_cpus": 0})
            nodes = [n for n in ray.nodes() if n["Alive"]]
            progress.emit(kind="note", text=f"sending {len(groups)} trainings to the Ray cluster ({len(nodes)} "
                                            f"nodes, {ray.cluster_resources().get('CPU', 0):g} CPUs)")
        task = ray.remote(train_on_worker)
        for group in groups:
            res = run_resources(group[-1], cfg)
            threads = max(1, int(res["num_cpus"]))
            ref = task.options(**res, max_retries=cfg.max_retries, retry_exceptions=False,
                               name=f"cl-bench {group[-1].run_id}").remote(group, out, log_cfg, plan.name, env,
                                                                           threads, events, plan.checkpoint_every_s)
            pending[ref] = group
        shown = {spec.run_id: runner.tasks_done(out, spec) for group in groups for spec in group}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_PERIOD_S)
            if events is not None and on_progress is not None:
                relay(events, on_progress)
            for ref in done:
                group = pending.pop(ref)
                results, where = ray.get(ref)
                _report(group, where)
                yield from results
            if on_task_end is not None:
                for spec in (s for g in pending.values() for s in g):
                    for t in range(shown[spec.run_id], runner.tasks_done(out, spec)):
                        on_task_end(spec, t, None)
                    shown[spec.run_id] = max(shown[spec.run_id], runner.tasks_done(out, spec))
    except (runner.RunInterrupted, GeneratorExit) as stop:
        for ref in pending:
            ray.cancel(ref, force=True)
        if isinstance(stop, GeneratorExit):
            raise
        unfinished = [spec for group in pending.values() for spec in group]
        raise runner.RunInterrupted(runner.interrupted_message(plan.output_dir, unfinished)) from None
    finally:
        if events is not None:
            events.shutdown(force=True)
        if started:
            ray.shutdown()


def _report(group: list[RunSpec], where: dict[str, Any]) -> None:
    """``ray: RUN finished on node N (pid P[, resumed after k tasks])`` on stderr, one line per run."""
    for spec in group:
        resumed = where["resumed_after"].get(spec.run_id, 0)
        note = f", resumed after {resumed} task{'s' if resumed != 1 else ''}" if resumed else ""
        print(f"ray: {spec.run_id} finished on node {where['node'][:NODE_CHARS]} (pid {where['pid']}{note})",
              file=sys.stderr)
