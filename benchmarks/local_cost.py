"""Cost of the quadratic penalties: per training step relative to naive fine-tuning, and the
after_task consolidation (Fisher / importance / curvature) time.

DER's S-MNIST net (MLP 784-100-100-10, 89,610 parameters) on MNIST-shaped data (random pixels: the
cost does not depend on the values), every strategy with its configs/strategy/<name>.yaml defaults.
Each strategy first consolidates ``--tasks`` tasks (so its penalty sums over that many anchors), then:

- ``step ms``: a real Lightning ``Trainer.fit`` of ``--steps`` SGD steps (batch ``--batch-size``), per
  step, and its ratio to naive (includes SI's per-step hooks);
- ``penalty ms``: ``penalty()`` + its backward alone, per call;
- ``after_task s``: one consolidation on a task of ``--train`` samples.

``quadratic_exact`` refuses this model (P > max_params); it is timed on a 64-16 MLP on 8x8 inputs
in a second table, against naive and EWC on the same small model.

    uv run python benchmarks/local_cost.py [--steps 300] [--batch-size 10] [--tasks 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from omegaconf import OmegaConf

from cl_bench.config import CONFIG_DIR, to_dataclass
from cl_bench.data import Scenario, Task, TaskBatches
from cl_bench.models import build_model
from cl_bench.module import ContinualModule, OptimizerConfig
from cl_bench.registry import get_strategy
from cl_bench.runner import quiet_lightning

STRATEGIES = ["naive", "l2", "ewc", "online_ewc", "si", "mas", "kfac_ewc"]


def scenario(shape: tuple[int, ...], n_train: int, n_tasks: int) -> Scenario:
    gen = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(n_tasks):
        classes = [2 * t, 2 * t + 1]
        y = torch.tensor(classes)[torch.randint(0, 2, (n_train,), generator=gen)]
        x = torch.randint(0, 256, (n_train, *shape), generator=gen, dtype=torch.uint8)
        tasks.append(Task(t, classes, x, y, x[:100], y[:100]))
    return Scenario("random", "class_il", tasks, 10, shape, (0.13,), (0.31,))


def build(name: str, sc: Scenario, widths: list[int]) -> ContinualModule:
    torch.manual_seed(0)
    cls = get_strategy(name)
    path = CONFIG_DIR / "strategy" / f"{name}.yaml"
    loaded = OmegaConf.to_container(OmegaConf.load(path))
    cfg = {k: v for k, v in loaded.items() if k not in ("class", "optimizer", "trainer")}
    backbone = build_model({"name": "mlp", "widths": widths}, sc.input_shape, sc.n_outputs, sc.task_classes())
    return cls(backbone, sc, to_dataclass(cls.Params, cfg, f"strategies.{name}"), OptimizerConfig(lr=0.01))


def fit_ms(module: ContinualModule, task: Task, steps: int, batch_size: int, sc: Scenario) -> float:
    batches = TaskBatches(task.x_train, task.y_train, torch.full((task.n_train,), task.id), batch_size,
                          device="cpu", seed=0, mean=sc.mean, std=sc.std)
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, logger=False, barebones=True, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=batches)
    return (time.perf_counter() - t0) / steps * 1e3


def penalty_ms(module: ContinualModule, repeats: int = 50) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = module.penalty()
        if p.requires_grad:
            p.backward()
        times.append(time.perf_counter() - t0)
    module.zero_grad(set_to_none=True)
    return statistics.median(times) * 1e3


def measure(names: list[str], widths: list[int], shape: tuple[int, ...],
            args: argparse.Namespace) -> tuple[int, list[tuple[str, float, float, float]]]:
    sc = scenario(shape, args.train, args.tasks + 1)
    rows, n_params = [], 0
    for name in names:
        module = build(name, sc, widths)
        n_params = sum(p.numel() for p in module.parameters())
        consolidation = []
        for task in sc.tasks[:-1]:  # fill the penalty with --tasks anchors
            module.before_task(task)
            t0 = time.perf_counter()
            module.after_task(task)
            consolidation.append(time.perf_counter() - t0)
        module.before_task(sc.tasks[-1])
        with torch.no_grad():  # move away from the anchors so every penalty is non-zero
            for p in module.parameters():
                p.add_(1e-3 * torch.randn_like(p))
        fit_ms(module, sc.tasks[-1], 20, args.batch_size, sc)  # warm-up
        step = statistics.median(fit_ms(module, sc.tasks[-1], args.steps, args.batch_size, sc) for _ in range(3))
        rows.append((name, step, penalty_ms(module), statistics.median(consolidation)))
    return n_params, rows


def show(title: str, result: tuple[int, list[tuple[str, float, float, float]]]) -> None:
    n_params, rows = result
    base = rows[0][1]
    print(f"\n{title} ({n_params:,} parameters)")
    print(f"{'strategy':<16}{'step ms':>9}{'x naive':>9}{'penalty ms':>12}{'after_task s':>14}")
    for name, step, pen, cons in rows:
        print(f"{name:<16}{step:>9.3f}{step / base:>9.2f}{pen:>12.3f}{cons:>14.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps timed per strategy (x3)")
    parser.add_argument("--batch-size", type=int, default=10, help="DER's S-MNIST batch size")
    parser.add_argument("--tasks", type=int, default=2, help="tasks consolidated before timing")
    parser.add_argument("--train", type=int, default=2048, help="training samples per task")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    if not 1 <= args.tasks <= 4:
        parser.error("--tasks must be in 1..4 (10 outputs, 2 classes per task, one more task to train on)")
    torch.set_num_threads(args.threads)
    quiet_lightning()
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch_size}, {args.tasks} tasks "
          f"consolidated, {args.train} samples per task, CPU")
    show("MLP 784-100-100-10 on 1x28x28", measure(STRATEGIES, [100, 100], (1, 28, 28), args))
    show("MLP 64-16 on 1x8x8", measure(["naive", "ewc", "quadratic_exact"], [16], (1, 8, 8), args))


if __name__ == "__main__":
    main()
