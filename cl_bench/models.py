"""Backbones (MLP, small CNN, ResNet-18 and its reduced variant) and heads.

Every model is a :class:`Backbone`: ``features(x) -> [B, D]`` followed by a
head, either one ``nn.Linear(D, n_outputs)`` shared by all tasks or a
:class:`MultiHead` (one linear layer per task over that task's classes).
Weights keep PyTorch's default initialisation unless ``init: xavier`` (Glorot &
Bengio 2010 uniform weights, zero biases: the DER repository's MNIST MLP).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
from torch import Tensor, nn

MODEL_INFO: dict[str, str] = {
    "mlp": "fully connected net on the flattened input (widths, relu|tanh); DER's MNIST net is [100, 100]",
    "cnn": "small CNN: 2 blocks of 3x3 convs + 2x2 max-pool, 2x2 adaptive avg-pool; any input >= 4x4",
    "resnet18": "ResNet-18, CIFAR variant (3x3 stem, no max-pool, nf=64) of the DER paper, ~11.2M params",
    "reduced_resnet18": "reduced ResNet-18 (nf=20) of GEM / A-GEM, ~1.1M params",
}
TORCHVISION_INFO = ("any torchvision classification model by name (model.torchvision=resnet18), weights from a "
                    "local file (model.weights), frozen or fine-tuned (model.freeze)")
HEADS: tuple[str, ...] = ("single", "multi")
INITS: tuple[str, ...] = ("default", "xavier")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def masked_logit(dtype: torch.dtype) -> float:
    """The logit MultiHead writes outside a sample's task: ``max(finfo(dtype).min, -1e9)``."""
    return max(torch.finfo(dtype).min, -1e9)


class MultiHead(nn.Module):
    """One ``nn.Linear(D, |C_t|)`` per task t, written into the task's outputs.

    ``forward(features, task_ids)`` returns ``[B, n_outputs]`` logits: sample i
    gets ``heads[t_i](features[i])`` at the output indices ``task_classes[t_i]``
    and :func:`masked_logit` ``(dtype)`` everywhere else: -1e9 (float16: its
    most negative finite value). Finite, unlike ``-inf``, so ``0 * log_softmax``
    (distillation) is 0, not NaN, and cross-entropy stays finite even for a
    target outside the task (~1e9 per sample, so a batch mean cannot overflow
    as it would with ``finfo.min``); the softmax weight exp(-1e9 - max) of a
    masked output is exactly 0, so in-task losses equal those of the task's
    own head. Code comparing logits of samples with different masks must
    restrict itself to ``mask[t]``.
    Heads of tasks absent from the batch take no part in the graph, so their
    ``.grad`` stays ``None`` and the optimiser leaves them untouched.
    """

    def __init__(self, in_features: int, task_classes: Sequence[Sequence[int]], n_outputs: int) -> None:
        super().__init__()
        _check_task_classes(task_classes, n_outputs)
        self.n_outputs = n_outputs
        self.heads = nn.ModuleList(nn.Linear(in_features, len(c)) for c in task_classes)
        mask = torch.zeros(len(task_classes), n_outputs, dtype=torch.bool)
        for t, c in enumerate(task_classes):
            self.register_buffer(f"classes_{t}", torch.tensor(list(c), dtype=torch.long), persistent=False)
            mask[t, list(c)] = True
        self.register_buffer("mask", mask, persistent=False)  # [T, n_outputs]

    def forward(self, features: Tensor, task_ids: Tensor) -> Tensor:
        if task_ids.shape != features.shape[:1]:
            raise ValueError(f"task_ids must have shape [{features.shape[0]}], got {list(task_ids.shape)}")
        out = features.new_full((features.shape[0], self.n_outputs), masked_logit(features.dtype))
        for t in torch.unique(task_ids).tolist():  # loop over the tasks present, not the samples
            if not 0 <= t < len(self.heads):
                raise ValueError(f"task id {t} out of range: this head has {len(self.heads)} tasks")
            rows = (task_ids == t).nonzero(as_tuple=True)[0]
            cols = getattr(self, f"classes_{t}")
            out[rows[:, None], cols[None, :]] = self.heads[t](features[rows]).to(out.dtype)
        return out


