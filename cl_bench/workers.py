"""How pool worker processes start and end.

Workers are forked from a fork server that has imported :data:`WORKER_MODULES` once, so a worker
starts in milliseconds instead of importing torch and Lightning again (several seconds each).
``cl-bench run`` starts the server before its own heavy imports, so the two import side by side;
otherwise the server starts with the first pool. Where there is no fork server (Windows) workers are
spawned. A forked worker has the server's environment and standard streams (those of when the
server started), so it takes the pool owner's (:func:`adopt_environment`, :class:`OwnerStreams`),
and it ends with the pool owner (:func:`die_with`).
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
from typing import Any

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


class OwnerStreams:
    """The pool owner's stdout and stderr, sent to a forked worker with its start-up arguments: when they
    are pickled for the worker, the two descriptors travel with them (``multiprocessing.reduction.DupFd``)."""

    def __reduce__(self) -> tuple[Any, tuple[Any, Any]]:
        from multiprocessing import reduction

        return _Streams, (reduction.DupFd(1), reduction.DupFd(2))


class _Streams:
    """In the worker: the owner's two descriptors, put in place of its own stdout and stderr by :meth:`adopt`."""

    def __init__(self, out: Any, err: Any) -> None:
        self.out, self.err = out.detach(), err.detach()

    def adopt(self) -> None:
        for stream, fd, target in ((sys.stdout, self.out, 1), (sys.stderr, self.err, 2)):
            stream.flush()
            os.dup2(fd, target)
            os.close(fd)


def owner_streams(context: BaseContext) -> OwnerStreams | None:
    """What a worker of ``context`` needs to write where this process writes: forked workers need the
    streams; spawned ones inherit them."""
    return OwnerStreams() if context.get_start_method() == "forkserver" else None


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
