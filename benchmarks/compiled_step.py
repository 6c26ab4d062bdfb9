"""Eager against compiled optimiser steps (``trainer.compile``), side by side in one process.

Protocol: the DER paper's S-MNIST protocol for the local methods
(configs/experiment/der_smnist_local.yaml: MLP 784-100-100-10, batch 10, plain
SGD, 1 epoch per task, 5 tasks), class-IL, seed 0, checks off. Each strategy is
trained twice from the same seed, ``trainer.compile=false`` then ``true``; the
printed fit time is the sum over tasks of ``timings.fit`` (training only), the
compile time the first compiled step of each task's fit (compilation included).

    CL_BENCH_DATA=$CL_BENCH_DATA uv run python -m benchmarks.compiled_step --strategy sgd ewc

(CL_BENCH_DATA: the folder holding MNIST/raw.)
"""

from __future__ import annotations

import argparse

import torch

from cl_bench.config import build_plan, load_config
from cl_bench.results import device_info
from cl_bench.runner import load_scenario, run_one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategy", nargs="+", default=["sgd", "ewc"], help="labels of der_smnist_local")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device: {device_info('cpu')}, torch threads: {args.threads}")
    print(f"{'strategy':<10} {'eager fit s':>12} {'compiled fit s':>15} {'compile s':>10} {'eager/compiled':>15} "
          f"{'final ACC eager / compiled':>28}")
    for label in args.strategy:
        out = {}
        for compile_ in ("false", "true"):
            plan = build_plan(load_config(["experiment=der_smnist_local", f"strategy={label}", "seeds=[0]",
                                           "settings=[class_il]", f"scenario.n_tasks={args.tasks}",
                                           f"trainer.compile={compile_}", "output.dir=unused"]))
            spec = plan.runs[0]
            out[compile_] = run_one(spec, load_scenario(spec))
        eager, comp = out["false"], out["true"]
        fit_e, fit_c = sum(eager.timings["fit"]), sum(comp.timings["fit"])
        compile_s = sum(comp.timings.get("compile", []))
        print(f"{label:<10} {fit_e:12.2f} {fit_c:15.2f} {compile_s:10.2f} {fit_e / fit_c:15.2f} "
              f"{eager.metrics['acc']:13.4f} / {comp.metrics['acc']:.4f}")


if __name__ == "__main__":
    main()
