"""Progress of the runs of an experiment, from whichever process trains them.

The runner :func:`emit` s events (a run's task starts, an epoch ends, a task
ends); in a pool worker they go through a queue to the main process
(:func:`queue_sink`, drained by :class:`Drain`), from a Ray task through a Ray
queue (:mod:`cl_bench.ray_backend`, which adds the ``node`` a run trains on).
:class:`Board` turns them into a live table of every running run (label, setting,
seed, node on a cluster, task t/T, epoch e/E) with the experiment's overall
progress and ETA, or, when the output is not a terminal, into one plain line per
started run and finished task.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import lightning as L

Event = dict[str, Any]
Sink = Callable[[Event], None]
_SINK: list[Sink] = []


def set_sink(sink: Sink | None) -> None:
    """Where :func:`emit` sends the events of this process (None: nowhere)."""
    _SINK[:] = [sink] if sink is not None else []


def emit(**event: Any) -> None:
    """Send one progress event (``kind``: note | run_start | task_start | epoch | task_end; ``runs``: run ids)."""
    for sink in _SINK:
        sink(event)


def queue_sink(q: Any) -> Sink:
    """A sink putting events on a multiprocessing queue (pool workers)."""
    return q.put


class EpochEvents(L.Callback):
    """Emits an ``epoch`` event at the end of every training epoch of the runs ``runs``."""

    def __init__(self, runs: list[str]) -> None:
        self.runs = runs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        emit(kind="epoch", runs=self.runs, epoch=trainer.current_epoch + 1, epochs=trainer.max_epochs)


class Drain(threading.Thread):
    """Reads events from a queue and hands them to ``handle`` until :meth:`stop`."""

    def __init__(self, q: Any, handle: Callable[[Event], None]) -> None:
        super().__init__(name="progress-drain", daemon=True)
        self.q, self.handle, self.stopped = q, handle, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.handle(self.q.get(timeout=0.2))
            except queue.Empty:
                continue
            except (EOFError, OSError):  # the queue's manager is gone
                return

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=2)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Board:
    """The state of every run of an experiment: ``total`` tasks to train, those done, the runs training now.

    ``plain``: print one line per event that finishes a task or a run to ``out`` (CI logs); otherwise
    :meth:`__rich__` renders the live table."""

    def __init__(self, name: str, total: int, plain: bool, out: TextIO | None = None) -> None:
        self.name, self.total, self.plain, self.out = name, max(total, 1), plain, out or sys.stderr
        self.run_done: dict[str, int] = {}
        self.running: dict[str, dict[str, Any]] = {}
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.phase = "loading the data and checking every run"

    @property
    def done(self) -> int:
        """Tasks trained (or reused) so far, counted per run."""
        return sum(self.run_done.values())

    def eta(self) -> float | None:
        """Seconds left at the rate so far (None before anything finished)."""
        if self.done <= 0:
            return None
        elapsed = time.monotonic() - self.start
        return elapsed / self.done * max(self.total - self.done, 0)

    def status(self) -> str:
        """``<done>/<total> tasks, <elapsed> elapsed, ETA <left>``."""
        return (f"{self.done}/{self.total} tasks, {_clock(time.monotonic() - self.start)} elapsed, "
                f"ETA {_clock(self.eta())}")

    def __call__(self, event: Event) -> None:
        with self.lock:
            kind = event.get("kind")
            if kind == "note":
                self.phase = event["text"]
                if self.plain:
                    print(f"[{self.status()}] {self.phase}", file=self.out, flush=True)
                return
            for run_id in event.get("runs", []):
                row = self.running.setdefault(run_id, {"task": 0, "tasks": event.get("tasks", 0), "epoch": 0,
                                                       "epochs": 0, "since": time.monotonic()})
                if kind == "run_start" and "node" in event:
                    row["node"] = event["node"]
                if kind == "task_start":
                    row.update(task=event["task"] + 1, tasks=event["tasks"], epoch=0, epochs=event.get("epochs", 0))
                elif kind == "epoch":
                    row.update(epoch=event["epoch"], epochs=event["epochs"])
            if kind == "run_start" and self.plain:
                where = f" on node {event['node']}" if "node" in event else ""
                print(f"[{self.status()}] {', '.join(event['runs'])}: started at task {event['task'] + 1}/"
                      f"{event['tasks']}{where}", file=self.out, flush=True)
            if kind == "task_end":
                for run_id in event["runs"]:  # one training may serve several runs
                    self.run_done[run_id] = self.run_done.get(run_id, 0) + 1
                run_id = event["runs"][0]
                row = self.running.get(run_id, {})
                if self.plain:
                    print(f"[{self.status()}] {', '.join(event['runs'])}: task {row.get('task', '?')}/"
                          f"{row.get('tasks', '?')} done", file=self.out, flush=True)

    def result(self, run_id: str, tasks: int, status: str) -> None:
        """A run finished (or was reused): it leaves the table and counts its ``tasks`` as done."""
        with self.lock:
            self.running.pop(run_id, None)
            self.run_done[run_id] = tasks
            if self.plain:
                print(f"[{self.status()}] {run_id}: {status}", file=self.out, flush=True)

    def note(self, text: str) -> None:
        """A line about the experiment as a whole (start-up)."""
        if self.plain:
            print(text, file=self.out, flush=True)

    def __rich__(self) -> Any:
        from rich.table import Table

        with self.lock:
            title = f"{self.name}: {self.status()}" + ("" if self.running else f" ({self.phase})")
            table = Table(title=title, title_justify="left")
            nodes = any("node" in row for row in self.running.values())  # runs on a Ray cluster
            for column in ("run", "setting", "seed", *(["node"] if nodes else []), "task", "epoch", "running for"):
                table.add_column(column)
            for run_id, row in sorted(self.running.items()):
                setting, label, seed = run_id.split("/")
                table.add_row(label, setting, seed.removeprefix("seed"), *([row.get("node", "-")] if nodes else []),
                              f"{row['task']}/{row['tasks']}",
                              f"{row['epoch']}/{row['epochs']}" if row["epochs"] else "-",
                              _clock(time.monotonic() - row["since"]))
            return table
