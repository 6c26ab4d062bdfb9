"""Exact curvature energy of the null-space projections on task-IL Split-Digits.

Re-runs one label of ``configs/experiment/isolation_digits_sameprobe.yaml`` with cl-bench's own runner
(checks off; training does not depend on them), keeps theta_o* after every task and computes, in
float64 with dense matrices (P = 4650), for every pair o < t with D = theta_t - theta_o* on the whole
training set of task o:

- H_o (``torch.func.hessian``) and the Gauss-Newton matrix G_o = J^T (diag p - p p^T) J (J from
  ``torch.func.jacrev``), their exact traces and lambda_1;
- C3's rho = D^T H_o D / (lambda_1 ||D||^2) and the random-direction value tr H_o / (P lambda_1);
- the split D^T H_o D = D^T G_o D + D^T (H_o - G_o) D, and ||J_o D|| / (||J_o||_2 ||D||).

OGD's theory (Farajtabar et al. 2020) protects f(x) on the stored samples, i.e. J_o D = 0, hence
D^T G_o D = 0; this script measures how much of the past task's Hessian energy is left in the
residual term sum_n (dl/df_n) d^2 f_n, which no output-gradient memory sees.

    uv run python reports/verification/projection_energy_digits.py LABEL SEED
"""
from __future__ import annotations

import copy
import sys

import torch
from torch.func import hessian, jacrev

from cl_bench.config import build_plan, load_config
from cl_bench.data.batching import iterate_eval
from cl_bench.geometry.objective import flat_params, module_objective
from cl_bench.runner import load_scenario, run_one


def main(label: str, seed: int) -> None:
    cfg = load_config(["experiment=isolation_digits_sameprobe", f"strategy=[{label}]", f"seeds=[{seed}]",
                       "checks.enabled=false"])
    spec = build_plan(cfg).runs[0]
    scenario = load_scenario(spec)
    anchors: dict[int, torch.Tensor] = {}
    trained = []

    def keep(_spec, t: int, module) -> None:
        anchors[t] = flat_params(module).double()
        trained[:] = [module]

    result = run_one(spec, scenario, on_task_end=keep)
    print(f"{label} seed {seed}: final row acc {[round(a, 4) for a in result.acc[-1]]}")
    net = copy.deepcopy(trained[0]).double().eval()  # only its structure is used: theta is passed in
    P = anchors[0].numel()
    print(f"{'o':>2} {'t':>2} {'|D|':>7} {'lam1':>8} {'trH/P':>9} {'rho':>10} {'rho/rnd':>8} "
          f"{'DtGD/DtHD':>10} {'|JD|/|J||D|':>11}")
    for o, task in enumerate(scenario.tasks[:-1]):
        x, y = next(iterate_eval(task.x_train, task.y_train, task.n_train, "cpu", scenario.mean, scenario.std))
        obj = module_objective(net, x.double(), y, o)
        th = anchors[o]
        H = hessian(lambda v: obj.chunk_loss(v, obj.x, obj.y))(th)
        J = jacrev(lambda v: obj.forward(v, obj.x))(th)  # [N, C, P]; masked logits have zero rows
        p = torch.softmax(obj.forward(th, obj.x), -1)
        Hout = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / obj.n
        G = torch.einsum("ncp,ncd,ndq->pq", J, Hout, J)
        lam1 = float(torch.linalg.eigvalsh(H)[-1])
        rnd = float(H.trace()) / P / lam1
        Jflat = J.reshape(-1, P)
        jnorm = float(torch.linalg.matrix_norm(Jflat, 2))
        for t in range(o + 1, len(scenario.tasks)):
            D = anchors[t] - th
            dn = float(D.norm())
            dhd, dgd = float(D @ H @ D), float(D @ G @ D)
            rho = dhd / (lam1 * dn ** 2)
            print(f"{o:>2} {t:>2} {dn:7.3f} {lam1:8.4f} {rnd * lam1:9.2e} {rho:10.3e} {rho / rnd:8.3f} "
                  f"{dgd / dhd:10.3e} {float((Jflat @ D).norm()) / (jnorm * dn):11.3e}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