class Backbone(nn.Module):
    """``forward(x, task_ids) = head(features(x))``; ``feature_dim`` = D; ``init`` = the weight scheme
    (``model.init``) that :func:`reinitialise` re-applies."""

    def __init__(self, body: nn.Module, feature_dim: int, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.head = head
        self.init = "default"

    def features(self, x: Tensor) -> Tensor:
        """Penultimate representation ``[B, D]``."""
        return self.body(x)

    def forward(self, x: Tensor, task_ids: Tensor | None = None) -> Tensor:
        z = self.features(x)
        if isinstance(self.head, MultiHead):
            if task_ids is None:
                raise ValueError("a multi-head model needs task_ids in forward(x, task_ids)")
            return self.head(z, task_ids)
        return self.head(z)


def make_head(
    kind: str, feature_dim: int, n_outputs: int, task_classes: Sequence[Sequence[int]] | None
) -> nn.Module:
    """``single`` -> ``nn.Linear(D, n_outputs)``; ``multi`` -> :class:`MultiHead`."""
    if kind == "single":
        return nn.Linear(feature_dim, n_outputs)
    if kind == "multi":
        if task_classes is None:
            raise ValueError("model.head=multi needs task_classes (one class list per task)")
        return MultiHead(feature_dim, task_classes, n_outputs)
    raise ValueError(f"model.head={kind!r} is not valid; choose one of {list(HEADS)}")


class MLP(Backbone):
    """Flatten -> [Linear -> act] per width (DER's S-MNIST net: widths [100, 100], ReLU)."""

    body: nn.Sequential

    def __init__(
        self,
        input_shape: Sequence[int],
        widths: Sequence[int],
        n_outputs: int,
        activation: str = "relu",
        head: str = "single",
        task_classes: Sequence[Sequence[int]] | None = None,
    ) -> None:
        act = _activation(activation)
        dims = [math.prod(input_shape), *widths]
        layers: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), act()]
        super().__init__(nn.Sequential(*layers), dims[-1], make_head(head, dims[-1], n_outputs, task_classes))


class SmallCNN(Backbone):
    """[conv3x3 -> act -> conv3x3 -> act -> maxpool2] per entry of ``channels``,
    then a 2x2 adaptive average pool: D = 4 * channels[-1]. Works from 8x8 up."""

    def __init__(
        self,
        input_shape: Sequence[int],
        n_outputs: int,
        channels: Sequence[int] = (32, 64),
        activation: str = "relu",
        head: str = "single",
        task_classes: Sequence[Sequence[int]] | None = None,
    ) -> None:
        act = _activation(activation)
        c_in, h, w = _image_shape(input_shape)
        if min(h, w) < 2 ** len(channels):
            raise ValueError(f"SmallCNN needs inputs of at least {2 ** len(channels)}px, got {h}x{w}")
        layers: list[nn.Module] = []
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), act(), nn.Conv2d(c_out, c_out, 3, padding=1), act()]
            layers.append(nn.MaxPool2d(2))
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        d = 4 * c_in
        super().__init__(nn.Sequential(*layers), d, make_head(head, d, n_outputs, task_classes))


class BasicBlock(nn.Module):
    """He et al. 2016, Fig. 2: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x));
    the shortcut is a 1x1 conv + BN when the stride or width changes (option B)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(Backbone):
    """ResNet-18 for small images (He et al. 2016, CIFAR variant used by GEM and DER):
    3x3 stride-1 stem, no max-pool, four stages of two BasicBlocks with widths
    nf, 2nf, 4nf, 8nf and strides 1, 2, 2, 2, global average pool: D = 8 nf.
    ``nf=64`` is DER's ResNet-18; ``nf=20`` is GEM / A-GEM's reduced ResNet-18."""

    def __init__(
        self,
        input_shape: Sequence[int],
        n_outputs: int,
        nf: int = 64,
        head: str = "single",
        task_classes: Sequence[Sequence[int]] | None = None,
    ) -> None:
        c_in, _, _ = _image_shape(input_shape)
        stem = nn.Conv2d(c_in, nf, 3, stride=1, padding=1, bias=False)  # 3x3 stem, no max-pool
        layers: list[nn.Module] = [stem, nn.BatchNorm2d(nf), nn.ReLU()]
        width = nf
        for stage, stride in enumerate((1, 2, 2, 2)):
            c_out = nf * 2**stage
            layers += [BasicBlock(width, c_out, stride), BasicBlock(c_out, c_out, 1)]
            width = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(nn.Sequential(*layers), width, make_head(head, width, n_outputs, task_classes))


def reduced_resnet18(
    input_shape: Sequence[int],
    n_outputs: int,
    head: str = "single",
    task_classes: Sequence[Sequence[int]] | None = None,
) -> ResNet18:
    """GEM / A-GEM's reduced ResNet-18 (Lopez-Paz & Ranzato 2017): ``ResNet18(nf=20)``."""
    return ResNet18(input_shape, n_outputs, nf=20, head=head, task_classes=task_classes)


