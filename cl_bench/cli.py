"""``cl-bench`` command line. Heavy imports (torch, lightning) happen inside commands,
so ``cl-bench --help`` answers at once."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

#: exit codes: 1 a run failed or a regression, 2 unusable input (config, data, baseline, output folder), 130 Ctrl-C
EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 1, 2, 130
RESUME_HINT = "re-run the same command to resume"
#: where `cl-bench reproduce` writes: every row; with --only, the selected rows (the full report is kept)
REPRODUCTION_REPORT, PARTIAL_REPRODUCTION_REPORT = "reports/reproduction.md", "reports/reproduction_only.md"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cl-bench",
        description="Continual-learning benchmark suite: strategies x task sequences x seeds, "
        "forgetting metrics and loss-landscape guarantee checks.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="train and evaluate (default: Split-Digits, every strategy, class-IL and task-IL)",
        description="Run an experiment. Overrides are omegaconf dotlists, e.g. "
        "`cl-bench run scenario=split_mnist strategy=[naive,ewc] trainer.epochs=2 seeds=[0,1,2]`. "
        "Finished runs in the output directory are reused unless --fresh.",
    )
    run.add_argument("overrides", nargs="*",
                     help="key=value overrides (scenario=, model=, strategy=, experiment=, ...)")
    run.add_argument("--config", help="an experiment YAML file merged over configs/default.yaml")
    run.add_argument(
        "--resume", action="store_true",
        help="continue in an existing output directory (the default): finished runs are reused, "
        "interrupted ones continue from their last task",
    )
    run.add_argument("--fresh", action="store_true", help="discard finished results and checkpoints and re-train")
    run.add_argument("--dry-run", action="store_true", help="validate the config and list the runs, train nothing")
    lst = sub.add_parser("list", help="list scenarios, strategies, models and metrics")
    for cmd in (run, lst):
        cmd.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                         help="a module of yours that registers strategies, models or datasets (repeatable; e.g. "
                         "my_pkg.my_strategy)")
    sweep = sub.add_parser(
        "sweep",
        help="the grid of a config whose hyper-parameters are lists; --wandb writes a W&B Sweeps spec",
        description="A list where a scalar is expected is a sweep axis (`strategies.ewc.lam=[1,10,100]`, "
        "`optimizer.lr=[0.01,0.1]`); each grid point becomes a strategy label (`ewc@lam=10`). Without --wandb, "
        "list the grid (`cl-bench run` with the same overrides runs it here). With --wandb, write sweep.yaml + "
        "experiment.yaml for `wandb sweep` / `wandb agent` (one strategy x setting x seed per assignment).",
    )
    sweep.add_argument("overrides", nargs="*", help="key=value overrides, as for `cl-bench run`")
    sweep.add_argument("--config", help="an experiment YAML file merged over configs/default.yaml")
    sweep.add_argument("--wandb", action="store_true", help="write the W&B Sweeps spec")
    sweep.add_argument("--out", help="folder of the spec (default: sweeps/<name>)")
    sweep.add_argument("--mode", choices=("online", "offline"), default="online", help="W&B mode of the agents' runs")
    col = sub.add_parser("collect", help="merge the runs of several output folders into one results.json")
    col.add_argument("folders", nargs="+", help="output folders of `cl-bench run` (W&B agents, machines)")
    col.add_argument("--out", required=True, help="folder for the merged runs/ and results.json")
    col.add_argument("--wandb", action="store_true", help="also write the experiment's summary W&B run")
    best = sub.add_parser(
        "best", help="select the best configuration of a results folder on a validation metric; print its test metrics",
        description="Scores every strategy label (a sweep's grid points are labels) by the mean over seeds of a "
        "validation metric (held-out scenario.val_fraction of each task's training data), selects the best per "
        "setting, and prints it with its test metrics. Test metrics are never used for selection.")
    best.add_argument("results_dir", help="the output.dir of a finished `cl-bench run` (or `cl-bench collect`)")
    best.add_argument("--metric", default="val/acc", help="validation metric to select on (default: %(default)s; "
                      "also val/forgetting, lower is better)")
    report = sub.add_parser("report", help="write a Markdown report with plots from a `cl-bench run` output folder")
    report.add_argument("results_dir", help="the output.dir of a finished `cl-bench run` (holds results.json)")
    report.add_argument("--out", help="report folder (default: reports/<name>)")
    report.add_argument("--wandb", action="store_true",
                        help="also (re)write the experiment's summary W&B run (logger.wandb of its config.yaml)")
    base = sub.add_parser(
        "baseline",
        help="run the regression-gate experiments from scratch and write reports/baselines/<name>.json",
        description="Each baseline = mean, seed std and per-seed values of the headline metrics and guarantee-check "
        "pass rates per setting/strategy, with library versions and config hashes. Default: every "
        "configs/experiment/baseline_*.yaml.",
    )
    base.add_argument("overrides", nargs="*", help="key=value overrides applied to every baseline experiment "
                      "(an experiment=NAME among them makes that the only one)")
    base.add_argument("--experiment", action="append", help="experiment name (repeatable; default: baseline_*)")
    base.add_argument("--config", help="an experiment YAML file instead of --experiment")
    base.add_argument("--out", default="reports/baselines", help="folder of the baseline files (default: %(default)s)")
    base.add_argument("--runs-dir", default="results/baseline", help="where the runs go (default: %(default)s)")
    base.add_argument("--workers", type=int, help="parallel processes (default: the config's sweep.workers)")
    reg = sub.add_parser(
        "regress",
        help="re-run the baseline experiments and fail when a metric leaves its band",
        description="band = max(k * baseline seed std, floor); accuracy-like metrics may not drop, forgetting-like "
        "ones may not rise, check pass rates may not move either way by more than the band. Exit 1 with a "
        "table of what moved; 0 when everything stays inside. Overrides are applied on top of each baseline's "
        "own (e.g. strategies.ewc.lam=5 shows what a change would do).",
    )
    reg.add_argument("overrides", nargs="*", help="key=value overrides on top of each baseline's configuration")
    reg.add_argument("--baseline", action="append",
                     help="baseline JSON (repeatable; default: reports/baselines/*.json)")
    reg.add_argument("--k", type=float, default=None, help="band width in baseline seed stds (default: 3)")
    reg.add_argument("--floor", action="append", default=[], metavar="METRIC=VALUE",
                     help="absolute band floor of a metric (`check` = every check pass rate); repeatable")
    reg.add_argument("--runs-dir", default="results/regress", help="where the fresh runs go (default: %(default)s)")
    reg.add_argument("--workers", type=int, help="parallel processes (default: the config's sweep.workers)")
    rep = sub.add_parser(
        "reproduce",
        help="run the published-protocol experiments and write reports/reproduction.md",
        description="Ours (mean ± std over >= 5 seeds) next to the published value, the difference and a verdict, "
        "for every row of configs/reproduction.yaml. Finished runs under --runs-dir are reused.",
    )
    rep.add_argument("--spec", help="published values and notes (default: configs/reproduction.yaml)")
    rep.add_argument("--only", action="append", metavar="NAME[/LABEL]",
                     help="limit to an experiment or one of its labels (repeatable)")
    rep.add_argument("--runs-dir", default="results", help="runs go to RUNS_DIR/<experiment> (default: %(default)s)")
    rep.add_argument("--out", help=f"the Markdown file (default: {REPRODUCTION_REPORT}; with --only "
                                   f"{PARTIAL_REPRODUCTION_REPORT}, so that the full report is kept)")
    rep.add_argument("--no-train", action="store_true", help="only collect finished runs; list the rest as not run")
    rep.add_argument("--workers", type=int, help="parallel processes (default: the config's sweep.workers)")
    return p


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments; ``key=value`` overrides may come before, between or after the flags."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the ``cl-bench`` command given by ``argv`` (default: the process arguments); return its exit code.
    Warnings are shown as one ``warning: ...`` line each while it runs."""
    args = _parse(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "imports", None):
        from cl_bench.registry import PluginImportError, import_plugins

        try:
            import_plugins(args.imports)  # recorded for the worker processes
        except PluginImportError as err:
            print(f"config error: {err}", file=sys.stderr)
            return EXIT_INPUT
    if args.command == "list":
        return cmd_list()
    if args.command == "sweep":
        return cmd_sweep(args)
    if args.command == "report":
        return cmd_report(args)
    if args.command == "best":
        return cmd_best(args)
    if args.command == "collect":
        return cmd_collect(args)
    if args.command == "baseline":
        return cmd_baseline(args)
    if args.command == "regress":
        return cmd_regress(args)
    if args.command == "reproduce":
        return cmd_reproduce(args)
    return cmd_run(args)


