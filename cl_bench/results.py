"""The result record of one run (schema-versioned JSON), atomic writes, loading."""

from __future__ import annotations

import errno
import functools
import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

SCHEMA_VERSION = 1


@dataclass
class RunResult:
    """Everything one (strategy, setting, seed) run produced.

    ``acc[t][j]`` / ``loss[t][j]``: test accuracy / loss on task j after
    training task t; ``train_loss[t][j]``: loss on a fixed probe of task j's
    training set (for loss-based forgetting); ``*_init``: the untrained model;
    ``confusion[t][j][y][p]``: task j's test samples of class y scored as class p
    after training task t (when ``logger.confusion`` is on); ``val_acc[t][j]``: the
    accuracy on task j's validation split (``scenario.val_fraction`` > 0), what
    hyper-parameters are selected on (``cl-bench best``).
    A joint run has a single row (its final model).
    """

    run_id: str
    label: str
    strategy: str
    family: str
    setting: str
    seed: int
    scenario: str
    config: dict[str, Any]
    config_hash: str
    status: str = "ok"  # ok | failed
    error: str | None = None
    joint: bool = False  # trained once on the union of the tasks: a single (final) row
    acc: list[list[float]] = field(default_factory=list)
    loss: list[list[float]] = field(default_factory=list)
    train_loss: list[list[float]] = field(default_factory=list)
    acc_init: list[float] = field(default_factory=list)
    loss_init: list[float] = field(default_factory=list)
    train_loss_init: list[float] = field(default_factory=list)
    confusion: list[list[list[list[int]]]] = field(default_factory=list)  # [t][j][label][predicted] (logger.confusion)
    val_acc: list[list[float]] = field(default_factory=list)  # [t][j] on task j's validation split (val_fraction > 0)
    task_sizes: dict[str, list[int]] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)  # optimiser steps taken in each task (all its phases)
    metrics: dict[str, float | None] = field(default_factory=dict)
    metrics_per_task: dict[str, list[float]] = field(default_factory=dict)
    metrics_undefined: dict[str, str] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    strategy_memory_bytes: list[int] = field(default_factory=list)
    peak_memory: dict[str, int] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    shared_training: list[str] = field(default_factory=list)  # runs trained by the same training (evaluation differs)
    data_parallel: dict[str, Any] = field(default_factory=dict)  # world_size, per task: steps, samples per rank
    versions: dict[str, str] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None  # the resolved folder the data was read from (its files' digests: config.data)
    scenario_seed: int | None = None  # the seed of the run's scenario draw (class order, permutations, angles)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, their values shared with the result (not copied): serialise it at once."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"result schema_version {version} is not {SCHEMA_VERSION}; re-run or convert it")
        return cls(**data)


class OutputWriteError(RuntimeError):
    """A result, checkpoint or report could not be written; the message names the file and the fix."""


