"""Lightning's per-step floor: the cost of one optimiser step through the Trainer that cl-bench's runner
builds, against the same step in a raw PyTorch loop.

The same MLP 784-100-100-10, the same in-memory batches of ``--batch`` random examples (20 = the DER
S-MNIST ER protocol's 10 new + 10 replayed), plain SGD, ``--steps`` steps, 1 thread:

- raw: ``zero_grad / backward / step`` in a Python loop;
- lightning: a LightningModule whose ``training_step`` returns the loss (automatic optimisation),
  fitted by :func:`cl_bench.runner.make_trainer` (barebones, deterministic: as every cl-bench run);
- lightning manual: the same with ``automatic_optimization = False``.

No strategy, buffer or evaluation: what is printed is the least a Lightning-based loop adds per step.

    uv run python -m benchmarks.lightning_floor --steps 6000 --batch 20
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.config import TrainerConfig
from cl_bench.runner import make_trainer, quiet_lightning


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))


class Batches:
    """A fixed list of in-memory batches with a length (what ``TaskBatches`` gives the Trainer)."""

    def __init__(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Step(L.LightningModule):
    """One optimiser step per training_step (automatic or manual optimisation)."""

    def __init__(self, manual: bool, lr: float) -> None:
        super().__init__()
        self.net, self.lr = mlp(), lr
        self.automatic_optimization = not manual

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        loss = F.cross_entropy(self.net(batch[0]), batch[1])
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def raw(batches: list[tuple[Tensor, Tensor]], lr: float) -> float:
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    t0 = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def lightning(batches: list[tuple[Tensor, Tensor]], lr: float, manual: bool) -> float:
    module = Step(manual, lr)
    trainer = make_trainer(TrainerConfig(epochs=1))
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=Batches(batches))
    seconds = time.perf_counter() - t0
    assert trainer.global_step == len(batches), (trainer.global_step, len(batches))
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    quiet_lightning()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch, 784, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
               for _ in range(args.steps)]
    runs = {"raw": lambda: raw(batches, 0.1), "lightning": lambda: lightning(batches, 0.1, False),
            "lightning manual": lambda: lightning(batches, 0.1, True)}
    times = {name: min(fn() for _ in range(args.repeats)) for name, fn in runs.items()}  # best of repeats
    base = times["raw"]
    print(f"{args.steps} steps, batch {args.batch}, 1 thread, best of {args.repeats}")
    for name, t in times.items():
        print(f"{name:<17} {t:6.2f} s  {1e3 * t / args.steps:6.3f} ms/step  "
              f"+{1e3 * (t - base) / args.steps:6.3f} ms/step over raw  ({t / base:.2f}x)")


if __name__ == "__main__":
    main()