def cmd_list() -> int:
    """``cl-bench list``: the scenarios, strategies, models and metrics."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from cl_bench.config import CONFIG_DIR
    from cl_bench.data.scenarios import SCENARIO_KINDS
    from cl_bench.data.sources import source_info
    from cl_bench.metrics import METRICS
    from cl_bench.models import model_info
    from cl_bench.registry import get_strategy, strategy_names

    console = Console()

    def table(title: str, rows: list[tuple[str, str]]) -> None:
        t = Table(title=title, show_header=False, title_justify="left")
        for name, doc in rows:
            t.add_row(Text(name), Text(doc))  # plain text: "[local]" and "R[T-1][j]" are not markup
        console.print(t)

    def first_line(path: Any) -> str:
        lines = [ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
        return lines[0] if lines else ""

    table("scenarios (configs/scenario)",
          [(p.stem, first_line(p)) for p in sorted((CONFIG_DIR / "scenario").glob("*.yaml"))])
    table("scenario kinds", list(SCENARIO_KINDS.items()))
    table("datasets", list(source_info().items()))
    table(
        "strategies",
        [(n, f"[{get_strategy(n).family}] " + (get_strategy(n).__doc__ or "").strip().splitlines()[0])
         for n in strategy_names()],
    )
    table("models", list(model_info().items()))
    table("experiments (configs/experiment)",
          [(p.stem, first_line(p)) for p in sorted((CONFIG_DIR / "experiment").glob("*.yaml"))])
    table("metrics", [(m, info.doc) for m, info in METRICS.items()])
    return 0


def _fmt(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.3f}" + (f" ± {stat['std']:.3f}" if stat.get("n", 0) > 1 else "")


def cmd_run(args: argparse.Namespace) -> int:
    """``cl-bench run``: compose the config, then train and evaluate every run of its plan."""
    from rich.console import Console
    from rich.markup import escape

    from cl_bench.config import ConfigError, build_plan, load_config, pool_requested
    from cl_bench.workers import start_worker_server

    if not args.dry_run and pool_requested(args.overrides, args.config):
        start_worker_server()  # its imports run beside this process's own

    from cl_bench.loggers import logger_config
    from cl_bench.wandb_sweep import apply_grid, check_agent_plan

    console = Console()
    if not console.is_terminal:
        console.width = 160
    try:
        cfg = apply_grid(load_config(args.overrides, args.config))  # list-valued hyper-parameters -> labels
        plan = build_plan(cfg)
        logger_config(cfg.get("logger"))
        check_agent_plan(plan)
    except ConfigError as err:
        console.print(f"[bold red]config error:[/] {escape(str(err))}", soft_wrap=True)
        return 2
    if args.dry_run:
        for spec in plan.runs:
            console.print(spec.run_id)
        console.print(f"{len(plan.runs)} runs -> {plan.output_dir}")
        return 0
    if args.fresh and args.resume:
        console.print("[bold red]config error:[/] --fresh and --resume contradict each other; pass one")
        return 2
    return _execute(plan, console, resume=not args.fresh)


def _execute(plan: Any, console: Any, resume: bool) -> int:
    from omegaconf import OmegaConf
    from rich.live import Live
    from rich.markup import escape
    from rich.table import Table

    from cl_bench.config import ConfigError
    from cl_bench.data import DatasetError
    from cl_bench.loggers import logger_config
    from cl_bench.metrics import HEADLINE
    from cl_bench.progress import Board
    from cl_bench.results import (
        OutputWriteError,
        aggregate,
        save_result,
        write_results_file,
        write_text_atomic,
    )
    from cl_bench.runner import (
        RunInterrupted,
        add_intransigence,
        execute,
        folder_results,
        process_is_lead,
        result_path,
        result_spec,
    )

    interactive = console.is_terminal and not os.environ.get("CI")
    results = []
    n_tasks = int(plan.config.scenario.n_tasks)
    board = Board(plan.name, n_tasks * len(plan.runs), plain=not interactive)
    workers = f", {plan.workers} worker processes" if plan.workers > 1 else ""
    console.print(f"{plan.name}: {len(plan.runs)} runs x {n_tasks} tasks{workers} -> {plan.output_dir}; "
                  "loading the data and checking every run first", soft_wrap=True)
    live = Live(board, console=console, refresh_per_second=4, transient=True) if interactive else None
    try:
        if live is not None:
            live.start()
        for result in execute(plan, resume=resume, workers=plan.workers, on_progress=board):
            board.result(result.run_id, n_tasks, result.status)
            if result.status != "ok":
                console.print(f"[red]failed[/] {result.run_id}: {result.error}")
            results.append(result)
    except (ConfigError, DatasetError, OutputWriteError) as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return EXIT_INPUT
    except (RunInterrupted, KeyboardInterrupt) as err:
        print(str(err) or f"interrupted; {RESUME_HINT}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if live is not None:
            live.stop()
    if not process_is_lead():  # another rank of a data-parallel run: rank 0 writes and prints
        return 0
    console.print(f"done: {board.status()}")
    order = {spec.run_id: i for i, spec in enumerate(plan.runs)}
    results.sort(key=lambda r: order[r.run_id])
    add_intransigence(results)
    out = plan.output_dir
    try:
        for result in results:  # intransigence is known only once the joint run exists
            if result.status == "ok":
                save_result(result, result_path(out, result_spec(plan, result)))
        # every finished run of the folder, this plan's first: a later experiment into it drops nothing
        ours = {r.run_id for r in results}
        folder = results + [r for r in folder_results(out) if r.run_id not in ours and r.status == "ok"]
        agg = aggregate(folder)
        write_results_file(out / "results.json", plan.name, folder, agg)
        write_text_atomic(out / "config.yaml", OmegaConf.to_yaml(plan.config))
    except OutputWriteError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return EXIT_INPUT
    log_cfg = logger_config(plan.config.get("logger"))
    if log_cfg.use and not os.environ.get("WANDB_SWEEP_ID"):  # the experiment's summary (cl_bench.wandb_summary);
        # under `wandb agent` a run is one assignment: `cl-bench report DIR --wandb` writes it after the sweep
        from cl_bench.wandb_summary import write_summary_run

        write_summary_run(out, log_cfg)

    for setting in dict.fromkeys(r.setting for r in results):
        table = Table(title=f"{plan.name} — {setting} (mean ± std over seeds)", title_justify="left")
        table.add_column("strategy")
        for m in HEADLINE:
            table.add_column(m, justify="right")
        for key, stats in agg.items():
            if key.startswith(setting + "/"):
                table.add_row(key.split("/", 1)[1], *(_fmt(stats.get(m)) for m in HEADLINE))
        console.print(table)
    if any(r.checks for r in results):
        from cl_bench.geometry.plots import plot_forgetting_vs_update_size, plot_predicted_vs_measured
        from cl_bench.geometry.table import guarantee_table

        console.print(guarantee_table(results))
        plot_predicted_vs_measured(results, out / "geometry_predicted_vs_measured.png")
        plot_forgetting_vs_update_size(results, out / "geometry_forgetting_vs_update.png")
    failed = [r for r in results if r.status != "ok"]
    earlier = f"; {len(folder) - len(results)} earlier runs of the folder kept" if len(folder) > len(results) else ""
    console.print(f"results: {out / 'results.json'} ({len(results)} runs, {len(failed)} failed{earlier})")
    return 1 if failed else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``cl-bench sweep``: the grid of a config with list-valued hyper-parameters (``--wandb``: a W&B Sweeps spec)."""
    from pathlib import Path

    from rich.console import Console

    from cl_bench.config import ConfigError, build_plan, load_config
    from cl_bench.wandb_sweep import apply_grid, sweep_axes, write_wandb_sweep

    console = Console()
    try:
        cfg = load_config(args.overrides, args.config)
        axes = sweep_axes(cfg)
        plan = build_plan(apply_grid(cfg))  # every grid point validated before anything is written
    except ConfigError as err:
        console.print(f"[bold red]config error:[/] {err}")
        return 2
    for key, values in axes.items():
        console.print(f"axis {key}: {values}")
    if not args.wandb:
        for label in plan.config.strategy:
            console.print(label)
        console.print(f"{len(plan.runs)} runs; run them here with `cl-bench run` and the same overrides "
                      "(sweep.workers=N in parallel), or write a W&B Sweeps spec with --wandb; then "
                      f"`cl-bench best {plan.output_dir} --metric val/acc` selects on validation, never on test")
        if not float(cfg.scenario.get("val_fraction") or 0) > 0:
            console.print("warning: scenario.val_fraction is 0: no validation split to select on; "
                          "add scenario.val_fraction=0.1")
        return 0
    try:
        path = write_wandb_sweep(cfg, Path(args.out or Path("sweeps") / plan.name), mode=args.mode)
    except ConfigError as err:
        console.print(f"[bold red]config error:[/] {err}")
        return 2
    console.print(f"{len(plan.runs)} runs -> {path}\nnext: `wandb sweep {path}`, then `wandb agent "
                  f"ENTITY/PROJECT/SWEEP_ID` on each machine (see {path.parent / 'README.md'})")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    """``cl-bench collect``: one results.json (same aggregates as one run of everything) from several folders."""
    from pathlib import Path

    from cl_bench.collect import collect

    try:
        path = collect([Path(f) for f in args.folders], Path(args.out))
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT
    print(f"results: {path}")
    if args.wandb:
        from cl_bench.wandb_summary import summary_logger_config, write_summary_run

        print(f"summary W&B run: {write_summary_run(Path(args.out), summary_logger_config(Path(args.out)))}")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    """``cl-bench best``: the label selected on a validation metric, per setting, with its test metrics."""
    from pathlib import Path

    from cl_bench.metrics import HEADLINE
    from cl_bench.report import load_results
    from cl_bench.select import describe, select

    try:
        name, runs, agg = load_results(Path(args.results_dir))
        chosen = select(runs, args.metric)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT
    print(f"{name}: selected on {args.metric} (validation splits; test metrics are reported, never used to select)")
    for setting, (best, ranked) in chosen.items():
        print(f"\n{setting}:")
        for c in ranked:
            print(f"  {'*' if c is best else ' '} {c.label:<28} {args.metric} = {c.score:.4f}  ({len(c.runs)} seeds)")
        info = describe(best)
        print(f"  selected: {best.label} (strategy {info['strategy']}, params {info['params']}, "
              f"lr {info['optimizer'].get('lr')}, seeds {info['seeds']})")
        stats = agg.get(f"{setting}/{best.label}", {})
        print("  test metrics: " + ", ".join(f"{m} {_fmt(stats.get(m))}" for m in HEADLINE))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``cl-bench report``: the Markdown report with plots of a finished run folder."""
    from pathlib import Path

    from cl_bench.report import load_results, write_report
    from cl_bench.results import OutputWriteError

    source = Path(args.results_dir) / "results.json"
    try:
        name = load_results(Path(args.results_dir))[0]
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        print(f"error: {source}: not a readable results file ({type(err).__name__}: {err}); re-run "
              "`cl-bench run` into that folder to rewrite it", file=sys.stderr)
        return 2
    out = Path(args.out or Path("reports") / name)
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        print(f"error: --out {out}: {blocker} is a file, not a folder; name a folder for the report", file=sys.stderr)
        return 2
    try:
        readme = write_report(Path(args.results_dir), out)
    except (OSError, OutputWriteError) as err:
        print(f"error: --out {out}: cannot write the report ({err})", file=sys.stderr)
        return 2
    print(f"report: {readme}")
    if args.wandb:
        from cl_bench.wandb_summary import summary_logger_config, write_summary_run

        run_id = write_summary_run(Path(args.results_dir), summary_logger_config(Path(args.results_dir)), readme.parent)
        print(f"summary W&B run: {run_id}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    """``cl-bench baseline``: run the regression-gate experiments from scratch and write their baselines."""
    from pathlib import Path

    from cl_bench.config import CONFIG_DIR, ConfigError
    from cl_bench.data import DatasetError
    from cl_bench.regress import build, make_baseline
    from cl_bench.results import OutputWriteError, write_json_atomic
    from cl_bench.runner import RunInterrupted

    if args.config and args.experiment:
        print("error: pass --config or --experiment, not both", file=sys.stderr)
        return 2
    if args.config or any(o.startswith("experiment=") for o in args.overrides):
        jobs: list[list[str]] = [[]]
    else:
        names = args.experiment or sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("baseline_*.yaml"))
        jobs = [[f"experiment={n}"] for n in names]
    try:  # every plan validated before anything trains
        plans = [(build([*job, *args.overrides], args.config, Path(args.runs_dir), args.workers), job) for job in jobs]
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT
    for plan, job in plans:
        try:
            base = make_baseline(plan, [*job, *args.overrides], args.config)
        except (ConfigError, DatasetError, OutputWriteError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_INPUT
        except RunInterrupted as err:
            print(str(err), file=sys.stderr)
            return EXIT_INTERRUPTED
        path = Path(args.out) / f"{base['name']}.json"
        write_json_atomic(path, base)
        print(f"baseline: {path} ({len(base['run_hashes'])} runs, {base['wall_s']:.0f} s, "
              f"config {base['config_hash']})")
        if base["blind_to"]:
            print("  within the band of plain fine-tuning on every metric (the gate cannot tell them from naive): "
                  + ", ".join(base["blind_to"]))
    return 0


def cmd_regress(args: argparse.Namespace) -> int:
    """``cl-bench regress``: re-run the experiments of the baselines; exit 1 when a metric leaves its band."""
    import time
    from pathlib import Path

    from rich.console import Console
    from rich.markup import escape

    from cl_bench.config import ConfigError
    from cl_bench.data import DatasetError
    from cl_bench.regress import (
        DEFAULT_K,
        BaselineError,
        build,
        changed_runs,
        compare,
        load_baseline,
        moves_table,
        parse_floors,
        run_plan,
        summarize,
    )
    from cl_bench.results import OutputWriteError, write_json_atomic
    from cl_bench.runner import RunInterrupted

    console = Console()
    if not console.is_terminal:
        console.width = 160
    paths = [Path(p) for p in args.baseline] if args.baseline else sorted(Path("reports/baselines").glob("*.json"))
    if not paths:
        console.print("[bold red]error:[/] no baseline given and none in reports/baselines; run `cl-bench baseline`")
        return 2
    k = DEFAULT_K if args.k is None else args.k
    try:
        floors = parse_floors(args.floor)
        if k < 0:
            raise ValueError(f"--k must be >= 0, got {k}")
    except ValueError as err:
        console.print(f"[bold red]error:[/] {err}")
        return 2
    try:  # every baseline read whole and every plan validated before anything trains
        bases = [(path, load_baseline(path)) for path in paths]
    except BaselineError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return EXIT_INPUT
    jobs = []
    for path, base in bases:
        try:
            jobs.append((path, base, build([*base["overrides"], *args.overrides], base["config_file"],
                                           Path(args.runs_dir), args.workers)))
        except (ConfigError, DatasetError, ValueError, OSError) as err:
            console.print(f"[bold red]error:[/] {path}: {escape(str(err))}", soft_wrap=True)
            return EXIT_INPUT
    failed = False
    for path, base, plan in jobs:
        start = time.perf_counter()
        try:
            results = run_plan(plan, resume=False)
        except (ConfigError, DatasetError, OutputWriteError) as err:
            console.print(f"[bold red]error:[/] {path}: {escape(str(err))}", soft_wrap=True)
            return EXIT_INPUT
        except RunInterrupted as err:
            print(str(err), file=sys.stderr)
            return EXIT_INTERRUPTED
        rows = compare(base["metrics"], summarize(results), k, floors)
        bad = [r for r in rows if r.regressed]
        changed = changed_runs(base, plan)
        console.print(f"{base['name']}: {len(results)} runs in {time.perf_counter() - start:.0f} s, {len(rows)} "
                      f"metrics compared (k={k:g}), {len(bad)} outside their band"
                      + (f"; configuration differs from the baseline for {len(changed)} runs, e.g. {changed[0]}"
                         if changed else ""))
        write_json_atomic(plan.output_dir / "regress.json", {
            "baseline": str(path), "overrides": args.overrides, "k": k, "floors": floors,
            "rows": [{**vars(r), "delta": r.delta, "regressed": r.regressed} for r in rows]})
        for r in results:
            if r.status != "ok":
                console.print(f"[red]failed[/] {r.run_id}: {r.error}")
        console.print(moves_table(base, rows))
        failed = failed or bool(bad)
    console.print("[bold red]regression gate FAILED[/]" if failed else "regression gate passed")
    return EXIT_FAILED if failed else 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``cl-bench reproduce``: the published-protocol experiments next to their published values."""
    from pathlib import Path

    from cl_bench.config import ConfigError
    from cl_bench.data import DatasetError
    from cl_bench.regress import run_plan
    from cl_bench.reproduce import DEFAULT_SPEC, finished_results, load_spec, plan_of, render, rows_of, select
    from cl_bench.results import OutputWriteError, write_text_atomic
    from cl_bench.runner import RunInterrupted

    spec_path = Path(args.spec) if args.spec else DEFAULT_SPEC
    rows, stale = [], []
    try:  # every plan validated before anything trains
        spec = load_spec(spec_path)
        entries = select(spec, args.only)
        plans = {name: plan_of(name, entry, Path(args.runs_dir), int(spec["min_seeds"]))
                 for name, entry in entries.items()}
        for name, plan in plans.items():
            if args.workers:
                plan.workers = args.workers
            if args.no_train:
                results, old = finished_results(plan)
                stale += [f"{name}/{run_id}" for run_id in old]
            else:
                results = run_plan(plan, resume=True)
            rows += rows_of(name, entries[name], results, len({s.seed for s in plan.runs}), spec)
    except (ConfigError, DatasetError, OutputWriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except RunInterrupted as err:
        print(str(err), file=sys.stderr)
        return EXIT_INTERRUPTED
    command = " ".join(["cl-bench reproduce", f"--runs-dir {args.runs_dir}", *(f"--only {o}" for o in args.only or []),
                        *(["--no-train"] if args.no_train else [])])
    out = Path(args.out or (PARTIAL_REPRODUCTION_REPORT if args.only else REPRODUCTION_REPORT))
    write_text_atomic(out, render(rows, entries, spec_path, Path(args.runs_dir), command, stale))
    off = [r for r in rows if r.values and r.verdict.startswith("off, NOT EXPLAINED")]
    print(f"reproduction: {out} ({sum(bool(r.values) for r in rows)}/{len(rows)} rows with runs, "
          f"{sum(r.verdict.startswith('reproduced') for r in rows if r.values)} reproduced, "
          f"{len(off)} off and not explained"
          + (f", {len(stale)} stale result files" if stale else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
