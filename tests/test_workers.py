"""Process faults of `cl-bench run`, on real processes: a killed main process takes its pool workers
with it (nothing written after its death), and Ctrl-C ends the run with one line and exit code 130,
with or without workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

SLOW_RUNS = ["output.checkpoint_every_s=0",  # a checkpoint after every task
             "strategy=naive", "seeds=[0,1]", "settings=[class_il]", "scenario.n_tasks=5", "trainer.epochs=40",
             "trainer.train_loss_probe=50", "checks.enabled=false"]


def start_run(out: Path, workers: int) -> subprocess.Popen:
    """`cl-bench run` in its own session (as from a terminal), its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "cl_bench.cli", "run", *SLOW_RUNS, f"sweep.workers={workers}", f"output.dir={out}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=out.parent,
    )


def wait_for_first_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not list((out / "checkpoints").rglob("*.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)


def pool_workers(pid: int) -> list[psutil.Process]:
    """The pool's workers: children of the fork server that ``pid`` started."""
    servers = [c for c in psutil.Process(pid).children() if "forkserver" in " ".join(c.cmdline())]
    return [w for server in servers for w in server.children()]


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while alive(procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(procs)


@pytest.mark.slow  # a real process tree (main, fork server, two workers) killed mid-run
def test_workers_die_with_a_killed_main_process_and_write_nothing_after(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_run(out, workers=2)
    workers: list[psutil.Process] = []
    try:
        wait_for_first_checkpoint(proc, out)
        workers = pool_workers(proc.pid)
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.time()
        proc.wait()
        survivors = wait_gone(workers, timeout=5)
        assert survivors == [], f"workers {[p.pid for p in survivors]} outlived their parent"
        time.sleep(2)  # a surviving worker would finish its next task and checkpoint it in this time
        late = [p for p in out.rglob("*") if p.is_file() and p.stat().st_mtime > killed_at + 0.5]
        assert late == []
    finally:  # leave no process of the test behind, whatever failed
        if proc.poll() is None:
            proc.kill()
        for p in alive(workers):
            p.kill()


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path: Path, workers: int) -> None:
    out = tmp_path / "out"
    proc = start_run(out, workers=workers)
    children: list[psutil.Process] = []
    try:
        wait_for_first_checkpoint(proc, out)
        children = pool_workers(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        stdout, stderr = proc.communicate(timeout=60)
        survivors = wait_gone(children, timeout=5)
    finally:  # leave no process of the test behind, whatever failed
        if proc.poll() is None:
            proc.kill()
        for p in alive(children):
            p.kill()
    assert proc.returncode == 130, stderr
    run = r"(task \d+|no task) of run class_il/naive/seed[01]"
    lines = [ln for ln in stderr.splitlines() if "interrupted" in ln]
    assert len(lines) == 1 and re.fullmatch(
        rf"interrupted after {run}( and {run})*; re-run the same command to resume", lines[0]), stderr
    assert "Traceback" not in stderr + stdout and "KeyboardInterrupt" not in stderr + stdout
    assert survivors == [] and len(children) == (2 if workers == 2 else 0)
