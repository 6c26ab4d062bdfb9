"""Curvature primitives against their brute-force definitions (float64, per-sample loops in the test only)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_bench.geometry.fisher import (
    SymmetricGram,
    TaskOutputs,
    dense_curvature,
    dense_ggn,
    dense_hessian,
    diag_fisher,
    exact_fisher_sum,
    linear_fisher,
    mas_importance,
)
from cl_bench.geometry.kfac import kfac_factors, kron_quadratic, layer_delta, linear_blocks
from cl_bench.layout import ParamLayout, detached, flatten
from cl_bench.models import build_model

TASKS = [[0, 1, 2], [3, 4, 5]]


def tiny(head: str = "single", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model({"name": "mlp", "widths": [4], "activation": "tanh", "head": head}, (1, 2, 3), 6, TASKS).double()


def data(n: int = 10, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 2, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def batches(x: Tensor, y: Tensor, size: int = 4) -> list[tuple[Tensor, Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def params_of(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def grad_of(scalar: Tensor, model: nn.Module) -> Tensor:
    grads = torch.autograd.grad(scalar, params_of(model), allow_unused=True, retain_graph=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params_of(model))])


def brute_fisher(model: nn.Module, x: Tensor, weight) -> Tensor:
    """1/N sum_i sum_c weight(i, c, p_i) * g_ic^2, one sample and one class at a time."""
    total = 0
    for i in range(len(x)):
        logp = model(x[i:i + 1]).log_softmax(-1)[0]
        p = logp.detach().exp()
        for c in range(len(p)):
            w = weight(i, c, p)
            if w != 0:
                total = total + w * grad_of(logp[c], model).square()
    return total / len(x)


@pytest.mark.parametrize("head", ["single", "multi"])
def test_exact_fisher_enumerates_classes(head: str) -> None:
    model = TaskOutputs(tiny(head), 1, TASKS[1] if head == "multi" else None)
    x, y = data()
    got = diag_fisher(model, batches(x, y), "exact")
    want = brute_fisher(model, x, lambda i, c, p: p[c])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if head == "multi":  # the other task's head takes no part
        other = [n for n in detached(model) if n.startswith("net.head.heads.0")]
        start = list(detached(model)).index(other[0])
        sizes = [v.numel() for v in detached(model).values()]
        off = sum(sizes[:start])
        assert got[off:off + sizes[start] + sizes[start + 1]].abs().max() == 0


def test_empirical_and_weighted_fisher_use_the_true_labels() -> None:
    model = TaskOutputs(tiny(), 0, None)
    x, y = data()
    emp = diag_fisher(model, batches(x, y), "empirical")
    torch.testing.assert_close(emp, brute_fisher(model, x, lambda i, c, p: float(c == y[i])), rtol=1e-10, atol=1e-12)
    wtd = diag_fisher(model, batches(x, y), "empirical_weighted")
    torch.testing.assert_close(wtd, brute_fisher(model, x, lambda i, c, p: p[c] * (c == y[i])), rtol=1e-10, atol=1e-12)


def test_batch_fisher_is_the_mean_squared_minibatch_gradient() -> None:
    """Avalanche's estimator: one squared gradient of the minibatch-mean log-likelihood per minibatch."""
    model = TaskOutputs(tiny(), 0, None)
    x, y = data(7)
    parts = batches(x, y, 3)  # minibatches of 3, 3, 1: averaged over minibatches, not samples
    got = diag_fisher(model, parts, "batch")
    want = sum(grad_of(model(xb).log_softmax(-1).gather(1, yb[:, None]).mean(), model).square()
               for xb, yb in parts) / len(parts)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # minibatches of one sample: the empirical Fisher
    torch.testing.assert_close(diag_fisher(model, batches(x, y, 1), "batch"),
                               diag_fisher(model, batches(x, y), "empirical"), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got, diag_fisher(model, batches(x, y), "empirical"))


