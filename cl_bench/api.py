"""The Python API: run an experiment as ``cl-bench run`` does, and read a finished one back."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_bench.results import RunResult


@dataclass
class Results:
    """A finished experiment: its name, every run of its folder, the aggregate over seeds, the folder."""

    name: str
    runs: list[RunResult]
    aggregate: dict[str, Any]
    output_dir: Path

    def run(self, run_id: str) -> RunResult:
        """The run ``<setting>/<label>/seed<k>``."""
        found = [r for r in self.runs if r.run_id == run_id]
        if not found:
            raise KeyError(f"no run {run_id!r}; runs: {', '.join(r.run_id for r in self.runs)}")
        return found[0]


def load_results(results_dir: str | Path) -> Results:
    """The ``results.json`` of a finished ``cl-bench run`` folder."""
    from cl_bench.report import load_results as read

    name, runs, aggregate = read(Path(results_dir))
    return Results(name, runs, aggregate, Path(results_dir))


def run(config: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = (), *,
        imports: Sequence[str] = (), fresh: bool = False) -> Results:
    """Run an experiment exactly as ``cl-bench run [--config FILE] OVERRIDES`` does and return its results.

    ``config``: an experiment YAML file, or a mapping of the same keys (``{"strategy": ["naive", "ewc"],
    "seeds": [0, 1]}``); ``overrides``: ``key=value`` items applied last; ``imports``: modules to import
    first (as ``--import``). The configuration is validated first: a mistake raises
    :class:`~cl_bench.config.ConfigError` before anything trains. Finished runs in the output folder are
    reused unless ``fresh``. A failed run is in the results with ``status == "failed"``.
    """
    from omegaconf import OmegaConf

    from cl_bench.cli import EXIT_INPUT, EXIT_INTERRUPTED, main
    from cl_bench.config import ConfigError, build_plan, load_config
    from cl_bench.registry import import_plugins
    from cl_bench.wandb_sweep import apply_grid

    import_plugins(list(imports))
    with tempfile.TemporaryDirectory(prefix="cl_bench_api_") as tmp:
        config_file = None
        if isinstance(config, Mapping):
            config_file = str(Path(tmp) / "config.yaml")
            OmegaConf.save(OmegaConf.create(dict(config)), config_file)
        elif config is not None:
            config_file = str(config)
        plan = build_plan(apply_grid(load_config(list(overrides), config_file)))
        argv = ["run", *(["--config", config_file] if config_file else []), *(["--fresh"] if fresh else []),
                *overrides]
        code = main(argv)
    if code == EXIT_INPUT:
        raise ConfigError(f"cl-bench run {' '.join(argv[1:])}: unusable input (see the message above)")
    if code == EXIT_INTERRUPTED:
        raise KeyboardInterrupt(f"interrupted; call run() again with the same arguments to resume ({plan.output_dir})")
    return load_results(plan.output_dir)
