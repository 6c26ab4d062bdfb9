"""Speed of cl-bench's task loop against a raw PyTorch loop and Avalanche.

Protocol: Split-MNIST 5 tasks, MLP 784-400-400-10, 1 epoch per task, batch 128,
SGD lr 0.01 momentum 0.9, every task evaluated after every task. ``--strategy``:

- ``naive``: fine-tuning;
- ``ewc``: lam 100, empirical Fisher (true labels) of 1024 samples per task;
  Avalanche's EWCPlugin (mode separate, ewc_lambda = lam / 2: its penalty has no 1/2)
  estimates its Fisher from squared mini-batch gradients over the whole task instead;
- ``er``: reservoir buffer of 500 examples, 128 replayed per step (Avalanche:
  ReplayPlugin, whose memory is filled at the end of each task, not by reservoir).

The three implementations train the same network on the same tensors in the
same process; times are medians over ``--repeats`` after a warm-up.

    CL_BENCH_DATA=$CL_BENCH_DATA uv run python benchmarks/speed.py --strategy naive

(CL_BENCH_DATA: the folder holding MNIST/raw.)
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import torch

from benchmarks.common import avalanche_final_accuracies, avalanche_split, gemm_rate, mlp_matmul_flops, raw_loop, timed
from cl_bench.config import RunSpec, TrainerConfig
from cl_bench.data import build_scenario
from cl_bench.models import build_model
from cl_bench.results import device_info
from cl_bench.runner import run_one

MODEL = {"name": "mlp", "widths": [400, 400], "activation": "relu", "head": "single"}
SCENARIO = {"name": "split_mnist", "kind": "split", "source": "mnist", "setting": "class_il", "n_tasks": 5,
            "classes_per_task": 2, "seed": 0}
LR, MOMENTUM, BATCH, EPOCHS = 0.01, 0.9, 128, 1
LAM, FISHER_SAMPLES, BUFFER, REPLAY = 100.0, 1024, 500, 128
CL_BENCH_PARAMS = {
    "naive": {},
    "ewc": {"lam": LAM, "fisher": "empirical", "samples": FISHER_SAMPLES},
    "er": {"buffer_size": BUFFER, "minibatch_size": REPLAY},
}


def avalanche_plugins(strategy: str) -> list:
    from avalanche.training.plugins import EWCPlugin, ReplayPlugin

    if strategy == "ewc":
        return [EWCPlugin(ewc_lambda=LAM / 2, mode="separate")]
    if strategy == "er":
        return [ReplayPlugin(mem_size=BUFFER, batch_size=BATCH, batch_size_mem=REPLAY)]
    return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategy", choices=list(CL_BENCH_PARAMS), default="naive")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-avalanche", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time cl-bench with trainer.compile=true")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads for all three (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scenario = build_scenario(SCENARIO)
    device = args.device

    def make_model() -> torch.nn.Module:
        return build_model(MODEL, scenario.input_shape, scenario.n_outputs, scenario.task_classes())

    def make_opt(model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    spec = RunSpec(
        label=args.strategy, strategy_class=args.strategy, setting="class_il", seed=0,
        params=CL_BENCH_PARAMS[args.strategy],
        trainer=dataclasses.asdict(TrainerConfig(
            epochs=EPOCHS, batch_size=BATCH, train_loss_probe=0, deterministic=False,
            accelerator="gpu" if device == "cuda" else "cpu",
        )),
        optimizer={"name": "sgd", "lr": LR, "momentum": MOMENTUM}, model=MODEL, scenario=SCENARIO, data={},
        checks={"enabled": False},  # the raw loop and Avalanche compute no curvature either
    )

    t_raw, raw = timed(lambda: raw_loop(scenario, make_model, make_opt, EPOCHS, BATCH, device, 0, method=args.strategy,
                                        lam=LAM, fisher_samples=FISHER_SAMPLES, buffer_size=BUFFER,
                                        replay_batch=REPLAY), args.repeats)
    t_ours, ours = timed(lambda: run_one(spec, scenario), args.repeats)
    print(f"strategy: {args.strategy}; device: {device_info(device)}")
    print(f"{'implementation':<14} {'seconds':>8} {'final ACC':>10} {'ratio vs raw':>13}")
    print(f"{'raw PyTorch':<14} {t_raw:8.2f} {sum(raw[-1]) / 5:10.4f} {1.0:13.2f}")
    print(f"{'cl-bench':<14} {t_ours:8.2f} {ours.metrics['acc']:10.4f} {t_ours / t_raw:13.2f}")
    if args.compile:
        compiled_spec = dataclasses.replace(spec, trainer={**spec.trainer, "compile": True})
        t_c, comp = timed(lambda: run_one(compiled_spec, scenario), args.repeats)
        first = sum(comp.timings.get("compile", []))
        print(f"{'cl-bench comp.':<14} {t_c:8.2f} {comp.metrics['acc']:10.4f} {t_c / t_raw:13.2f}   "
              f"(first compiled steps, compilation included: {first:.2f} s; without them: "
              f"{(t_c - first) / t_raw:.2f}x raw)")
    if not args.no_avalanche:
        from avalanche.evaluation.metrics import accuracy_metrics
        from avalanche.training.plugins import EvaluationPlugin
        from avalanche.training.supervised import Naive

        bench = avalanche_split(scenario)

        def avalanche_run() -> list[list[float]]:
            torch.manual_seed(0)
            model = make_model()
            strategy = Naive(
                model=model, optimizer=make_opt(model), train_mb_size=BATCH, train_epochs=EPOCHS, eval_mb_size=1024,
                device=device, evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]),
                plugins=avalanche_plugins(args.strategy),
            )
            return avalanche_final_accuracies(strategy, bench)

        t_av, av = timed(avalanche_run, args.repeats)
        print(f"{'Avalanche':<14} {t_av:8.2f} {sum(av[-1]) / 5:10.4f} {t_av / t_raw:13.2f}")
        print(f"cl-bench is {t_av / t_ours:.2f}x faster than Avalanche (target >= 2.5); an implementation as fast "
              f"as the raw loop would be {t_av / t_raw:.2f}x faster")
    if args.strategy == "naive" and device == "cpu":
        # the floor of any float32 implementation: the protocol's matrix products at the machine's best GEMM rate
        n_train = sum(len(t.y_train) for t in scenario.tasks) * EPOCHS
        n_eval = sum(t.n_test for t in scenario.tasks) * (len(scenario.tasks) + 1)  # the b row and one row per task
        widths = [math.prod(scenario.input_shape), *MODEL["widths"], scenario.n_outputs]
        flops, rate = mlp_matmul_flops(widths, n_train, n_eval), gemm_rate()
        floor = flops / rate
        print(f"matrix products: {flops / 1e9:.1f} GFLOP; best float32 GEMM rate here {rate / 1e9:.1f} GFLOP/s; "
              f"floor {floor:.2f} s (products only); the raw loop reaches {floor / t_raw:.0%} of that rate, cl-bench "
              f"{floor / t_ours:.0%}"
              + (f"; no float32 implementation can be more than {t_av / floor:.2f}x faster than Avalanche here"
                 if not args.no_avalanche else ""))
    print(f"cl-bench / raw loop = {t_ours / t_raw:.2f} (target <= 0.9)")


if __name__ == "__main__":
    main()