def test_sampled_fisher_uses_model_labels_and_is_unbiased() -> None:
    model = TaskOutputs(tiny(), 0, None)
    x, y = data()
    got = diag_fisher(model, batches(x, y), "sampled", torch.Generator().manual_seed(7))
    gen, labels = torch.Generator().manual_seed(7), []
    for xb, _ in batches(x, y):  # the same draws, replayed
        labels += torch.multinomial(model(xb).detach().softmax(-1), 1, generator=gen).squeeze(1).tolist()
    torch.testing.assert_close(got, brute_fisher(model, x, lambda i, c, p: float(c == labels[i])),
                               rtol=1e-10, atol=1e-12)
    # one label per sample is a Monte-Carlo estimate of the exact Fisher: average many draws
    xr, yr = x.repeat(400, 1, 1, 1), y.repeat(400)
    mc = diag_fisher(model, batches(xr, yr, 1000), "sampled", torch.Generator().manual_seed(0))
    exact = diag_fisher(model, batches(x, y), "exact")
    assert (mc - exact).norm() / exact.norm() < 0.05


def test_mas_is_mean_abs_gradient_of_squared_output_norm() -> None:
    model = TaskOutputs(tiny("multi"), 0, TASKS[0])
    x, y = data()
    want = sum(grad_of(model(x[i:i + 1]).square().sum(), model).abs() for i in range(len(x))) / len(x)
    torch.testing.assert_close(mas_importance(model, batches(x, y)), want, rtol=1e-10, atol=1e-12)


def test_unknown_fisher_kind_names_the_key() -> None:
    model = TaskOutputs(tiny(), 0, None)
    with pytest.raises(ValueError, match="fisher='diag'.*exact"):
        diag_fisher(model, batches(*data()), "diag")
    with pytest.raises(ValueError, match="curvature='full'"):
        dense_curvature(model, batches(*data()), "full")


# ------------------------------------------------------------------ dense
def full_batch_loss(model: nn.Module, x: Tensor, y: Tensor, loss_fn=F.cross_entropy):
    layout = ParamLayout.of(model)
    return lambda th: loss_fn(torch.func.functional_call(model, layout.views(th), (x,)), y), flatten(detached(model))


def test_dense_hessian_accumulates_batches_to_the_full_batch_hessian() -> None:
    model = TaskOutputs(tiny(), 0, TASKS[0])
    x, y = data(11)
    loss, theta = full_batch_loss(model, x, y)
    torch.testing.assert_close(dense_hessian(model, batches(x, y, 4)), torch.func.hessian(loss)(theta),
                               rtol=1e-9, atol=1e-12)


def test_dense_ggn_is_jt_h_j_and_its_diagonal_is_the_exact_fisher() -> None:
    model = TaskOutputs(tiny(), 0, None)
    x, y = data(7)
    ggn = dense_ggn(model, batches(x, y, 3))
    want = 0
    for i in range(len(x)):
        z = model(x[i:i + 1])[0]
        jac = torch.stack([grad_of(z[k], model) for k in range(len(z))])  # [K, P]
        p = z.detach().softmax(-1)
        want = want + jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac
    torch.testing.assert_close(ggn, want / len(x), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.diagonal(ggn), diag_fisher(model, batches(x, y), "exact"), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("dim", "blocks"), [(23, 8), (5, 8), (1, 8), (12, 1)])
def test_symmetric_gram_equals_the_full_products_and_is_exactly_symmetric(dim: int, blocks: int) -> None:
    gen = torch.Generator().manual_seed(dim)
    gram, want = SymmetricGram(dim, blocks), torch.zeros(dim, dim, dtype=torch.float64)
    for rows in (4, 9):
        a = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
        c = torch.randn(rows, rows, generator=gen, dtype=torch.float64)
        b = (c + c.T) @ a  # a^T b = a^T (c + c^T) a is symmetric
        gram.add(a, b)
        want += a.T @ b
    got = gram.total()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(got, got.T)


