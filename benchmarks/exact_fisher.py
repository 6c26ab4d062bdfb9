"""Cost of the exact diagonal Fisher (``fisher: exact``): class enumeration with per-sample per-class
gradients (``exact_fisher_sum``, any network) against the by-layer form for networks of linear layers
(``linear_exact_fisher``, used by ``diag_fisher`` whenever it applies), on a 2x400 MLP (784-400-400-K).

    uv run python benchmarks/exact_fisher.py [--samples 2048] [--outputs 2 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from cl_bench.geometry.fisher import exact_fisher_sum, linear_exact_fisher
from cl_bench.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--outputs", type=int, nargs="+", default=[2, 10])
    ap.add_argument("--batch", type=int, default=256, help="probe batch size (as strategies' probe_batch_size)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| outputs K | samples | enumeration s | by layer s | speed-up | max rel. diff |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k in args.outputs:
        torch.manual_seed(0)
        model = build_model({"name": "mlp", "widths": [400, 400]}, (1, 28, 28), k, [list(range(k))]).eval()
        x = torch.randn(args.samples, 1, 28, 28)
        batches = x.split(args.batch)
        t0 = time.perf_counter()
        slow = sum(exact_fisher_sum(model, xb, model(xb).softmax(-1).detach()) for xb in batches)
        t1 = time.perf_counter()
        fast = sum(linear_exact_fisher(model, xb) for xb in batches)  # type: ignore[misc]
        t2 = time.perf_counter()
        diff = float(((fast - slow).abs() / slow.abs().clamp_min(1e-12)).max())
        print(f"| {k} | {args.samples} | {t1 - t0:.2f} | {t2 - t1:.2f} | {(t1 - t0) / (t2 - t1):.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
