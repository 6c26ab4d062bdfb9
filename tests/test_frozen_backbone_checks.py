"""A frozen torchvision feature extractor trained with EWC and the guarantee checks on: the run works, the
frozen parameters never move, and the checks measure the drift D as the head's alone."""

from __future__ import annotations

import pytest
import torch

from cl_bench.config import build_plan, load_config
from cl_bench.layout import network_parameters
from cl_bench.runner import load_scenario, run_group, seeded_module

RUN = ["scenario.n_tasks=2", "trainer.epochs=1", "trainer.train_loss_probe=50", "strategy=ewc", "settings=[class_il]",
       "model=torchvision", "model.torchvision=shufflenet_v2_x0_5", "model.freeze=true",
       "strategies.ewc.samples=64", "strategies.ewc.lam=100",
       "checks.enabled=true", "checks.k=2", "checks.probe_size=64", "checks.lanczos_iters=8",
       "checks.hutchinson_probes=2", "checks.which=[C0,C1,C2,C8,C10]", "checks.lipschitz_radii=[0.01,0.1]",
       "checks.lipschitz_power=0"]


@pytest.mark.slow
def test_frozen_torchvision_backbone_with_ewc_and_checks() -> None:
    spec = build_plan(load_config(RUN)).runs[0]
    scenario = load_scenario(spec)
    initial, _ = seeded_module(spec, scenario)  # the network run_group starts from (same seed)
    frozen = [n for n, p in network_parameters(initial) if not p.requires_grad]
    trained = [n for n, p in network_parameters(initial) if p.requires_grad]
    assert len(frozen) > 100 and trained == ["backbone.head.weight", "backbone.head.bias"]
    body = {k: v.clone() for k, v in initial.state_dict().items() if k.startswith("backbone.body.")}
    params: list[dict[str, torch.Tensor]] = []
    states: list[dict[str, torch.Tensor]] = []

    def keep(_spec, _task, module) -> None:
        params.append({n: p.detach().clone() for n, p in network_parameters(module)})
        states.append({k: v.clone() for k, v in module.state_dict().items()})

    (result,) = run_group([spec], [scenario], on_task_end=keep)
    assert result.status == "ok", result.error
    assert len(states) == 2 and len(body) > len(frozen)  # weights and BatchNorm statistics
    for state in states:  # the feature extractor: bit-identical after each task
        assert all(torch.equal(state[k], v) for k, v in body.items())
    assert not torch.equal(params[0]["backbone.head.weight"], params[1]["backbone.head.weight"])
    # EWC's Fisher of task 0 weighs the head (the frozen coordinates cannot move: their weight never acts)
    fisher = states[1]["curv_diag"][0]
    n_head = sum(params[0][n].numel() for n in trained)
    assert fisher.shape[0] == sum(p.numel() for p in params[0].values()) and float(fisher[-n_head:].sum()) > 0

    checks = result.checks
    assert checks["certificate"]["n_pairs"] == 1 and checks["certificate"]["pairs"][0]["o"] == 0
    assert [s["n_params"] for s in checks["snapshots"]] == [fisher.shape[0]] * 2  # frozen ones in the layout
    (c10,) = [r for r in checks["records"] if r["id"] == "C10"]
    head_drift = torch.cat([(params[1][n] - params[0][n]).flatten() for n in trained]).norm().item()
    assert c10["values"]["distance"] == pytest.approx(head_drift, rel=1e-5) and head_drift > 0
    (c2,) = [r for r in checks["records"] if r["id"] == "C2"]
    measured = checks["certificate"]["pairs"][0]["measured"]
    assert c2["values"]["forgetting"] == pytest.approx(measured) and c2["values"]["loss_o"] == pytest.approx(
        checks["snapshots"][0]["loss"])