def test_second_order_taylor_is_exact_for_a_quadratic_loss() -> None:
    """Linear model + MSE: L is quadratic in theta, so L(t*+D) = L(t*) + g^T D + 1/2 D^T H D exactly,
    and the GGN equals the Hessian."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    x, t = torch.randn(20, 5, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
    loss, theta = full_batch_loss(model, x, t, F.mse_loss)
    h = dense_hessian(model, batches(x, t, 6), F.mse_loss)
    torch.testing.assert_close(dense_ggn(model, batches(x, t, 6), F.mse_loss), h, rtol=1e-10, atol=1e-12)
    g = torch.func.grad(loss)(theta)
    for scale in (1e-2, 1.0, 10.0):
        d = scale * torch.randn_like(theta)
        remainder = loss(theta + d) - loss(theta) - g @ d
        assert remainder.item() == pytest.approx((0.5 * d @ h @ d).item(), rel=1e-10, abs=1e-12)


# ------------------------------------------------------------------- KFAC
def test_kron_quadratic_equals_the_dense_kronecker_formula() -> None:
    torch.manual_seed(0)
    o, m, n = 3, 4, 5
    a = torch.randn(o, n, n, dtype=torch.float64)
    g = torch.randn(o, m, m, dtype=torch.float64)
    A, G = a @ a.mT, g @ g.mT
    D = torch.randn(o, m, n, dtype=torch.float64)
    vec = D.mT.reshape(o, -1)  # column stacking
    want = sum(vec[k] @ torch.kron(A[k], G[k]) @ vec[k] for k in range(o))
    torch.testing.assert_close(kron_quadratic(A, G, D), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["exact", "empirical", "empirical_weighted", "sampled"])
def test_kfac_is_the_exact_fisher_for_one_linear_layer_and_one_sample(kind: str) -> None:
    """With one sample, E[a a^T] (x) E[g g^T] = E[(a (x) g)(a (x) g)^T] is the Fisher itself."""
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    x, y = torch.randn(1, 3, dtype=torch.float64), torch.tensor([2])
    (A, G), = kfac_factors(model, [(x, y)], kind, torch.Generator().manual_seed(3)).values()
    logp = model(x).log_softmax(-1)[0]
    p = logp.detach().exp()
    label = torch.multinomial(p[None], 1, generator=torch.Generator().manual_seed(3)).item()
    weight = {"exact": p, "empirical": F.one_hot(y[0], 4), "sampled": F.one_hot(torch.tensor(label), 4),
              "empirical_weighted": p * F.one_hot(y[0], 4)}[kind]
    fisher = 0
    for c in range(4):
        gw, gb = torch.autograd.grad(logp[c], [model.weight, model.bias], retain_graph=True)
        v = torch.cat([gw, gb[:, None]], 1).T.reshape(-1)  # vec([W, b]), column stacking
        fisher = fisher + weight[c] * torch.outer(v, v)
    torch.testing.assert_close(torch.kron(A, G), fisher, rtol=1e-10, atol=1e-12)


def test_kfac_factors_of_a_deep_net_match_their_definitions() -> None:
    """A_l = 1/N sum_i a_i a_i^T (a = [input; 1]); G_l = 1/N sum_i sum_c p_ic g_ic g_ic^T, g = d log p_c / d s_l."""
    model = TaskOutputs(tiny("multi"), 1, TASKS[1])
    x, y = data(6)
    factors = kfac_factors(model, batches(x, y, 4), "exact")
    assert list(factors) == ["net.body.1", "net.head.heads.0", "net.head.heads.1"]
    body, head = model.net.body, model.net.head.heads[1]
    A1, G1, A2, G2 = 0, 0, 0, 0
    for i in range(len(x)):
        a1 = torch.cat([x[i].reshape(1, -1), torch.ones(1, 1, dtype=torch.float64)], 1)
        s1 = body[1](x[i].reshape(1, -1))
        h = torch.tanh(s1)
        a2 = torch.cat([h.detach(), torch.ones(1, 1, dtype=torch.float64)], 1)
        s2 = head(h)
        logp = s2.log_softmax(-1)[0]
        p = logp.detach().exp()
        A1, A2 = A1 + a1.T @ a1, A2 + a2.T @ a2
        for c in range(3):
            g1, g2 = torch.autograd.grad(logp[c], [s1, s2], retain_graph=True)
            G1, G2 = G1 + p[c] * g1.T @ g1, G2 + p[c] * g2.T @ g2
    n = len(x)
    for got, want in zip([*factors["net.body.1"], *factors["net.head.heads.1"]], [A1 / n, G1 / n, A2 / n, G2 / n]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert factors["net.head.heads.0"][0].abs().max() == 0  # head of another task: no data, zero factors


def test_layer_delta_places_weight_and_bias_columns() -> None:
    model = tiny()
    blocks = linear_blocks(model)
    theta = flatten(detached(model))[None]
    for name, block in blocks.items():
        layer = model.get_submodule(name)
        torch.testing.assert_close(layer_delta(theta, block)[0], torch.cat([layer.weight, layer.bias[:, None]], 1))


def test_kfac_rejects_parameters_outside_linear_layers() -> None:
    model = build_model({"name": "cnn"}, (1, 8, 8), 4, [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match=r"nn.Linear layers only; parameters \['body.0.weight'"):
        linear_blocks(model)


def test_argmax_fisher_uses_the_predicted_label() -> None:
    model = TaskOutputs(tiny(), 0, None)
    x, y = data()
    pred = model(x).argmax(1)
    assert (pred != y).any()  # so the test tells it apart from the empirical Fisher
    got = diag_fisher(model, batches(x, y), "argmax")
    torch.testing.assert_close(got, brute_fisher(model, x, lambda i, c, p: float(c == p.argmax())), rtol=1e-10,
                               atol=1e-12)
    assert not torch.allclose(got, diag_fisher(model, batches(x, y), "empirical"))


def deep_mlp_on_task_1(head: str, classes, seed: int) -> nn.Module:
    """A float64 ReLU MLP 6-5-4-6 (single head, or one head per task) seen through task 1's outputs."""
    torch.manual_seed(seed)
    net = build_model({"name": "mlp", "widths": [5, 4], "activation": "relu", "head": head}, (1, 2, 3), 6, TASKS)
    return TaskOutputs(net.double(), 1, classes if head == "single" else TASKS[1])