_KEYS: dict[str, tuple[str, ...]] = {
    "mlp": ("name", "widths", "activation", "head", "init"),
    "cnn": ("name", "activation", "head", "init"),
    "resnet18": ("name", "head", "init"),
    "reduced_resnet18": ("name", "head", "init"),
}


def model_info() -> dict[str, str]:
    """Every model name with its description: the built-in ones, ``torchvision`` and the registered factories."""
    from cl_bench.registry import MODELS, load_plugins

    load_plugins()
    own = {n: "[registered] " + ((f.__doc__ or "").strip().splitlines() or [""])[0] for n, f in MODELS.items()}
    return {**MODEL_INFO, "torchvision": TORCHVISION_INFO, **own}


def model_names() -> list[str]:
    """The valid values of ``model.name``."""
    return list(model_info())


def build_model(
    cfg: Mapping, input_shape: tuple[int, ...], n_outputs: int, task_classes: list[list[int]]
) -> Backbone:
    """Build the backbone named by ``cfg['name']`` (see :func:`model_info`; ``torchvision`` and registered
    factories: :mod:`cl_bench.external_models`).

    Keys: ``name``; ``widths`` (mlp, default [100, 100]); ``activation``
    (mlp, cnn: relu | tanh); ``head`` (single | multi, default single).
    A key that the chosen model does not use is an error.
    """
    from cl_bench import external_models
    from cl_bench.registry import MODELS, load_plugins

    name = cfg.get("name")
    load_plugins()
    if name == "torchvision":
        return external_models.build_torchvision(cfg, input_shape, n_outputs, task_classes)
    if name in MODELS:
        return external_models.build_registered(MODELS[name], cfg, input_shape, n_outputs, task_classes)
    if name not in MODEL_INFO:
        raise ValueError(f"model.name={name!r} is not valid; choose one of {model_names()}")
    extra = sorted(set(cfg) - set(_KEYS[name]))
    if extra:
        raise KeyError(f"model.{extra[0]} is not used by model.name={name}; valid keys: {list(_KEYS[name])}")
    head = cfg.get("head", "single")
    if head not in HEADS:
        raise ValueError(f"model.head={head!r} is not valid; choose one of {list(HEADS)}")
    init = cfg.get("init", "default")
    if init not in INITS:
        raise ValueError(f"model.init={init!r} is not valid; choose one of {list(INITS)}")
    activation = cfg.get("activation", "relu")
    if name == "mlp":
        widths = list(cfg.get("widths", [100, 100]))
        if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
            raise ValueError(f"model.widths must be a list of positive integers, got {widths}")
        model: Backbone = MLP(input_shape, widths, n_outputs, activation, head, task_classes)
    elif name == "cnn":
        model = SmallCNN(input_shape, n_outputs, activation=activation, head=head, task_classes=task_classes)
    elif name == "resnet18":
        model = ResNet18(input_shape, n_outputs, nf=64, head=head, task_classes=task_classes)
    else:
        model = reduced_resnet18(input_shape, n_outputs, head=head, task_classes=task_classes)
    model.init = init
    if init == "xavier":
        xavier_init(model)
    return model


def reinitialise(model: nn.Module) -> None:
    """Fresh random weights drawn as at construction: every layer's ``reset_parameters``, then the
    model's ``init`` scheme (GDumb's retraining from scratch)."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            cast(Callable[[], None], module.reset_parameters)()
    if getattr(model, "init", "default") == "xavier":
        xavier_init(model)


def xavier_init(model: nn.Module) -> None:
    """Glorot-uniform weights, ``U(-a, a)`` with ``a = sqrt(6 / (fan_in + fan_out))``, and zero biases
    for every linear and convolutional layer (Glorot & Bengio 2010, Eq. 16)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation={name!r} is not valid; choose one of {list(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"convolutional models need input_shape (C, H, W), got {tuple(input_shape)}")
    c, h, w = input_shape
    return int(c), int(h), int(w)


def _check_task_classes(task_classes: Sequence[Sequence[int]], n_outputs: int) -> None:
    if len(task_classes) == 0:
        raise ValueError("task_classes is empty: a multi-head model needs one class list per task")
    for t, classes in enumerate(task_classes):
        if len(classes) == 0 or len(set(classes)) != len(classes):
            raise ValueError(f"task_classes[{t}]={list(classes)} must be a non-empty list without duplicates")
        bad = [c for c in classes if not 0 <= c < n_outputs]
        if bad:
            raise ValueError(f"task_classes[{t}] has classes {bad} outside [0, {n_outputs})")
