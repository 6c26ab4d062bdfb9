"""Backbones and heads: shapes, exact parameter counts, the maths of MultiHead."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.models import (
    MLP,
    MODEL_INFO,
    Backbone,
    MultiHead,
    ResNet18,
    SmallCNN,
    build_model,
    masked_logit,
    reinitialise,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
SPLIT = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("head", ["single", "multi"])
def test_small_models_output_shapes(shape, name, head):
    m = build_model({"name": name, "head": head}, shape, 10, SPLIT)
    x = torch.rand(4, *shape)
    out = m(x, torch.tensor([0, 1, 4, 4]))
    assert out.shape == (4, 10)
    assert m.features(x).shape == (4, m.feature_dim)


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("reduced_resnet18", 160)])
def test_resnet_output_shapes(name, dim):
    m = build_model({"name": name}, (3, 32, 32), 10, SPLIT)
    x = torch.rand(2, 3, 32, 32)
    assert m(x).shape == (2, 10)
    assert m.features(x).shape == (2, dim) and m.feature_dim == dim


def test_resnet18_cifar_variant_parameter_count():
    m = ResNet18((3, 32, 32), 10, nf=64)
    assert n_params(m) == 11_173_962  # the widely quoted CIFAR ResNet-18 count
    stem = m.body[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(layer, nn.MaxPool2d) for layer in m.modules())


def test_reduced_resnet18_parameter_count():
    m = build_model({"name": "reduced_resnet18"}, (3, 32, 32), 10, SPLIT)
    assert n_params(m) == 1_094_750
    assert n_params(build_model({"name": "reduced_resnet18"}, (3, 32, 32), 100, [[0]])) == 1_109_240  # GEM's CIFAR-100


def test_mlp_is_the_der_net_with_default_init():
    torch.manual_seed(0)
    m = build_model({"name": "mlp", "widths": [100, 100], "activation": "relu"}, (1, 28, 28), 10, SPLIT)
    assert n_params(m) == 784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10  # 89,610
    torch.manual_seed(0)
    ref = [nn.Linear(784, 100), nn.Linear(100, 100), nn.Linear(100, 10)]  # PyTorch default init, same order
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    for a, b in zip(linears, ref, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_xavier_init_is_glorot_uniform_with_zero_biases():
    """``init: xavier`` (the DER repository's MNIST MLP): W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)), b = 0."""
    torch.manual_seed(0)
    m = build_model({"name": "mlp", "widths": [300, 200], "init": "xavier"}, (1, 28, 28), 10, SPLIT)
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert len(linears) == 3
    for lin in linears:
        fan_out, fan_in = lin.weight.shape
        a = math.sqrt(6 / (fan_in + fan_out))
        assert lin.weight.abs().max() <= a and lin.weight.abs().max() > 0.99 * a
        assert lin.weight.std().item() == pytest.approx(a / math.sqrt(3), rel=0.02)
        assert torch.count_nonzero(lin.bias) == 0


@pytest.mark.parametrize("init", ["default", "xavier"])
def test_reinitialise_draws_fresh_weights_under_the_models_init(init: str) -> None:
    """GDumb's retraining from scratch: new weights, drawn the way the model was built (xavier: zero biases
    and |W| <= a; default: PyTorch's uniform biases)."""
    torch.manual_seed(0)
    m = build_model({"name": "mlp", "widths": [30, 20], "init": init}, (1, 8, 8), 10, SPLIT)
    before = [p.detach().clone() for p in m.parameters()]
    reinitialise(m)
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    for lin in linears:
        fan_out, fan_in = lin.weight.shape
        if init == "xavier":
            assert torch.count_nonzero(lin.bias) == 0
            assert lin.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out))
        else:
            assert torch.count_nonzero(lin.bias) == lin.bias.numel()
    assert all(not torch.equal(a, b) for a, b in zip(before, m.parameters()) if a.abs().sum() > 0)