def write_fault(err: OSError) -> str:
    """What went wrong in a failed write, and what to do."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device: free space or choose another output.dir"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write there ({err.strerror}): make it writable or choose another output.dir"
    return f"cannot write there ({err.strerror or err}): choose another output.dir"


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into an :class:`OutputWriteError` naming it."""
    try:
        yield
    except OSError as err:
        raise OutputWriteError(f"{path}: {write_fault(err)}") from err


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` to a temporary file in the same folder, fsync, rename over ``path``, fsync the folder;
    a failed write (e.g. a full disk) is an :class:`OutputWriteError` naming ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_folder(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_atomic` of ``text`` (UTF-8)."""
    write_atomic(path, lambda fh: fh.write(text.encode()))


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 1) -> None:
    """:func:`write_text_atomic` of ``data`` as JSON; ``indent=None`` writes one line (json's C encoder, several
    times faster: for the large result files)."""
    write_text_atomic(path, json.dumps(data, indent=indent, allow_nan=True))


def save_result(result: RunResult, path: str | Path) -> None:
    """Write the result as JSON, atomically."""
    write_json_atomic(path, result.to_dict(), indent=None)


def result_files(folder: Path) -> list[Path]:
    """The run result files of an output folder, ``<folder>/runs/<setting>/<label>/seed<k>.json``, sorted."""
    return sorted((folder / "runs").glob("*/*/seed*.json"))


def load_result(path: str | Path) -> RunResult:
    """The result stored at ``path`` by :func:`save_result`; a damaged file is a ``ValueError`` naming it."""
    try:
        with open(path) as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise TypeError(f"holds a {type(data).__name__}, not a result record")
        return RunResult.from_dict(data)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a readable run result ({err})") from err


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (read once per process: the metadata lookups take ms)."""
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("cl-bench", "torch", "torchvision", "lightning", "numpy", "omegaconf", "curvlinops-for-pytorch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def device_info(device: str) -> dict[str, Any]:
    """What the run ran on."""
    import torch

    info: dict[str, Any] = {
        "device": device,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def aggregate(results: list[RunResult]) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Mean, std (ddof=1), standard error and n of every metric per ``setting/label`` over seeds."""
    import statistics

    groups: dict[str, list[RunResult]] = {}
    for r in results:
        if r.status == "ok":
            groups.setdefault(f"{r.setting}/{r.label}", []).append(r)
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for key, runs in groups.items():
        names = {m for r in runs for m in r.metrics} | {"time_s"}
        out[key] = {}
        for m in sorted(names):
            raw = [r.timings.get("total") if m == "time_s" else r.metrics.get(m) for r in runs]
            vals = [float(v) for v in raw if v is not None]
            if not vals:
                out[key][m] = {"mean": None, "std": None, "sem": None, "n": 0}
                continue
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            out[key][m] = {"mean": statistics.fmean(vals), "std": std, "sem": std / len(vals) ** 0.5, "n": len(vals)}
    return out


def draws(results: list[RunResult]) -> dict[str, dict[str, Any]]:
    """Per ``setting/label`` of :func:`aggregate`: the training ``seeds`` of its finished runs, their
    ``scenario_seeds`` (the scenario draw of each run, in the order of ``seeds``; None for a result that
    predates the record) and ``per_run_draws``: whether the runs trained on more than one draw, so that
    the aggregate's spread covers the variation over draws, not one fixed draw's."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        if r.status == "ok":
            groups.setdefault(f"{r.setting}/{r.label}", []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for key, runs in groups.items():
        runs = sorted(runs, key=lambda r: r.seed)
        scenario_seeds = [r.scenario_seed for r in runs]
        out[key] = {"seeds": [r.seed for r in runs], "scenario_seeds": scenario_seeds,
                    "per_run_draws": len(set(scenario_seeds)) > 1}
    return out


def write_results_file(path: str | Path, name: str, runs: list[RunResult],
                       agg: dict[str, dict[str, dict[str, float | int | None]]] | None = None) -> None:
    """``results.json``: every run, the aggregate over seeds (``agg`` when computed already) and the scenario
    draws, as one line of JSON."""
    write_json_atomic(path, {"name": name, "runs": [r.to_dict() for r in runs],
                             "aggregate": aggregate(runs) if agg is None else agg, "draws": draws(runs)}, indent=None)


def draws_text(entry: dict[str, Any]) -> str:
    """What the spread of one aggregate is over, in words: ``per-run draws: seeds [..]`` (each training seed
    on its own draw) or ``one fixed draw (scenario seed s) for seeds [..]``."""
    seeds, scenario_seeds = entry["seeds"], entry["scenario_seeds"]
    if entry["per_run_draws"]:
        return f"per-run draws: seeds {seeds}, scenario seeds {scenario_seeds}"
    drawn = "unrecorded" if scenario_seeds[0] is None else scenario_seeds[0]
    return f"one fixed draw (scenario seed {drawn}) for seeds {seeds}"


def check_rows(checks: Any) -> list[dict[str, Any]]:
    """Guarantee-check records: a list of dicts, or the ``records`` of a ``GeometryTracker.summary()``."""
    rows = checks.get("records", []) if isinstance(checks, dict) else checks or []
    return [r for r in rows if isinstance(r, dict)]


def check_id(row: dict[str, Any]) -> str:
    """The name of a guarantee-check row: its ``id``, else its ``name``, else ``check``."""
    return str(row.get("id", row.get("name", "check")))
