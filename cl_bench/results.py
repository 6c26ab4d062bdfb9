"""The result record of one run (schema-versioned JSON), atomic writes, loading."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class RunResult:
    """Everything one (strategy, setting, seed) run produced.

    ``acc[t][j]`` / ``loss[t][j]``: test accuracy / loss on task j after
    training task t; ``train_loss[t][j]``: loss on a fixed probe of task j's
    training set (for loss-based forgetting); ``*_init``: the untrained model.
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
    task_sizes: dict[str, list[int]] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    metrics_per_task: dict[str, list[float]] = field(default_factory=dict)
    metrics_undefined: dict[str, str] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    strategy_memory_bytes: list[int] = field(default_factory=list)
    peak_memory: dict[str, int] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    shared_training: list[str] = field(default_factory=list)  # runs trained by the same training (evaluation differs)
    versions: dict[str, str] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"result schema_version {version} is not {SCHEMA_VERSION}; re-run or convert it")
        return cls(**data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """:func:`write_text_atomic` of ``data`` as JSON."""
    write_text_atomic(path, json.dumps(data, indent=1, allow_nan=True))


def save_result(result: RunResult, path: str | Path) -> None:
    """Write the result as JSON, atomically."""
    write_json_atomic(path, result.to_dict())


def load_result(path: str | Path) -> RunResult:
    """The result stored at ``path`` by :func:`save_result`."""
    with open(path) as fh:
        return RunResult.from_dict(json.load(fh))


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
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


def check_rows(checks: Any) -> list[dict[str, Any]]:
    """Guarantee-check records: a list of dicts, or the ``records`` of a ``GeometryTracker.summary()``."""
    rows = checks.get("records", []) if isinstance(checks, dict) else checks or []
    return [r for r in rows if isinstance(r, dict)]


def check_id(row: dict[str, Any]) -> str:
    """The name of a guarantee-check row: its ``id``, else its ``name``, else ``check``."""
    return str(row.get("id", row.get("name", "check")))
