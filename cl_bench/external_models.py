"""Networks from outside cl-bench: a registered ``nn.Module`` factory, or a torchvision architecture by name.

Either becomes a :class:`~cl_bench.models.Backbone`: its module maps a batch to
features ``[B, D]`` (D found by one forward pass of a zero batch) and gets the
head of ``model.head`` like the built-in models (``multi``: one linear head per
task, for task-IL).

``model.name: torchvision`` builds ``torchvision.models.get_model(<model.torchvision>)``
with its classifier (``fc`` / ``classifier`` / ``head`` / ``heads``) replaced by
the identity. ``model.weights`` names a local file with that architecture's
``state_dict`` (no download at run time; the classifier's keys may be absent or
any shape). ``model.freeze: true`` keeps the feature extractor fixed: no
gradient, and always in eval mode (BatchNorm statistics fixed); only the head
trains. Grey images are repeated to three channels for architectures built for RGB.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cl_bench.models import Backbone, make_head

TORCHVISION_KEYS = ("name", "torchvision", "weights", "freeze", "head", "init")
CLASSIFIERS = ("fc", "classifier", "head", "heads")


class Frozen(nn.Module):
    """A fixed feature extractor: parameters without gradient, eval mode whatever ``train()`` asks."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        for p in inner.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> Frozen:
        super().train(mode)
        self.inner.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)


class ToRGB(nn.Module):
    """``[B, 1, H, W]`` -> ``[B, 3, H, W]`` (the grey channel repeated)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.expand(-1, 3, -1, -1)


def feature_dim(body: nn.Module, input_shape: Sequence[int], where: str) -> int:
    """D of ``body``'s output ``[B, D]`` on a zero batch of ``input_shape`` (a ValueError naming ``where`` else)."""
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            out = body(torch.zeros(2, *input_shape))
    except Exception as err:
        raise ValueError(f"{where}: the network fails on inputs of shape {list(input_shape)} "
                         f"({type(err).__name__}: {err})") from err
    finally:
        body.train(was_training)
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{where}: the network must map a batch to features [B, D], got {shape}")
    return int(out.shape[1])


def with_head(body: nn.Module, cfg: Mapping[str, Any], input_shape: Sequence[int], n_outputs: int,
              task_classes: list[list[int]], where: str) -> Backbone:
    """``body`` followed by the head of ``cfg['head']`` (default single)."""
    d = feature_dim(body, input_shape, where)
    return Backbone(body, d, make_head(cfg.get("head", "single"), d, n_outputs, task_classes))


def build_registered(factory: Any, cfg: Mapping[str, Any], input_shape: tuple[int, ...], n_outputs: int,
                     task_classes: list[list[int]]) -> Backbone:
    """The network of a :func:`~cl_bench.registry.register_model` factory (a Backbone is used as it is)."""
    where = f"model.name={cfg['name']}"
    keys = {k: v for k, v in cfg.items() if k not in ("name", "head", "init")}
    try:
        net = factory(tuple(input_shape), n_outputs, **keys)
    except TypeError as err:
        raise ValueError(f"{where}: the factory does not take the model keys {sorted(keys)} ({err})") from err
    if isinstance(net, Backbone):
        return net
    if not isinstance(net, nn.Module):
        raise ValueError(f"{where}: the factory returned a {type(net).__name__}, not an nn.Module")
    return with_head(net, cfg, input_shape, n_outputs, task_classes, where)


def _state_dict_of(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ValueError(f"model.weights={path}: file not found (a state_dict saved with torch.save)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"model.weights={path}: not a readable torch state_dict "
                         f"({type(err).__name__}: {err})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"model.weights={path}: holds a {type(state).__name__}, not a state_dict")
    return state


def build_torchvision(cfg: Mapping[str, Any], input_shape: tuple[int, ...], n_outputs: int,
                      task_classes: list[list[int]]) -> Backbone:
    """``model.name: torchvision`` (keys :data:`TORCHVISION_KEYS`)."""
    from torchvision import models as tvm

    extra = sorted(set(cfg) - set(TORCHVISION_KEYS))
    if extra:
        raise KeyError(f"model.{extra[0]} is not used by model.name=torchvision; valid keys: {list(TORCHVISION_KEYS)}")
    arch = cfg.get("torchvision")
    valid = tvm.list_models(module=tvm)
    if arch not in valid:
        raise ValueError(f"model.torchvision={arch!r} is not a torchvision classification model; e.g. "
                         f"{', '.join(n for n in valid if n.startswith(('resnet', 'mobilenet', 'vit_b')))}")
    if cfg.get("init", "default") != "default":
        raise ValueError("model.init applies to the built-in models; a torchvision model keeps its own initialisation")
    freeze = cfg.get("freeze", False)
    if not isinstance(freeze, bool):
        raise ValueError(f"model.freeze must be true or false, got {freeze!r}")
    net = tvm.get_model(arch, weights=None)
    if cfg.get("weights"):
        path = Path(str(cfg["weights"])).expanduser()
        state = _state_dict_of(path)
        classifier = tuple(f"{c}." for c in CLASSIFIERS)
        own = net.state_dict()
        kept = {k: v for k, v in state.items() if not (k.startswith(classifier) and k in own
                                                        and own[k].shape != v.shape)}
        missing, unexpected = net.load_state_dict(kept, strict=False)
        missing = [k for k in missing if not k.startswith(classifier)]
        if missing or unexpected:
            raise ValueError(f"model.weights={path}: not {arch}'s state_dict (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    for name in CLASSIFIERS:
        if hasattr(net, name):
            setattr(net, name, nn.Identity())
            break
    body: nn.Module = Frozen(net) if freeze else net
    if len(input_shape) == 3 and input_shape[0] == 1:
        body = nn.Sequential(ToRGB(), body)
    return with_head(body, cfg, input_shape, n_outputs, task_classes, f"model.torchvision={arch}")
