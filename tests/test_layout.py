"""One parameter layout for every registered strategy: the trainable network, no frozen copies."""

from __future__ import annotations

import pytest
import torch

from cl_bench.config import build_plan, load_config
from cl_bench.layout import ParamLayout, flat_params, flatten, grad_vector, layout_mask, unflatten, write_grad
from cl_bench.registry import strategy_names
from cl_bench.runner import build_module, load_scenario

SETTINGS = ("class_il", "task_il")


def built(strategy: str, setting: str):
    plan = build_plan(load_config([
        "scenario=split_digits", "scenario.n_tasks=3", f"strategy={strategy}", f"settings=[{setting}]",
        "checks.enabled=false",
    ]))
    spec = plan.runs[0]
    return build_module(spec, load_scenario(spec))


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("strategy", strategy_names())
def test_the_layout_is_the_network_without_frozen_copies(strategy: str, setting: str) -> None:
    module = built(strategy, setting)
    layout = ParamLayout.of(module)
    copies = tuple(f"{c}." for c in module.frozen_copies)
    expected = [n for n, _ in module.named_parameters() if not n.startswith(copies)]
    assert list(layout.names) == expected
    assert all(n.startswith("backbone.") or n.startswith("embeddings.") for n in layout.names)  # HAT: its gates
    assert flat_params(module).shape == (layout.dim,)
    assert [p for p in module.network()] == [dict(module.named_parameters())[n] for n in layout.names]
    if strategy in ("lwf", "icarl"):  # the teacher is a frozen copy, outside the layout
        assert module.frozen_copies == ("old_backbone",)
        assert layout.dim == sum(p.numel() for p in module.backbone.parameters())
    mask = module.isolated_mask(0)
    if strategy in ("packnet", "hat") and setting == "task_il":
        assert mask is not None and mask.dtype == torch.bool and mask.shape == (layout.dim,)
    else:
        assert mask is None


def test_flatten_unflatten_and_gradient_vectors_round_trip() -> None:
    module = built("naive", "class_il")
    params = module.network()
    theta = flat_params(module)
    assert all(torch.equal(a, b) for a, b in zip(unflatten(theta, params), params))
    assert torch.equal(flatten(ParamLayout.of(module).views(theta)), theta)
    g = torch.randn_like(theta)
    write_grad(params, g)
    assert torch.equal(grad_vector(params), g)
    names = ParamLayout.of(module).names
    mask = layout_mask(module, {names[0]: torch.ones_like(params[0], dtype=torch.bool)})
    assert int(mask.sum()) == params[0].numel() and bool(mask[: params[0].numel()].all())


@pytest.mark.parametrize("strategy", ["packnet", "hat"])
def test_task_il_isolation_masks_cover_everything_a_past_task_reads(strategy: str) -> None:
    """Declared at the end of task o, through the runner's Trainer: D restricted to the mask is exactly 0
    and task o's evaluated outputs are bit-identical after later tasks."""
    from cl_bench.runner import run_one

    plan = build_plan(load_config([
        "scenario=split_digits", "scenario.n_tasks=3", f"strategy={strategy}", "settings=[task_il]",
        "checks.enabled=false", "trainer.epochs=2",
    ]))
    spec = plan.runs[0]
    scenario = load_scenario(spec)
    x0 = scenario.tasks[0].x_test.float() / 16  # split_digits pixels lie in 0..16
    ids0 = torch.zeros(len(x0), dtype=torch.long)
    seen: dict[int, tuple] = {}

    def record(_spec, t: int, module) -> None:
        module.eval()
        seen[t] = (module.isolated_mask(t), flat_params(module), module.eval_logits(x0, ids0))
        module.train()

    result = run_one(spec, scenario, on_task_end=record)
    mask0, theta0, out0 = seen[0]
    _, theta2, out2 = seen[2]
    assert 0 < int(mask0.sum()) < mask0.numel()
    assert torch.equal(theta2[mask0], theta0[mask0])
    assert not torch.equal(theta2[~mask0], theta0[~mask0])  # later tasks did train the rest
    assert torch.equal(out2, out0)
    assert result.acc[2][0] == result.acc[0][0]
