"""Curvature operators vs brute force (dense float64 torch.func) and vs curvlinops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from curvlinops import GGNLinearOperator, HessianLinearOperator
from test_geometry_toys import (
    single_thread,  # noqa: F401  (autouse fixture)
    toy_module,
    toy_scenario,
)
from torch.func import functional_call

from cl_bench.geometry import (
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
    ParamLayout,
    flat_params,
    make_operator,
    module_objective,
)
from cl_bench.geometry.objective import _Logits


def setup(setting: str = "class_il", head: str = "single", mask: bool = False, batch_size: int | None = 7):
    sc = toy_scenario(setting)
    module = toy_module(sc, head=head, mask=mask)
    task = sc.tasks[1]
    x = (task.x_train.double() / 255 - 0.4) / 0.3
    obj = module_objective(module, x, task.y_train, task.id, batch_size)
    return module, obj, flat_params(module), x, task


def dense_loss(module, x, y, task_id):
    """Brute force: L(theta) through functional_call on the module, no chunking."""
    layout = ParamLayout.of(module)
    t = torch.full((x.shape[0],), task_id)

    def logits(theta):
        params = {f"m.{k}": v for k, v in layout.views(theta).items()}
        return functional_call(_Logits(module, True), params, (x, t))

    return logits, lambda theta: F.cross_entropy(logits(theta), y)


@pytest.mark.parametrize("setting,head,mask", [("class_il", "single", False), ("task_il", "single", True),
                                               ("task_il", "multi", False)])
def test_hessian_operator_matches_dense_hessian(setting, head, mask):
    module, obj, theta, x, task = setup(setting, head, mask)
    _, loss = dense_loss(module, x, task.y_train, task.id)
    h_ref = torch.func.hessian(loss)(theta)
    op = HessianOperator(obj, theta)
    h = op.dense()
    assert op.n_matvec == theta.numel()
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
    assert obj.loss(theta) == pytest.approx(float(loss(theta)), rel=1e-12)


@pytest.mark.parametrize("setting,head,mask", [("class_il", "single", False), ("task_il", "single", True),
                                               ("task_il", "multi", False)])
def test_ggn_operator_matches_dense_jt_h_j(setting, head, mask):
    module, obj, theta, x, task = setup(setting, head, mask)
    logits, _ = dense_loss(module, x, task.y_train, task.id)
    z = logits(theta)
    keep = torch.isfinite(z).all(0)  # masked (-inf) outputs carry no curvature
    jac = torch.func.jacrev(logits)(theta)[:, keep]  # [N, C, P]
    p = z[:, keep].softmax(1)
    h_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # d^2 CE / dz^2
    g_ref = torch.einsum("ncp,ncd,ndq->pq", jac, h_out, jac) / x.shape[0]
    torch.testing.assert_close(GGNOperator(obj, theta).dense(), g_ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(make_operator("fisher", obj, theta).dense(), GGNOperator(obj, theta).dense())


def test_empirical_fisher_matches_per_sample_gradients():
    module, obj, theta, x, task = setup()
    logits, _ = dense_loss(module, x, task.y_train, task.id)
    losses = lambda th: F.cross_entropy(logits(th), task.y_train, reduction="none")  # noqa: E731
    g = torch.func.jacrev(losses)(theta)  # per-sample gradients [N, P]
    f_ref = g.T @ g / x.shape[0]
    torch.testing.assert_close(EmpiricalFisherOperator(obj, theta).dense(), f_ref, rtol=1e-10, atol=1e-12)


def test_operators_agree_with_curvlinops():
    """An independent implementation of the same matrices (curvlinops) on the same model and data."""
    module, obj, theta, x, task = setup(batch_size=None)
    layout = ParamLayout.of(module)
    t = torch.full((x.shape[0],), task.id)

    class Net(torch.nn.Module):  # curvlinops wants model(X): bind the task ids
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, xb):
            return self.m.train_logits(xb, t[: xb.shape[0]])

    net = Net()
    params = [p for p in net.parameters()]
    data = [(x, task.y_train)]
    loss_fn = torch.nn.CrossEntropyLoss()
    v = torch.randn(layout.dim, dtype=torch.float64)
    h_cl = HessianLinearOperator(net, loss_fn, params, data) @ v
    g_cl = GGNLinearOperator(net, loss_fn, params, data) @ v
    torch.testing.assert_close(HessianOperator(obj, theta).matvec(v), h_cl, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(GGNOperator(obj, theta).matvec(v), g_cl, rtol=1e-9, atol=1e-12)


def test_operator_leaves_module_untouched_and_rejects_bad_input():
    module, obj, theta, _, _ = setup()
    before = [p.detach().clone() for p in module.parameters()]
    op = HessianOperator(obj, theta + 0.1)
    op.matvec(torch.ones_like(theta))
    assert all(torch.equal(a, p) for a, p in zip(before, module.parameters()))
    with pytest.raises(ValueError, match="matvec needs a vector of shape"):
        op.matvec(torch.ones(3, dtype=theta.dtype))
    with pytest.raises(ValueError, match="curvature='newton'"):
        make_operator("newton", obj, theta)
    with pytest.raises(ValueError, match="exceeds max_dim"):
        op.dense(max_dim=10)


@pytest.mark.parametrize("setting,head,mask", [("class_il", "single", False), ("task_il", "single", True),
                                               ("task_il", "multi", False)])
@pytest.mark.parametrize("rows", [1 << 16, 9])  # one pass; a pass of one point (rows < chunk size 7 x 2)
def test_batched_losses_and_hvps_along_directions_match_dense(setting, head, mask, rows, monkeypatch):
    import cl_bench.geometry.objective as objective

    monkeypatch.setattr(objective, "BATCHED_ROWS", rows)
    module, obj, theta, x, task = setup(setting, head, mask)
    _, loss = dense_loss(module, x, task.y_train, task.id)
    gen = torch.Generator().manual_seed(3)
    dirs = torch.randn(3, theta.numel(), generator=gen, dtype=torch.float64)
    steps = torch.tensor([0.0, 0.3, -0.3, 1.5], dtype=torch.float64)
    losses, hvps = obj.losses_along(theta, dirs, steps), obj.hvps_along(theta, dirs, steps)
    assert losses.shape == (4, 3) and hvps.shape == (4, 3, theta.numel())
    for i, s in enumerate(steps):
        for j, u in enumerate(dirs):
            point = theta + s * u
            assert float(losses[i, j]) == pytest.approx(float(loss(point)), rel=1e-12)
            torch.testing.assert_close(hvps[i, j], torch.func.hessian(loss)(point) @ u, rtol=1e-10, atol=1e-12)
    assert theta.equal(flat_params(module))  # the module's parameters untouched
