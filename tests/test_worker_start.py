"""Pool workers come from a fork server that imported torch and Lightning once: they still run in the
pool owner's directory and environment and write to its stderr, and `cl-bench run` starts the server
only for a pool."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from cl_bench.config import pool_requested
from cl_bench.runner import _init_worker
from cl_bench.workers import owner_streams, start_worker_server, worker_context

MARK = "CL_BENCH_WORKER_MARK"


def test_a_worker_has_the_owner_directory_environment_and_stderr_not_the_server_ones(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    start_worker_server()  # as `cl-bench run` does, before the directory, environment and stderr below exist
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(MARK, "set after the server started")
    context = worker_context()
    assert context.get_start_method() == "forkserver"
    with open(tmp_path / "stderr", "wb") as err, own_stderr(err.fileno()):
        new_err = os.fstat(2).st_ino
        slots = context.Queue()
        slots.put(0)
        init = (1, os.getpid(), dict(os.environ), owner_streams(context), slots, [], None)
        with ProcessPoolExecutor(1, mp_context=context, initializer=_init_worker, initargs=init) as pool:
            assert pool.submit(os.getcwd).result() == str(tmp_path)
            assert pool.submit(os.getenv, MARK).result() == "set after the server started"
            assert pool.submit(os.getppid).result() != os.getpid()  # forked by the server, not by this process
            assert pool.submit(os.fstat, 2).result().st_ino == new_err  # this process's stderr of now
        with ProcessPoolExecutor(1, mp_context=context) as bare:  # a forked worker without the initializer
            assert bare.submit(os.getenv, MARK).result() is None
            assert bare.submit(os.fstat, 2).result().st_ino != new_err


@contextmanager
def own_stderr(fd: int) -> Iterator[None]:
    """This process's file descriptor 2 points at ``fd`` inside the block."""
    saved = os.dup(2)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@pytest.mark.parametrize(("overrides", "pool"), [
    ([], True),  # configs/default.yaml: sweep.workers 2
    (["sweep.workers=1"], False),
    (["sweep.backend=ray"], False),  # Ray starts its own workers
    (["experiment=hsu_smnist_class"], True),  # an experiment without a sweep section keeps the default
    (["sweep.workers=two"], False),  # not a number: load_config reports it, no server is started for it
    (["strategy"], False),  # not key=value
])
def test_pool_requested_reads_the_layers_alone(overrides: list[str], pool: bool) -> None:
    assert pool_requested(overrides) is pool


def test_pool_requested_reads_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text("sweep: {workers: 1}\n")
    assert pool_requested([], str(config)) is False
    assert pool_requested(["sweep.workers=3"], str(config)) is True
