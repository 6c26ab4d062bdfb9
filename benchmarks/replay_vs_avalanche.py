"""ER with a 500-example buffer on Split-MNIST: cl-bench against Avalanche's replay.

Protocol (the DER paper's S-MNIST ER(500), configs/experiment/der_smnist_replay.yaml
label ``er_500``): 5 tasks x 2 classes, class-IL, MLP 784-100-100-10, plain SGD
lr 0.1, batch 10 + 10 replayed examples per step, 1 epoch per task, every task
evaluated after every task. All three train the same network (same seed, same
initial weights) in one process, on the same in-memory tensors unless
``--avalanche-data classic``.

- raw: :func:`benchmarks.common.raw_loop` (``method="er"``), the same work as a
  plain PyTorch loop: the floor any framework is measured against.
- cl-bench: ``strategy=er`` through the real runner (Lightning Trainer per task,
  reservoir buffer updated every step, on-device batches).
- Avalanche: ``Naive`` + ``ReplayPlugin(mem_size=500, batch_size=10,
  batch_size_mem=10)``. Its default storage policy fills the memory at the end
  of each experience (experience-balanced), not by reservoir during the
  stream, so the two replay the same amount but not the same examples.
  ``--avalanche-data tensors`` (default) gives Avalanche the same normalised
  tensors (its cheapest input path); ``classic`` uses Avalanche's own
  ``SplitMNIST`` on the same MNIST files (``TensorMNIST`` with a per-sample
  ``Normalize`` by MNIST's mean and std, where this protocol feeds pixels / 255),
  i.e. what an Avalanche user runs.

    CL_BENCH_DATA=$CL_BENCH_DATA uv run python -m benchmarks.replay_vs_avalanche --seeds 0 1 2

(CL_BENCH_DATA: the folder holding MNIST/raw.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch

from benchmarks.common import avalanche_final_accuracies, avalanche_split, raw_loop
from cl_bench.config import build_plan, load_config
from cl_bench.models import build_model
from cl_bench.results import device_info
from cl_bench.runner import load_scenario, run_one

LABEL, MEM, BATCH, MEM_BATCH, LR, EPOCHS = "er_500", 500, 10, 10, 0.1, 1


def avalanche_benchmark(scenario, data: str, root: str | None) -> Any:
    """The scenario for Avalanche: our tensors (``tensors``) or its classic ``SplitMNIST`` (``classic``)."""
    if data == "tensors":
        return avalanche_split(scenario)
    from avalanche.benchmarks.classic import SplitMNIST

    order = [c for t in scenario.tasks for c in t.classes]
    return SplitMNIST(scenario.n_tasks, fixed_class_order=order, dataset_root=root)


def avalanche_er(scenario, model_cfg: dict, seed: int, data: str, root: str | None) -> tuple[float, float]:
    """Seconds and final mean accuracy of Avalanche's Naive + ReplayPlugin."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin

    benchmark = avalanche_benchmark(scenario, data, root)
    torch.manual_seed(seed)
    model = build_model(model_cfg, scenario.input_shape, scenario.n_outputs, scenario.task_classes())
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=BATCH, train_epochs=EPOCHS, eval_mb_size=1024, device="cpu",
        plugins=[ReplayPlugin(mem_size=MEM, batch_size=BATCH, batch_size_mem=MEM_BATCH)],
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]),
    )
    t0 = time.perf_counter()
    rows = avalanche_final_accuracies(strategy, benchmark)
    return time.perf_counter() - t0, sum(rows[-1]) / len(rows[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both sides")
    ap.add_argument("--avalanche-data", choices=["tensors", "classic"], default="tensors",
                    help="Avalanche's input: our normalised tensors, or its own SplitMNIST on the same files")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        plan = build_plan(load_config(["experiment=der_smnist_replay", f"strategy=[{LABEL}]", "settings=[class_il]",
                                       f"seeds=[{seed}]"]))
        spec = plan.runs[0]
        assert spec.params["buffer_size"] == MEM and spec.optimizer["lr"] == LR and spec.trainer["batch_size"] == BATCH
        scenario = load_scenario(spec)
        t0 = time.perf_counter()
        ours = run_one(spec, scenario)
        t_ours = time.perf_counter() - t0
        t_ava, acc_ava = avalanche_er(scenario, spec.model, seed, args.avalanche_data,
                                      os.environ.get("CL_BENCH_DATA"))
        t0 = time.perf_counter()
        raw = raw_loop(scenario, lambda: build_model(spec.model, scenario.input_shape, scenario.n_outputs,
                                                     scenario.task_classes()),
                       lambda m: torch.optim.SGD(m.parameters(), lr=LR), EPOCHS, BATCH, "cpu", seed,
                       method="er", buffer_size=MEM, replay_batch=MEM_BATCH)
        t_raw, acc_raw = time.perf_counter() - t0, sum(raw[-1]) / len(raw[-1])
        rows.append((seed, t_ours, ours.metrics["acc"], t_ava, acc_ava, t_raw, acc_raw))
        print(f"seed {seed}: cl-bench {t_ours:7.1f} s acc {ours.metrics['acc']:.4f} | "
              f"avalanche {t_ava:7.1f} s acc {acc_ava:.4f} | raw {t_raw:7.1f} s acc {acc_raw:.4f} | "
              f"ratio {t_ava / t_ours:.2f}x", flush=True)
    print(f"device: {device_info('cpu')}, torch threads: {args.threads}, avalanche input: {args.avalanche_data}")
    mean = statistics.fmean

    def sd(v: list[float]) -> float:
        return statistics.stdev(v) if len(v) > 1 else 0.0

    ours_t, ours_a = [r[1] for r in rows], [r[2] for r in rows]
    ava_t, ava_a = [r[3] for r in rows], [r[4] for r in rows]
    raw_t, raw_a = [r[5] for r in rows], [r[6] for r in rows]
    print(f"{'implementation':<12} {'seconds':>8} {'final ACC (mean +- std)':>26}")
    print(f"{'cl-bench':<12} {mean(ours_t):8.1f} {mean(ours_a):17.4f} +- {sd(ours_a):.4f}")
    print(f"{'avalanche':<12} {mean(ava_t):8.1f} {mean(ava_a):17.4f} +- {sd(ava_a):.4f}")
    print(f"{'raw loop':<12} {mean(raw_t):8.1f} {mean(raw_a):17.4f} +- {sd(raw_a):.4f}")
    print(f"time ratio avalanche / cl-bench: {mean(ava_t) / mean(ours_t):.2f}x; "
          f"accuracy difference: {100 * (mean(ours_a) - mean(ava_a)):+.2f} points")
    print(f"time ratio cl-bench / raw: {mean(ours_t) / mean(raw_t):.2f}x; "
          f"avalanche / raw: {mean(ava_t) / mean(raw_t):.2f}x")


if __name__ == "__main__":
    main()
