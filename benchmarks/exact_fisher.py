"""Cost of the diagonal Fisher on a 2x400 MLP (784-400-400-K): the by-layer form for networks of linear
layers (``linear_fisher``, used by ``diag_fisher`` whenever it applies) against per-sample gradients (any
network), for the exact Fisher (``fisher: exact``; class enumeration, ``exact_fisher_sum``) and for the
Fisher of one label per sample (``fisher: argmax``; ``per_sample_grads``).

    uv run python benchmarks/exact_fisher.py [--samples 2048] [--outputs 2 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from cl_bench.geometry.fisher import exact_fisher_sum, linear_fisher, per_sample_grads
from cl_bench.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--outputs", type=int, nargs="+", default=[2, 10])
    ap.add_argument("--batch", type=int, default=256, help="probe batch size (as strategies' probe_batch_size)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| Fisher | outputs K | samples | per-sample gradients s | by layer s | speed-up | max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k in args.outputs:
        torch.manual_seed(0)
        model = build_model({"name": "mlp", "widths": [400, 400]}, (1, 28, 28), k, [list(range(k))]).eval()
        x = torch.randn(args.samples, 1, 28, 28)
        batches = x.split(args.batch)
        t0 = time.perf_counter()
        slow = sum(exact_fisher_sum(model, xb, model(xb).softmax(-1).detach()) for xb in batches)
        t1 = time.perf_counter()
        fast = sum(linear_fisher(model, xb) for xb in batches)  # type: ignore[misc]
        t2 = time.perf_counter()
        row("exact", k, args.samples, t1 - t0, t2 - t1, fast, slow)
        labels = [model(xb).argmax(1) for xb in batches]
        t0 = time.perf_counter()
        slow = sum(per_sample_grads(model, xb, c).square().sum(0) for xb, c in zip(batches, labels))
        t1 = time.perf_counter()
        fast = sum(linear_fisher(model, xb, c) for xb, c in zip(batches, labels))  # type: ignore[misc]
        t2 = time.perf_counter()
        row("argmax", k, args.samples, t1 - t0, t2 - t1, fast, slow)


def row(kind: str, k: int, n: int, slow_s: float, fast_s: float, fast: torch.Tensor, slow: torch.Tensor) -> None:
    """One table row: the two timings, their ratio and the largest relative difference of the results."""
    diff = float(((fast - slow).abs() / slow.abs().clamp_min(1e-12)).max())
    print(f"| {kind} | {k} | {n} | {slow_s:.2f} | {fast_s:.2f} | {slow_s / fast_s:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
