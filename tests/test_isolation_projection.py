"""OGD, GPM and orthogonal SGD: the stored bases against brute force (per-sample output gradients,
hand-made layer representations, the exact Hessian's eigenvectors), projected gradients orthogonal to
them, state-dict round trips and errors. Leakage during real training: test_isolation_leakage.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_isolation_core import (
    STRATEGIES,
    all_inputs,
    build,
    dense_projector,
    fit_task,
    flat,
    grad_vector,
    protected_share,
    toy_scenario,
)
from torch import Tensor

from cl_bench.config import ConfigError, to_dataclass
from cl_bench.models import build_model
from strategies.isolation import (
    GPM,
    OGD,
    GPMParams,
    OGDParams,
    OrthogonalSGD,
    OrthogonalSGDParams,
    ProjectionParams,
)


# ------------------------------------------------------------------ the stored bases
@pytest.mark.parametrize("variant", ["all_logits", "ground_truth", "average"])
def test_ogd_stores_the_span_of_per_sample_output_gradients(variant: str) -> None:
    module = build(OGD, OGDParams(variant=variant, samples=10)).double()
    task = module.scenario.tasks[1]
    torch.manual_seed(5)
    idx = torch.randperm(task.n_train)[:10]
    x, y = all_inputs(module, task)
    x, y = x[idx], y[idx]
    module.eval()
    rows = []
    for i in range(10):  # brute force: one sample, one output combination at a time
        z = module.train_logits(x[i:i + 1], torch.tensor([task.id]))[0]
        if variant == "all_logits":
            rows += [grad_vector(module, z[k]) for k in task.classes]
        elif variant == "ground_truth":
            rows.append(grad_vector(module, z[y[i]]))
        else:
            rows.append(grad_vector(module, z[task.classes].mean()))
    brute = torch.stack(rows, dim=1)
    module.train()
    torch.manual_seed(5)
    module.after_task(task)
    assert module.basis.shape[1] == int(torch.linalg.matrix_rank(brute))
    torch.testing.assert_close(module.basis @ module.basis.T, dense_projector(brute), atol=1e-10, rtol=0)


def test_gpm_bases_span_the_hand_made_layer_representations() -> None:
    module = build(GPM, GPMParams(threshold=0.9, samples=1000)).double()
    task = module.scenario.tasks[0]
    module.after_task(task)
    x, _ = all_inputs(module, task)
    h1 = x.flatten(1)
    lin1, lin2, head = module.backbone.body[1], module.backbone.body[3], module.backbone.head
    h2 = torch.tanh(lin1(h1))
    h3 = torch.tanh(lin2(h2))
    ones = torch.ones(len(x), 1, dtype=torch.float64)
    for l, h in enumerate((h1, h2, h3)):
        reps = torch.cat([h, ones], dim=1).T  # [x; 1] per column
        u, s, _ = torch.linalg.svd(reps, full_matrices=False)
        energy = s.square().cumsum(0) / s.square().sum()
        k = int((energy < 0.9).sum()) + 1
        assert module.basis(l).shape[1] == k
        torch.testing.assert_close(module.basis(l) @ module.basis(l).T, u[:, :k] @ u[:, :k].T, atol=1e-10, rtol=0)
    assert [lin for lin in module.layers] == [lin1, lin2, head]


def test_orthogonal_sgd_basis_is_the_top_k_eigenspace_of_the_exact_hessian() -> None:
    module = build(OrthogonalSGD, OrthogonalSGDParams(k=3, samples=1000, lanczos_tol=1e-10)).double()
    task = module.scenario.tasks[0]
    x, y = all_inputs(module, task)
    names = [n for n, _ in module.backbone.named_parameters()]
    shapes = [p.shape for p in module.backbone.parameters()]
    theta = flat(module)

    def loss(th: Tensor) -> Tensor:
        params = dict(zip(names, (c.view(s) for c, s in zip(th.split([s.numel() for s in shapes]), shapes))))
        return F.cross_entropy(torch.func.functional_call(module.backbone, params, (x, torch.full_like(y, 0))), y)

    evals, evecs = torch.linalg.eigh(torch.func.hessian(loss)(theta))
    top = evecs[:, -3:]
    module.after_task(task)
    assert module.basis.shape == (theta.numel(), 3)
    torch.testing.assert_close(module.basis @ module.basis.T, top @ top.T, atol=1e-6, rtol=0)


# ------------------------------------------------------------------ projection
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_projected_gradient_is_orthogonal_to_the_stored_basis(name: str) -> None:
    cls, params = STRATEGIES[name]
    module = build(cls, params)
    fit_task(module, module.scenario.tasks[0])
    assert module.has_basis()
    g = torch.Generator().manual_seed(0)
    raw = []
    for p in module.projected_parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        raw.append(p.grad.clone())
    module.transform_gradients()
    projected = torch.cat([p.grad.reshape(-1) for p in module.projected_parameters()])
    raw = torch.cat([r.reshape(-1) for r in raw])
    assert protected_share(module, projected) < 1e-12
    # only the protected part was removed: raw - projected lies in the stored span
    assert protected_share(module, raw - projected) == pytest.approx(1.0, abs=1e-10)


# ------------------------------------------------------------------ checkpoints and errors
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_state_dict_round_trip_restores_the_grown_bases(name: str) -> None:
    cls, params = STRATEGIES[name]
    module = build(cls, params)
    for task in module.scenario.tasks[:2]:
        fit_task(module, task, epochs=1)
    state = module.state_dict()
    fresh = build(cls, params).double()
    assert not fresh.has_basis()
    fresh.load_state_dict(state)
    for (n, a), (_, b) in zip(module.named_buffers(), fresh.named_buffers()):
        assert torch.equal(a, b), n
    assert fresh.state_bytes() == module.state_bytes() > 0
    v = [torch.randn_like(p) for p in module.projected_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(module.project(v), fresh.project(v)))


def test_bad_hyper_parameters_name_the_key() -> None:
    cases = [
        (OGDParams, {"variant": "logits"}, r"variant='logits' is not valid"),
        (ProjectionParams, {"project": "both"}, r"project='both' is not valid"),
        (GPMParams, {"threshold": 1.5}, r"threshold must lie in \(0, 1\]"),
        (OrthogonalSGDParams, {"curvature": "fisher"}, r"curvature='fisher' is not valid"),
        (OrthogonalSGDParams, {"k": 0}, r"k must be >= 1"),
    ]
    for cls, data, message in cases:
        with pytest.raises(ConfigError, match=message):
            to_dataclass(cls, data, "strategies.x")
    sc = toy_scenario()
    with pytest.raises(ValueError, match=r"gpm here protects Linear layers only"):
        GPM(build_model({"name": "cnn"}, (1, 8, 8), sc.n_outputs, sc.task_classes()), sc)
