"""A disk cache of built scenarios: a scenario is built once and loaded by every later process.

A file holds every task's tensors (``uint8`` images, labels) and the scenario's metadata. Its key is
the SHA-256 of the scenario config (augmentation aside: the batcher applies it), the size and digest of
every data file read, the torch / torchvision versions and the source of the scenario builders, so a
change to any of them builds anew instead of loading a stale scenario. Concurrent processes are safe:
a file is written to a temporary name and renamed into place (:func:`cl_bench.results.write_atomic`),
and builders of one key wait on a lock file (``fcntl.flock`` where available), so two pool workers
build it once. A scenario of an Avalanche benchmark (``kind: avalanche``) is not cached: the files it is
built from are its loader's own, so no key could follow them (:func:`cacheable`). Folder:
``sweep.cache_dir``, else ``$CL_BENCH_CACHE/scenarios``, else ``~/.cache/cl_bench/scenarios``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .sources import source_fingerprint
from .task import Scenario, Task

CACHE_ENV = "CL_BENCH_CACHE"
DEFAULT_CACHE = Path("~/.cache/cl_bench")
FORMAT = 1  # the file layout below
#: modules whose code decides a scenario's tensors: their source is part of every key
BUILDERS = ("scenarios.py", "sources.py", "task.py")
TASK_TENSORS = ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")


def cache_folder(configured: str | None = None) -> Path:
    """``configured`` (sweep.cache_dir), else ``$CL_BENCH_CACHE/scenarios``, else ``~/.cache/cl_bench/scenarios``."""
    if configured:
        return Path(configured).expanduser()
    return (Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else DEFAULT_CACHE).expanduser() / "scenarios"


def _builders_digest() -> str:
    here = Path(__file__).resolve().parent
    return hashlib.sha256(b"".join((here / name).read_bytes() for name in BUILDERS)).hexdigest()


def cacheable(cfg: Mapping[str, Any]) -> bool:
    """Whether the scenario of ``cfg`` is kept in the cache: every kind but ``avalanche``."""
    return cfg.get("kind") != "avalanche"


def scenario_digest(cfg: Mapping[str, Any], root: str | None) -> str:
    """The cache key of the scenario ``cfg`` built from the data under ``root``."""
    import torchvision

    body = {"format": FORMAT, "scenario": {k: v for k, v in cfg.items() if k != "augment"},
            "files": source_fingerprint(str(cfg["source"]), root), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "builders": _builders_digest()}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:24]


def to_record(s: Scenario) -> dict[str, Any]:
    """A scenario as plain data and tensors (what ``torch.load(weights_only=True)`` reads back)."""
    tasks = [{"id": t.id, "classes": list(t.classes), **{k: getattr(t, k) for k in TASK_TENSORS}} for t in s.tasks]
    return {"format": FORMAT, "name": s.name, "setting": s.setting, "n_outputs": s.n_outputs,
            "input_shape": list(s.input_shape), "mean": list(s.mean), "std": list(s.std), "tasks": tasks}


def from_record(d: dict[str, Any]) -> Scenario:
    """The inverse of :func:`to_record`."""
    tasks = [Task(id=t["id"], classes=list(t["classes"]), **{k: t[k] for k in TASK_TENSORS}) for t in d["tasks"]]
    return Scenario(name=d["name"], setting=d["setting"], tasks=tasks, n_outputs=d["n_outputs"],
                    input_shape=tuple(d["input_shape"]), mean=tuple(d["mean"]), std=tuple(d["std"]))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (a lock file) while building; none where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent builders may both build; the atomic rename keeps one
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ScenarioCache:
    """Scenarios by :func:`scenario_digest` under ``folder``: loaded if present, else built and stored."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.pt"

    def _read(self, path: Path) -> Scenario | None:
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
            return from_record(record) if record.get("format") == FORMAT else None
        except FileNotFoundError:
            return None
        except Exception as err:  # a damaged file is rebuilt, and said so
            print(f"note: scenario cache {path} is unreadable ({type(err).__name__}); building anew", file=sys.stderr)
            return None

    def get(self, cfg: Mapping[str, Any], root: str | None, build: Callable[[], Scenario]) -> Scenario:
        """The scenario of ``cfg``: from the cache, else ``build()`` it (once across processes) and store it
        (built in every call when not :func:`cacheable`)."""
        from cl_bench.results import OutputWriteError, write_atomic

        if not cacheable(cfg):
            return build()
        digest = scenario_digest(cfg, root)
        path = self.path(digest)
        found = self._read(path)
        if found is not None:
            print(f"scenario {found.name}: loaded from {path}", file=sys.stderr)
            return found
        with _locked(self.folder / f".{digest}.lock"):
            found = self._read(path)  # another process built it while this one waited
            if found is not None:
                print(f"scenario {found.name}: loaded from {path}", file=sys.stderr)
                return found
            start = time.perf_counter()
            scenario = build()
            seconds = time.perf_counter() - start
            try:
                write_atomic(path, lambda fh: torch.save(to_record(scenario), fh))
            except OutputWriteError as err:  # a cache that cannot be written only costs a rebuild
                print(f"note: {err}; the scenario is not cached", file=sys.stderr)
                return scenario
        print(f"scenario {scenario.name}: built in {seconds:.1f} s, cached as {path}", file=sys.stderr)
        return scenario
