"""Cost of the curvature snapshot: top-10 Hessian eigenpairs of the 2x400 MLP on 2000 MNIST probes.

Three numbers, on the same model, probes and device:
1. cl-bench Lanczos (``cl_bench.geometry.lanczos`` on ``HessianOperator``): seconds, products, convergence;
2. the same number of Hessian-vector products alone (target: Lanczos <= 1.5x this);
3. curvlinops ``HessianLinearOperator`` + ``scipy.sparse.linalg.eigsh(which="LA")`` on the same Hessian.
The MLP is first trained briefly on Split-MNIST task 0 (digits 0/1), so its Hessian has the usual outliers.
Without MNIST files (``CL_BENCH_DATA``: the folder holding ``MNIST/raw``) it falls back to digit-shaped
random data and says so.

    CL_BENCH_DATA=$CL_BENCH_DATA uv run python benchmarks/geometry_cost.py [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from curvlinops import HessianLinearOperator
from scipy.sparse.linalg import LinearOperator, eigsh

from cl_bench.data import DatasetNotFoundError, Scenario, Task, build_scenario, iterate_eval
from cl_bench.geometry import HessianOperator, flat_params, lanczos, module_objective
from cl_bench.models import build_model
from cl_bench.module import ContinualModule

MODEL = {"name": "mlp", "widths": [400, 400], "activation": "relu", "head": "single"}
SCENARIO = {"name": "split_mnist", "kind": "split", "source": "mnist", "setting": "class_il", "n_tasks": 5,
            "classes_per_task": 2, "seed": 0}


def load() -> tuple[Scenario, str]:
    try:
        return build_scenario(SCENARIO), "MNIST"
    except DatasetNotFoundError:
        gen = torch.Generator().manual_seed(0)
        y = torch.randint(0, 2, (4000,), generator=gen)
        x = (torch.rand(4000, 1, 28, 28, generator=gen) * 255 * (0.5 + 0.5 * y.view(-1, 1, 1, 1))).to(torch.uint8)
        task = Task(0, [0, 1], x, y, x[:500], y[:500])
        return Scenario("random", "class_il", [task], 10, (1, 28, 28), (0.1307,), (0.3081,)), "random (no MNIST)"


def train_briefly(module: ContinualModule, scenario: Scenario, device: str, steps: int = 200) -> None:
    task = scenario.tasks[0]
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    x_all = next(iterate_eval(task.x_train, task.y_train, task.n_train, device, scenario.mean, scenario.std))
    for _ in range(steps):
        idx = torch.randint(0, task.n_train, (128,), generator=gen).to(device)
        loss = F.cross_entropy(module(x_all[0][idx]), x_all[1][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--probes", type=int, default=2000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--tol", type=float, default=1e-3, help="Lanczos: residual <= tol |lambda_1|; eigsh: its tol")
    ap.add_argument("--max-iter", type=int, default=150)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    scenario, source = load()
    torch.manual_seed(0)
    backbone = build_model(MODEL, scenario.input_shape, scenario.n_outputs, scenario.task_classes())
    module = ContinualModule(backbone, scenario).to(dev)
    train_briefly(module, scenario, dev)
    module.eval()
    task = scenario.tasks[0]
    idx = torch.randperm(task.n_train, generator=torch.Generator().manual_seed(1))[: args.probes]
    x, y = next(iterate_eval(task.x_train[idx], task.y_train[idx], len(idx), dev, scenario.mean, scenario.std))
    theta = flat_params(module)
    p = theta.numel()
    print(f"data: {source}; device: {dev}; threads: {torch.get_num_threads()}; P = {p}; probes = {len(idx)}; "
          f"k = {args.k}; tol = {args.tol}")

    # 1. cl-bench: operator (graph built once) + Lanczos
    obj = module_objective(module, x, y, 0)
    sync(dev)
    t0 = time.perf_counter()
    op = HessianOperator(obj, theta)
    res = lanczos(op.matvec, p, args.k, max_iter=args.max_iter, tol=args.tol, with_min=False, device=dev)
    sync(dev)
    t_lanczos = time.perf_counter() - t0

    # 2. the same number of products alone (same operator construction, random vectors)
    vecs = torch.randn(res.n_matvec, p, device=dev)
    sync(dev)
    t0 = time.perf_counter()
    op2 = HessianOperator(obj, theta)
    for v in vecs:
        op2.matvec(v)
    sync(dev)
    t_hvp = time.perf_counter() - t0

    # 3. curvlinops + scipy eigsh (ARPACK, implicitly restarted Lanczos) on the same Hessian
    t_ids = torch.zeros(len(idx), dtype=torch.long, device=dev)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = module

        def forward(self, xb: torch.Tensor) -> torch.Tensor:
            return self.m.train_logits(xb, t_ids[: xb.shape[0]])

    net = Net()
    count = {"n": 0}
    sync(dev)
    t0 = time.perf_counter()
    h_cl = HessianLinearOperator(net, torch.nn.CrossEntropyLoss(), list(net.parameters()), [(x, y)],
                                 check_deterministic=False).to_scipy()

    def matvec(v: np.ndarray) -> np.ndarray:  # count the products eigsh asks for
        count["n"] += 1
        return h_cl.matvec(v)

    lin = LinearOperator(h_cl.shape, matvec=matvec, dtype=np.float32)
    ev_cl = np.sort(eigsh(lin, k=args.k, which="LA", tol=args.tol, return_eigenvectors=True)[0])[::-1]
    t_cl = time.perf_counter() - t0

    ours = res.eigvals.cpu().double().numpy()
    rel = np.abs(ours - ev_cl) / np.abs(ev_cl).max()
    print(f"{'method':<40} {'seconds':>8} {'products':>9} {'ratio':>7}")
    print(f"{'HVPs alone (cl-bench operator)':<40} {t_hvp:8.2f} {res.n_matvec:9d} {1.0:7.2f}")
    print(f"{'cl-bench Lanczos (torch, full reorth.)':<40} {t_lanczos:8.2f} {res.n_matvec:9d} {t_lanczos / t_hvp:7.2f}")
    print(f"{'curvlinops + scipy eigsh (LA)':<40} {t_cl:8.2f} {count['n']:9d} {t_cl / t_hvp:7.2f}")
    print(f"Lanczos converged: {res.converged}; top eigenvalues: {np.round(ours[:5], 4).tolist()}")
    print(f"eigsh   top eigenvalues: {np.round(ev_cl[:5].astype(float), 4).tolist()}")
    print(f"max |ours - eigsh| / lambda_1 over the top {args.k}: {rel.max():.2e}")


if __name__ == "__main__":
    main()
