"""Data-parallel training (trainer.strategy=ddp, 2 CPU processes, gloo) against one process with the same
global batch: half the samples per rank, the same optimiser steps, one table and one set of files, and the
final accuracy within one point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cl_bench.config import build_plan, load_config
from cl_bench.results import RunResult, load_result
from cl_bench.runner import execute

REAL_MNIST = Path(os.environ.get("CL_BENCH_DATA") or "/nonexistent")
DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def rank_samples(n: int, batch: int, epochs: int) -> list[int]:
    """Samples each of 2 ranks trains on: every global batch of m samples gives rank 0 ceil(m/2) and rank 1
    floor(m/2), both the one sample of a 1-sample batch."""
    sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    per_epoch = [sum((m + 1) // 2 for m in sizes), sum(m // 2 if m > 1 else 1 for m in sizes)]
    return [epochs * s for s in per_epoch]


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def run_both(tmp_path: Path, overrides: list[str]) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """The experiment in this process, then with 2 DDP processes through the command line."""
    one, two = tmp_path / "one", tmp_path / "two"
    plan = build_plan(load_config([*overrides, f"output.dir={one}"]))
    list(execute(plan))
    env = {**os.environ, "CI": "1"}
    proc = subprocess.run([sys.executable, "-m", "cl_bench.cli", "run", *overrides, *DDP, f"output.dir={two}"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, one, two


def check_against_one_process(proc: subprocess.CompletedProcess, one: Path, two: Path, labels: list[str],
                              batch: int, epochs: int) -> dict[str, tuple[float, float]]:
    """Steps, samples per rank, one table and one set of files; returns (1-process, DDP) final accuracy."""
    assert proc.stdout.count("results: ") == 1, proc.stdout
    assert proc.stdout.count("(mean ± std over seeds)") == 1, proc.stdout
    assert [f for f in files_under(two) if f.startswith("runs/")] == [f"runs/class_il/{lb}/seed0.json" for lb in
                                                                     sorted(labels)]
    assert (two / "results.json").is_file() and not list(two.rglob("*.pt"))
    accs = {}
    for label in labels:
        ref = load_result(one / "runs" / "class_il" / label / "seed0.json")
        ddp = load_result(two / "runs" / "class_il" / label / "seed0.json")
        dp = ddp.data_parallel
        assert dp["world_size"] == 2 and dp["batch_size_per_rank"] == batch // 2
        for t, n in enumerate(ddp.task_sizes["train"]):
            assert dp["steps"][t] == epochs * -(-n // batch)  # the config's optimiser steps, on every rank
            assert dp["samples"][t] == rank_samples(n, batch, epochs)  # half of one process's samples each
        assert ref.data_parallel == {}
        assert len(ddp.acc) == len(ref.acc) and ddp.acc_init == ref.acc_init
        accs[label] = (float(ref.metrics["acc"]), float(ddp.metrics["acc"]))
        assert abs(accs[label][0] - accs[label][1]) <= 0.01, accs
        assert abs(ref.metrics["learning_acc"] - ddp.metrics["learning_acc"]) <= 0.01
    return accs


@pytest.mark.slow
def test_ddp_two_ranks_split_digits(tmp_path: Path) -> None:
    overrides = ["strategy=[naive,ewc]", "settings=[class_il]", "trainer.epochs=2", "checks.enabled=false",
                 "sweep.workers=1", "trainer.train_loss_probe=100"]
    proc, one, two = run_both(tmp_path, overrides)
    accs = check_against_one_process(proc, one, two, ["naive", "ewc"], batch=32, epochs=2)
    print("split_digits (1-process, ddp) acc:", accs)


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_MNIST / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file(),
                    reason="needs MNIST under CL_BENCH_DATA")
def test_ddp_two_ranks_reduced_split_mnist(tmp_path: Path) -> None:
    overrides = ["scenario=split_mnist", "scenario.train_subsample=2000", "scenario.test_subsample=500",
                 "strategy=[naive,ewc]", "settings=[class_il]", "trainer.epochs=1", "trainer.batch_size=64",
                 "checks.enabled=false", "sweep.workers=1", "trainer.train_loss_probe=200"]
    proc, one, two = run_both(tmp_path, overrides)
    accs = check_against_one_process(proc, one, two, ["naive", "ewc"], batch=64, epochs=1)
    print("split_mnist (1-process, ddp) acc:", accs)


def _broadcast_rank(rank: int, init: str, out: str) -> None:
    """One rank: a module whose buffers and parameters differ by rank, then rank 0's broadcast."""
    import torch
    import torch.distributed as dist

    from cl_bench.checkpoint import rng_state
    from cl_bench.runner import broadcast_from_lead

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(100 + rank)
    module = torch.nn.Linear(3, 2)
    module.register_buffer("fisher", torch.full((2, 3), float(rank + 1)))
    result = RunResult(run_id=f"r{rank}", label="x", strategy="naive", family="baseline", setting="class_il",
                       seed=0, scenario="s", config={}, config_hash="h", acc=[[float(rank)]])
    (shared,) = broadcast_from_lead(module, [result])
    torch.save({"state": module.state_dict(), "rng": rng_state()["torch"], "draw": torch.rand(4),
                "run_id": shared.run_id, "acc": shared.acc}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_rank_zero_state_results_and_random_state_reach_every_rank(tmp_path: Path) -> None:
    import torch
    import torch.multiprocessing as mp

    mp.start_processes(_broadcast_rank, args=(f"file://{tmp_path / 'init'}", str(tmp_path)), nprocs=2,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.manual_seed(100)
    expected = torch.nn.Linear(3, 2).state_dict()  # rank 0's parameters as its seed drew them
    for key in ("weight", "bias"):
        assert torch.equal(r0["state"][key], expected[key]) and torch.equal(r1["state"][key], expected[key])
    assert torch.equal(r1["state"]["fisher"], torch.ones(2, 3))  # rank 1's own buffer (2.0) replaced
    assert torch.equal(r0["rng"], r1["rng"]) and torch.equal(r0["draw"], r1["draw"])
    assert r1["run_id"] == "r0" and r1["acc"] == [[0.0]]