@pytest.mark.parametrize(("head", "classes"), [("single", None), ("single", TASKS[1]), ("multi", TASKS[1])])
def test_layerwise_exact_fisher_equals_class_enumeration(head: str, classes) -> None:
    """The by-layer form sum_i (sum_c p_ic d_ic^2)(a_i^2)^T against one-sample-one-class autograd (float64)."""
    model = deep_mlp_on_task_1(head, classes, seed=3)
    x, _ = data(n=7)
    fast = linear_fisher(model, x)
    assert fast is not None  # every parameter is in an nn.Linear: the by-layer path is taken
    with torch.no_grad():
        p = model(x).softmax(-1)
    torch.testing.assert_close(fast / len(x), brute_fisher(model, x, lambda i, c, p: p[c]), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(fast, exact_fisher_sum(model, x, p), rtol=1e-10, atol=1e-13)


def test_exact_fisher_outside_linear_layers_falls_back_to_enumeration() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = data(n=6)
    assert linear_fisher(model, x) is None  # LayerNorm's weight and bias are not in a Linear
    torch.testing.assert_close(diag_fisher(model, batches(x, y), "exact"),
                               brute_fisher(model, x, lambda i, c, p: p[c]), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(("head", "classes"), [("single", None), ("single", TASKS[1]), ("multi", TASKS[1])])
def test_layerwise_one_label_fisher_equals_per_sample_gradients(head: str, classes) -> None:
    """The by-layer sum_i w_i d_i^2 (a_i^2)^T (one backward pass) against one-sample autograd (float64)."""
    model = deep_mlp_on_task_1(head, classes, seed=5)
    x, _ = data(n=7)
    c = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    w = torch.linspace(0.2, 1.4, 7, dtype=torch.float64)
    fast = linear_fisher(model, x, c, w)
    assert fast is not None
    torch.testing.assert_close(fast / len(x), brute_fisher(model, x, lambda i, k, p: float(w[i]) * float(k == c[i])),
                               rtol=1e-10, atol=1e-13)
    ln = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 3)).double()
    assert linear_fisher(ln, x, c, w) is None  # outside linear layers: diag_fisher takes per-sample gradients
    torch.testing.assert_close(diag_fisher(ln, batches(x, c), "empirical"),
                               brute_fisher(ln, x, lambda i, k, p: float(k == c[i])), rtol=1e-10, atol=1e-13)
