"""``cl-bench collect``: the runs of several output folders (W&B agents, machines, Ray workers) as one
results.json with the same aggregates as a single ``cl-bench run`` of all of them.

A run is identified by ``setting/label/seed``. The same run found in two folders must have the same
configuration hash (then the first copy is kept); two different configurations under one run id are an
error naming both files, never a silent choice.
"""

from __future__ import annotations

from pathlib import Path

from cl_bench.results import RunResult, load_result, result_files, save_result, write_results_file


class CollectError(ValueError):
    """A folder without runs, or one run id with two configurations."""


def gather(folders: list[Path]) -> list[RunResult]:
    """Every run result under ``<folder>/runs`` of every folder, in folder order, one per run id."""
    runs: dict[str, tuple[RunResult, Path]] = {}
    for folder in folders:
        paths = result_files(folder)
        if not paths:
            raise CollectError(f"{folder}: no run results under {folder / 'runs'} (is it a cl-bench output folder?)")
        for path in paths:
            result = load_result(path)
            if result.run_id in runs and runs[result.run_id][0].config_hash != result.config_hash:
                raise CollectError(f"{result.run_id} has two configurations: {runs[result.run_id][1]} and {path}; "
                                   "collect folders of one experiment, or remove one of the two")
            runs.setdefault(result.run_id, (result, path))
    return [r for r, _ in runs.values()]


def collect(folders: list[Path], out: Path) -> Path:
    """Write ``<out>/results.json`` (runs, aggregate, draws), every run under ``<out>/runs`` and the first folder's
    config.yaml; returns the results file."""
    from cl_bench.runner import add_intransigence

    results = gather(folders)
    add_intransigence(results)
    for r in results:
        save_result(r, out / "runs" / r.setting / r.label / f"seed{r.seed}.json")
    names = sorted({load_name(f) for f in folders} - {""})
    path = out / "results.json"
    write_results_file(path, names[0] if len(names) == 1 else "+".join(names), results)
    config = next((f / "config.yaml" for f in folders if (f / "config.yaml").is_file()), None)
    if config is not None and config.resolve() != (out / "config.yaml").resolve():  # the logger section etc.
        (out / "config.yaml").write_text(config.read_text())
    return path


def load_name(folder: Path) -> str:
    """The experiment name recorded in a folder's results.json, else in its config.yaml ("" when neither)."""
    import json

    from omegaconf import DictConfig, OmegaConf

    try:
        return str(json.loads((folder / "results.json").read_text()).get("name", ""))
    except (OSError, ValueError, AttributeError):
        pass
    try:
        config = OmegaConf.load(folder / "config.yaml")
    except (OSError, ValueError):
        return ""
    return str(config.get("name") or "") if isinstance(config, DictConfig) else ""