def test_mlp_tanh_forward_matches_formula():
    m = MLP((2, 3), [4], 5, activation="tanh").double()
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    lin1, lin2 = m.body[1], m.head
    expected = torch.tanh(x.reshape(3, 6) @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias
    torch.testing.assert_close(m(x), expected)


def test_small_cnn_on_8x8_digits_feature_dim():
    m = SmallCNN((1, 8, 8), 10)
    assert m.feature_dim == 4 * 64
    with pytest.raises(ValueError, match="at least 4px"):
        SmallCNN((1, 3, 3), 10)


def test_multihead_logits_are_own_head_and_masked_elsewhere():
    torch.manual_seed(0)
    classes = [[0, 1], [2, 3, 4], [7, 5]]  # unequal sizes, unsorted, output 6/8/9 unused
    head = MultiHead(6, classes, 10).double()
    f = torch.randn(5, 6, dtype=torch.float64)
    tid = torch.tensor([2, 0, 2, 1, 0])
    out = head(f, tid)
    fill = masked_logit(torch.float64)
    assert fill == -1e9 and masked_logit(torch.float16) == torch.finfo(torch.float16).min
    for i, t in enumerate(tid.tolist()):
        own = f[i] @ head.heads[t].weight.T + head.heads[t].bias
        torch.testing.assert_close(out[i, classes[t]], own)
        others = [c for c in range(10) if c not in classes[t]]
        assert (out[i, others] == fill).all()
    assert torch.equal(head.mask[tid], out != fill)


def test_multihead_gradients_only_reach_used_heads():
    head = MultiHead(4, SPLIT, 10)
    f = torch.randn(6, 4, requires_grad=True)
    tid = torch.tensor([0, 3, 3, 0, 0, 3])
    y = torch.tensor([1, 6, 7, 0, 0, 6])
    F.cross_entropy(head(f, tid), y).backward()
    for t, h in enumerate(head.heads):
        if t in (0, 3):
            assert h.weight.grad is not None and h.weight.grad.abs().sum() > 0
        else:
            assert h.weight.grad is None and h.bias.grad is None
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0


def test_masked_cross_entropy_is_finite_and_equals_within_task_loss():
    torch.manual_seed(1)
    head = MultiHead(4, SPLIT, 10)
    f = torch.randn(6, 4)
    tid = torch.tensor([0, 1, 2, 3, 4, 4])
    y = torch.tensor([1, 2, 5, 6, 9, 8])
    out = head(f, tid)
    loss = F.cross_entropy(out, y, reduction="none")
    assert torch.isfinite(loss).all()
    # the masked entries carry exactly zero softmax weight: loss = CE over the task's own logits
    own = torch.stack([head.heads[t](f[i]) for i, t in enumerate(tid.tolist())])
    local_y = torch.tensor([SPLIT[t].index(c) for t, c in zip(tid.tolist(), y.tolist())])
    torch.testing.assert_close(loss, F.cross_entropy(own, local_y, reduction="none"))
    # targets outside their task (all six here) give a finite ~1e9 loss and finite gradients
    f.requires_grad_(True)
    bad = F.cross_entropy(head(f, tid), torch.tensor([9, 0, 0, 0, 0, 0]))
    bad.backward()
    assert math.isfinite(bad.item()) and bad.item() == pytest.approx(1e9, rel=1e-6)
    assert torch.isfinite(f.grad).all()
    # distillation-style 0 * log p over masked outputs stays 0, not NaN
    p_old = F.softmax(out, dim=1)
    assert torch.isfinite((p_old * F.log_softmax(out, dim=1)).sum(1)).all()


def test_multihead_shared_classes_domain_il():
    head = MultiHead(3, [[0, 1], [0, 1]], 2)
    f = torch.randn(4, 3)
    out = head(f, torch.tensor([0, 1, 1, 0]))
    torch.testing.assert_close(out[1], head.heads[1](f[1]))
    torch.testing.assert_close(out[0], head.heads[0](f[0]))


def test_multihead_backbone_needs_task_ids():
    m = build_model({"name": "mlp", "head": "multi"}, (1, 8, 8), 10, SPLIT)
    assert isinstance(m, Backbone) and isinstance(m.head, MultiHead)
    with pytest.raises(ValueError, match="task_ids"):
        m(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="task id 5 out of range"):
        m(torch.rand(2, 1, 8, 8), torch.tensor([0, 5]))


@pytest.mark.parametrize(
    ("cfg", "task_classes", "exc", "match"),
    [
        ({"name": "vgg"}, SPLIT, ValueError, r"model.name='vgg'.*mlp.*cnn.*resnet18.*reduced_resnet18"),
        ({}, SPLIT, ValueError, r"model.name=None"),
        ({"name": "mlp", "head": "shared"}, SPLIT, ValueError, r"model.head='shared'.*single.*multi"),
        ({"name": "mlp", "activation": "gelu"}, SPLIT, ValueError, r"model.activation='gelu'.*relu.*tanh"),
        ({"name": "mlp", "widths": [100, -1]}, SPLIT, ValueError, r"model.widths must be a list of positive"),
        ({"name": "mlp", "depth": 3}, SPLIT, KeyError, r"model.depth is not used.*valid keys"),
        ({"name": "resnet18", "widths": [10]}, SPLIT, KeyError, r"model.widths is not used by model.name=resnet18"),
        ({"name": "mlp", "head": "multi"}, [[0, 1], [10]], ValueError, r"task_classes\[1\] has classes \[10\]"),
        ({"name": "mlp", "head": "multi"}, [[0, 0]], ValueError, r"task_classes\[0\]=\[0, 0\]"),
        ({"name": "mlp", "head": "multi"}, [], ValueError, r"task_classes is empty"),
        ({"name": "cnn"}, SPLIT, ValueError, r"input_shape \(C, H, W\)"),
        ({"name": "mlp", "init": "he"}, SPLIT, ValueError, r"model.init='he'.*default.*xavier"),
    ],
)
def test_build_model_errors(cfg, task_classes, exc, match):
    shape = (64,) if cfg.get("name") == "cnn" else (1, 8, 8)
    with pytest.raises(exc, match=match):
        build_model(cfg, shape, 10, task_classes)


def test_model_info_lists_every_buildable_name():
    for name in MODEL_INFO:
        shape = (3, 32, 32) if "resnet" in name else (1, 8, 8)
        assert isinstance(build_model({"name": name}, shape, 10, SPLIT), Backbone)
