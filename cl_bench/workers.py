"""How pool worker processes start and end.

Workers are forked from a fork server that has imported :data:`WORKER_MODULES` once, so a worker
starts in milliseconds instead of importing torch and Lightning again (several seconds each).
``cl-bench run`` starts the server before it composes its own imports, so the two import side by
side; otherwise it starts with the first pool. Where there is no fork server (Windows) workers are
spawned. A forked worker has the server's environment, so it takes the pool owner's
(:func:`adopt_environment`), and it ends with the pool owner (:func:`die_with`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.context import BaseContext

#: what every worker imports before it trains; the fork server imports them once
WORKER_MODULES = ["cl_bench.runner", "cl_bench.geometry", "strategies"]
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_PERIOD_S = 0.5


def worker_context() -> BaseContext:
    """The start method of pool workers: the preloaded fork server where the platform has one, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_MODULES)
    return context


def start_worker_server() -> None:
    """Start the fork server now (a no-op when it runs, or without one); it imports while this process works."""
    if worker_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def adopt_environment(env: dict[str, str]) -> None:
    """Take the pool owner's environment ``env``: a forked worker has the server's, from when it started
    (multiprocessing itself sends the working directory and ``sys.path``)."""
    os.environ.clear()
    os.environ.update(env)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with(owner: int) -> None:
    """End this worker when process ``owner`` (the pool's) ends: the kernel's parent-death signal (Linux;
    the parent is the owner or the fork server, which ends with the owner), and a thread that polls both."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = os.getppid()
    if not _alive(owner):  # the owner died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent and _alive(owner):
            time.sleep(WATCHDOG_PERIOD_S)
        os._exit(1)

    threading.Thread(target=watch, name="owner-watchdog", daemon=True).start()
